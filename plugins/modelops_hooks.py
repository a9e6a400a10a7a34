"""Hooks: one per external service, built from Airflow connections. Thin: clients come from their libraries.

- ``mlflow_default`` (http): the MLflow tracking server -> ``mlflow.MlflowClient``.
- ``s3_default`` (aws: login/password = keys, extra ``endpoint_url``/``region_name``) -> ``modelops.storage.S3Config``.
- ``triton_default`` (http; extra ``grpc_port``, ``metrics_port``) -> ``tritonclient.http.InferenceServerClient``.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook


class MlflowHook(BaseHook):
    conn_name_attr = "mlflow_conn_id"
    default_conn_name = "mlflow_default"
    conn_type = "http"
    hook_name = "MLflow"

    def __init__(self, mlflow_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mlflow_conn_id = mlflow_conn_id

    def tracking_uri(self) -> str:
        conn = self.get_connection(self.mlflow_conn_id)
        scheme = conn.schema or "http"
        port = f":{conn.port}" if conn.port else ""
        return f"{scheme}://{conn.host}{port}"

    def get_conn(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri(), registry_uri=self.tracking_uri())

    def test_connection(self) -> tuple[bool, str]:
        try:
            self.get_conn().search_experiments(max_results=1)
            return True, f"MLflow answers at {self.tracking_uri()}"
        except Exception as exc:  # noqa: BLE001 - reported to the UI as text
            return False, str(exc)


class ModelOpsS3Hook(BaseHook):
    """S3 settings for boto3 and the step subprocesses (no amazon provider needed for one endpoint)."""

    conn_name_attr = "aws_conn_id"
    default_conn_name = "s3_default"
    conn_type = "aws"
    hook_name = "ModelOps S3"

    def __init__(self, aws_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.aws_conn_id = aws_conn_id

    def get_conn(self):
        from modelops.storage import S3Config

        conn = self.get_connection(self.aws_conn_id)
        extra = conn.extra_dejson
        return S3Config(
            endpoint_url=extra.get("endpoint_url"),
            access_key=conn.login,
            secret_key=conn.password,
            region=extra.get("region_name", "us-east-1"),
        )

    def storage(self):
        from modelops.storage import Storage

        return Storage(self.get_conn())

    def test_connection(self) -> tuple[bool, str]:
        try:
            buckets = [b["Name"] for b in self.storage().client.list_buckets()["Buckets"]]
            return True, f"buckets: {', '.join(buckets)}"
        except Exception as exc:  # noqa: BLE001
            return False, str(exc)


class TritonHook(BaseHook):
    conn_name_attr = "triton_conn_id"
    default_conn_name = "triton_default"
    conn_type = "http"
    hook_name = "NVIDIA Triton"

    def __init__(self, triton_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.triton_conn_id = triton_conn_id

    def url(self) -> str:
        conn = self.get_connection(self.triton_conn_id)
        return f"{conn.host}:{conn.port or 8000}"

    def get_conn(self):
        import tritonclient.http as httpclient

        return httpclient.InferenceServerClient(url=self.url(), network_timeout=120.0, connection_timeout=10.0)

    def test_connection(self) -> tuple[bool, str]:
        try:
            live = self.get_conn().is_server_live()
            return live, f"Triton at {self.url()} live={live}"
        except Exception as exc:  # noqa: BLE001
            return False, str(exc)
