"""The S3 store of artifacts and the Triton repository: ``ModelOpsS3Hook.storage()`` -> ``modelops.storage.Storage``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook

from modelops_airflow.hooks._common import probe

if TYPE_CHECKING:
    from modelops.storage import S3Config, Storage


class ModelOpsS3Hook(S3Hook):
    """The S3 store of artifacts and the Triton repository (aws connection: keys, extra ``endpoint_url``)."""

    conn_name_attr = "aws_conn_id"
    default_conn_name = "s3_default"
    conn_type = "aws"
    hook_name = "ModelOps S3"

    def __init__(self, aws_conn_id: str | None = default_conn_name, **kwargs: Any) -> None:
        super().__init__(aws_conn_id=aws_conn_id, **kwargs)

    def s3_config(self) -> S3Config:
        """Endpoint, keys and region resolved the way every AWS hook resolves them, for ``modelops``."""
        from modelops.storage import S3Config

        creds = self.get_credentials()
        return S3Config(endpoint_url=self.conn_config.endpoint_url, access_key=creds.access_key,
                        secret_key=creds.secret_key, region=self.conn_region_name or "us-east-1")

    def storage(self) -> Storage:
        """A ``modelops.storage.Storage`` on this store."""
        from modelops.storage import Storage

        return Storage(self.s3_config())

    def test_connection(self) -> tuple[bool, str]:
        """List the buckets (AwsBaseHook's STS check does not apply to an S3-only endpoint)."""

        def check() -> str:
            buckets = [b["Name"] for b in self.get_conn().list_buckets().get("Buckets", [])]
            return f"buckets: {', '.join(buckets) or '(none)'}"

        return probe(check)
