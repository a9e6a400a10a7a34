"""An NVIDIA Triton server: ``TritonHook.get_client()`` -> a ``tritonclient.http`` client (admin header on model control)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.providers.http.hooks.http import HttpHook

from modelops_airflow.hooks._common import probe

if TYPE_CHECKING:
    from requests import Session


class TritonHook(HttpHook):
    """An NVIDIA Triton server (http connection; extra ``grpc_port``, ``metrics_port``, ``admin_header`` and
    ``admin_token`` or ``admin_token_file``: the header that opens Triton's restricted model-control APIs; the file,
    read at each use, follows a token rotated at every Triton start)."""

    conn_name_attr = "triton_conn_id"
    default_conn_name = "triton_default"
    conn_type = "modelops_triton"  # an HTTP connection (host, port, schema): HttpHook reads it
    hook_name = "NVIDIA Triton"
    # Connection extras that describe Triton, not HTTP headers (HttpHook sends unknown extras as headers):
    # the admin token in particular goes only on model-control calls (get_client), never on every request.
    NON_HEADER_EXTRAS = ("grpc_port", "metrics_port", "admin_header", "admin_token", "admin_token_file")

    def __init__(self, triton_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(method="GET", http_conn_id=triton_conn_id, **kwargs)
        self.triton_conn_id = triton_conn_id

    def get_conn(self, headers: dict[Any, Any] | None = None, extra_options: dict[str, Any] | None = None) -> Session:
        """The provider's session, without the Triton-only extras as headers."""
        session = super().get_conn(headers, extra_options)
        for key in self.NON_HEADER_EXTRAS:
            session.headers.pop(key, None)
        return session

    def admin(self) -> tuple[str | None, str | None]:
        """``(admin_header, admin_token)`` from the connection's extras (None when unset); ``admin_token_file`` wins.

        Raises:
            AirflowException: the token file cannot be read (one line naming it).
        """
        extra = self.get_connection(self.triton_conn_id).extra_dejson
        token = extra.get("admin_token") or None
        if path := extra.get("admin_token_file"):
            try:
                token = Path(path).read_text().strip() or None
            except OSError as exc:
                from airflow.sdk.exceptions import AirflowException

                raise AirflowException(f"cannot read Triton's admin token file {path} (connection "
                                       f"{self.triton_conn_id}, extra admin_token_file): {exc.strerror}") from None
        return extra.get("admin_header") or None, token

    def url(self) -> str:
        """``host:port`` of the HTTP endpoint (the form ``tritonclient.http`` takes)."""
        conn = self.get_connection(self.triton_conn_id)
        host = (conn.host or "").split("://", 1)[-1].rstrip("/")
        return f"{host}:{conn.port or 8000}"

    def get_client(self):
        """A ``tritonclient.http.InferenceServerClient`` for this server; with an ``admin_token`` extra, its
        model-control calls (load, unload, repository index, config) send the admin header."""
        import tritonclient.http as httpclient

        from modelops.serving.triton.admin import with_admin

        client = httpclient.InferenceServerClient(url=self.url(), network_timeout=120.0, connection_timeout=10.0)
        return with_admin(client, *self.admin())

    def test_connection(self) -> tuple[bool, str]:
        """GET ``/v2/health/live`` (KServe v2 liveness)."""

        def check() -> str:
            self.run("/v2/health/live", extra_options={"timeout": 10})
            return f"Triton at {self.url()} is live"

        return probe(check)
