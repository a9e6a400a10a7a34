"""Object storage access by URI: ``s3://bucket/key`` through boto3, or a plain local path.

Steps pass URIs, never blobs. Local paths are accepted everywhere an S3 URI is, which keeps steps
runnable by hand and testable without a server. boto3 reads its endpoint and keys from the
environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``) unless given.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class PreconditionFailed(Exception):
    """A conditional write lost the race: the object changed (or exists) since it was read."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into ``(bucket, key)``."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI without a bucket: {uri!r}")
    return bucket, key


def join(uri: str, *parts: str) -> str:
    out = uri.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


@dataclass
class S3Config:
    endpoint_url: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    region: str = "us-east-1"

    @classmethod
    def from_env(cls) -> S3Config:
        return cls(
            endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL"),
            access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
            secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
            region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        )

    def as_env(self) -> dict[str, str]:
        """The environment variables boto3, MLflow and Triton read for this store."""
        env = {"AWS_DEFAULT_REGION": self.region, "AWS_REGION": self.region}
        if self.endpoint_url:
            env["AWS_ENDPOINT_URL"] = self.endpoint_url
            env["MLFLOW_S3_ENDPOINT_URL"] = self.endpoint_url
        if self.access_key:
            env["AWS_ACCESS_KEY_ID"] = self.access_key
        if self.secret_key:
            env["AWS_SECRET_ACCESS_KEY"] = self.secret_key
        return env


class Storage:
    """Read and write objects by URI."""

    def __init__(self, config: S3Config | None = None):
        self.config = config or S3Config.from_env()
        self._client = None

    @property
    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "s3",
                endpoint_url=self.config.endpoint_url,
                aws_access_key_id=self.config.access_key,
                aws_secret_access_key=self.config.secret_key,
                region_name=self.config.region,
                config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3, "mode": "standard"}),
            )
        return self._client

    # -- single objects -------------------------------------------------------------------------
    def read_bytes(self, uri: str) -> bytes:
        if not is_s3(uri):
            return Path(uri).read_bytes()
        bucket, key = parse_s3_uri(uri)
        try:
            return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(uri) from None

    def delete(self, uri: str) -> None:
        """Delete one object (or local file); deleting what does not exist is not an error."""
        if not is_s3(uri):
            Path(uri).unlink(missing_ok=True)
            return
        bucket, key = parse_s3_uri(uri)
        self.client.delete_object(Bucket=bucket, Key=key)

    def read_with_etag(self, uri: str) -> tuple[bytes, str | None]:
        """Read an object and its ETag; ``(b"", None)`` when it does not exist."""
        bucket, key = parse_s3_uri(uri)
        try:
            obj = self.client.get_object(Bucket=bucket, Key=key)
        except self.client.exceptions.NoSuchKey:
            return b"", None
        return obj["Body"].read(), obj["ETag"]

    def write_bytes(self, uri: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False) -> str:
        """Write an object. ``if_match``/``if_none_match`` make it a conditional write (S3 semantics).

        Returns the new ETag (or "" for local files). Raises :class:`PreconditionFailed` on a lost race.
        """
        if not is_s3(uri):
            path = Path(uri)
            if if_none_match and path.exists():
                raise PreconditionFailed(uri)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            return ""
        from botocore.exceptions import ClientError

        bucket, key = parse_s3_uri(uri)
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "Body": data}
        if if_match:
            kwargs["IfMatch"] = if_match
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        try:
            return self.client.put_object(**kwargs).get("ETag", "")
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                raise PreconditionFailed(uri) from None
            raise

    def read_json(self, uri: str) -> Any:
        return json.loads(self.read_bytes(uri))

    def write_json(self, uri: str, obj: Any, **kwargs: Any) -> str:
        return self.write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True).encode(), **kwargs)

    def exists(self, uri: str) -> bool:
        if not is_s3(uri):
            return Path(uri).exists()
        from botocore.exceptions import ClientError

        bucket, key = parse_s3_uri(uri)
        try:
            self.client.head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def download_file(self, uri: str, dest: Path) -> Path:
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not is_s3(uri):
            shutil.copyfile(uri, dest)
        else:
            bucket, key = parse_s3_uri(uri)
            self.client.download_file(bucket, key, str(dest))
        return dest

    def upload_file(self, src: Path, uri: str) -> str:
        if not is_s3(uri):
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, uri)
        else:
            bucket, key = parse_s3_uri(uri)
            self.client.upload_file(str(src), bucket, key)
        return uri

    # -- prefixes ("directories") ---------------------------------------------------------------
    def list(self, uri: str) -> list[str]:
        """All object URIs under a prefix (recursive), sorted."""
        if not is_s3(uri):
            root = Path(uri)
            return sorted(str(p) for p in root.rglob("*") if p.is_file()) if root.exists() else []
        bucket, prefix = parse_s3_uri(uri)
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        out: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out.extend(f"s3://{bucket}/{obj['Key']}" for obj in page.get("Contents", []))
        return sorted(out)

    def download_dir(self, uri: str, dest: Path) -> Path:
        dest = Path(dest)
        base = uri.rstrip("/") + "/"
        objects = self.list(uri)
        if not objects:
            raise FileNotFoundError(f"nothing under {uri}")
        for obj in objects:
            self.download_file(obj, dest / obj[len(base) :])
        return dest

    def upload_dir(self, src: Path, uri: str) -> list[str]:
        src = Path(src)
        return [self.upload_file(p, join(uri, p.relative_to(src).as_posix())) for p in sorted(src.rglob("*")) if p.is_file()]
