"""The MLflow tracking server and registry: ``MlflowHook.get_client()`` -> ``mlflow.MlflowClient``."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from airflow.providers.http.hooks.http import HttpHook

from modelops_airflow.hooks._common import probe

if TYPE_CHECKING:
    from mlflow import MlflowClient


class MlflowHook(HttpHook):
    """The MLflow tracking server and model registry (http connection: host, port, schema; login/password for a
    server with basic auth, as the embedded stack's is)."""

    conn_name_attr = "mlflow_conn_id"
    default_conn_name = "mlflow_default"
    conn_type = "modelops_mlflow"  # an HTTP connection (host, port, schema): HttpHook reads it
    hook_name = "MLflow"

    def __init__(self, mlflow_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(method="GET", http_conn_id=mlflow_conn_id, **kwargs)
        self.mlflow_conn_id = mlflow_conn_id

    def tracking_uri(self) -> str:
        """The server's base URL, e.g. ``http://127.0.0.1:5000``."""
        return self.url_from_endpoint("").rstrip("/")

    def credentials(self) -> tuple[str, str] | None:
        """``(login, password)`` of the connection (MLflow basic auth), or None when it has no login."""
        conn = self.get_connection(self.mlflow_conn_id)
        return (conn.login, conn.password or "") if conn.login else None

    def auth_headers(self) -> dict[str, str]:
        """``{"Authorization": "Basic ..."}`` for plain HTTP calls to MLflow (empty without a login)."""
        import base64

        creds = self.credentials()
        return {"Authorization": "Basic " + base64.b64encode(":".join(creds).encode()).decode()} if creds else {}

    def get_client(self) -> MlflowClient:
        """An ``MlflowClient`` logged in as the connection's user (MLflow reads ``MLFLOW_TRACKING_USERNAME``/
        ``PASSWORD`` on each request: they are set in this task process; Airflow masks the password)."""
        from mlflow import MlflowClient

        from modelops.settings import Settings

        settings = Settings.from_env()  # explicit timeout and retries (MLflow's own: 120 s, 7 retries)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(settings.mlflow_timeout_s))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(settings.mlflow_max_retries))
        creds = self.credentials()
        if creds is not None:
            os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = creds
        uri = self.tracking_uri()
        return MlflowClient(tracking_uri=uri, registry_uri=uri)

    def test_connection(self) -> tuple[bool, str]:
        """GET ``/health`` (answered by every MLflow server)."""

        def check() -> str:
            self.run("/health", extra_options={"timeout": 10})
            return f"MLflow answers at {self.tracking_uri()}"

        return probe(check)
