"""An NVIDIA Triton server: ``TritonHook.get_client()`` -> a ``tritonclient.http`` client (admin header on model control)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.http.hooks.http import HttpHook

from modelops_airflow.hooks._common import probe

if TYPE_CHECKING:
    from requests import Session


class TritonHook(HttpHook):
    """An NVIDIA Triton server (http connection; extra ``grpc_port``, ``metrics_port``, ``admin_header``,
    ``admin_token``: the header that opens Triton's restricted model-control APIs)."""

    conn_name_attr = "triton_conn_id"
    default_conn_name = "triton_default"
    conn_type = "modelops_triton"  # an HTTP connection (host, port, schema): HttpHook reads it
    hook_name = "NVIDIA Triton"
    # Connection extras that describe Triton, not HTTP headers (HttpHook sends unknown extras as headers):
    # the admin token in particular goes only on model-control calls (get_client), never on every request.
    NON_HEADER_EXTRAS = ("grpc_port", "metrics_port", "admin_header", "admin_token")

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
        """``(admin_header, admin_token)`` from the connection's extras (None when unset)."""
        extra = self.get_connection(self.triton_conn_id).extra_dejson
        return extra.get("admin_header") or None, extra.get("admin_token") or None

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
