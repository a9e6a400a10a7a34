"""What the hooks share: ``test_connection``'s probe, the base-URL HTTP hook."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from airflow.providers.http.hooks.http import HttpHook


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def probe(check: Callable[[], str]) -> tuple[bool, str]:
    """``test_connection``'s answer: ``(True, what check() says)`` or ``(False, the error's first line)``."""
    try:
        return True, check()
    except Exception as exc:  # noqa: BLE001 - reported to the UI as text
        return False, first_line(exc)


class BaseUrlHook(HttpHook):
    """An HTTP service known by its base URL; subclasses set the connection attributes and the probe path."""

    probe_path = "/"
    what = "the service"

    def __init__(self, conn_id: str, **kwargs: Any) -> None:
        super().__init__(method="GET", http_conn_id=conn_id, **kwargs)
        setattr(self, self.conn_name_attr, conn_id)

    def url(self) -> str:
        """The base URL, without a trailing slash (e.g. ``http://127.0.0.1:9090``)."""
        return self.url_from_endpoint("").rstrip("/")

    def test_connection(self) -> tuple[bool, str]:
        """GET the probe path."""

        def check() -> str:
            self.run(self.probe_path, extra_options={"timeout": 10})
            return f"{self.what} answers at {self.url()}"

        return probe(check)
