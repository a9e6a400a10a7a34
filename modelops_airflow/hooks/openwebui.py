"""Open WebUI, the chat UI: ``OpenWebUIHook.url()`` and ``admin()``, the login the refresh signs in as."""

from __future__ import annotations

from typing import Any

from modelops_airflow.hooks._common import BaseUrlHook


class OpenWebUIHook(BaseUrlHook):
    """Open WebUI, the chat UI (http connection: host, port, schema; login/password: an Open WebUI admin)."""

    conn_name_attr = "openwebui_conn_id"
    default_conn_name = "openwebui_default"
    conn_type = "modelops_openwebui"  # an HTTP connection (host, port, schema): HttpHook reads it
    hook_name = "Open WebUI"
    probe_path = "/health"
    what = "Open WebUI"

    def __init__(self, openwebui_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(openwebui_conn_id, **kwargs)

    def admin(self) -> tuple[str, str]:
        """``(email, password)`` of the admin the refresh signs in as (the connection's login and password).

        Raises:
            ValueError: the connection has no login or no password.
        """
        conn = self.get_connection(self.openwebui_conn_id)
        if not conn.login or not conn.password:
            raise ValueError(f"connection {self.openwebui_conn_id!r} needs the Open WebUI admin as login/password")
        return conn.login, conn.password
