"""Object storage access by URI: ``s3://bucket/key`` through boto3, or a plain local path.

Steps pass URIs, never blobs. Local paths are accepted everywhere an S3 URI is, which keeps steps
runnable by hand and testable without a server. boto3 reads its endpoint and keys from the
environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``) unless given.

Faults: every S3 failure other than "no such key" and a lost conditional write is a :class:`StorageError`
whose message is one line naming the operation, the URI and the cause (endpoint down, access denied, no
such bucket, timeout). The client has explicit connect/read timeouts and a bounded number of attempts
(``MODELOPS_S3_*`` settings). A conditional write carries a unique write id (``x-amz-meta-modelops-write-id``),
the same on each of boto3's retries of that request: when a retry gets 412 because its own first attempt
landed, the object holds our write id and the write is a success, not a false conflict.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WRITE_ID_META = "modelops-write-id"  # user metadata of conditional writes (x-amz-meta-modelops-write-id)
_PRECONDITION_CODES = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")
_MISSING_CODES = ("404", "NoSuchKey", "NotFound")


class PreconditionFailed(Exception):
    """A conditional write lost the race: the object changed (or exists) since it was read."""


class StorageError(RuntimeError):
    """An S3 call failed (endpoint down, access denied, no bucket, timeout); the message is one line."""


def _cause(exc: BaseException) -> str:
    """One line saying why an S3 call failed."""
    from botocore.exceptions import ClientError, ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError

    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        message = err.get("Message") or ""
        return f"{code}: {message}" if message and message != code else str(code)
    if isinstance(exc, EndpointConnectionError):
        from urllib.parse import urlsplit

        url = urlsplit(str(exc.kwargs.get("endpoint_url", "")))
        return f"cannot reach the S3 endpoint {url.scheme}://{url.netloc}" if url.netloc else "cannot reach S3"
    if isinstance(exc, ConnectTimeoutError | ReadTimeoutError):
        return f"timed out ({type(exc).__name__}: {exc})"
    return f"{type(exc).__name__}: {exc}"


@contextmanager
def s3_errors(operation: str, uri: str) -> Iterator[None]:
    """Turn botocore failures inside the block into a one-line :class:`StorageError`."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (BotoCoreError, ClientError) as exc:
        line = f"S3 {operation} {uri} failed: {_cause(exc)}"
        raise StorageError(" ".join(line.split())) from exc


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
    """Endpoint and keys of an S3 store; its repr/str never show the secret key."""

    endpoint_url: str | None = None
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    region: str = "us-east-1"

    def __repr__(self) -> str:
        secret = "***" if self.secret_key else None
        return (f"S3Config(endpoint_url={self.endpoint_url!r}, access_key={self.access_key!r}, "
                f"secret_key={secret!r}, region={self.region!r})")

    __str__ = __repr__

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> S3Config:
        """The store the ``AWS_*`` variables (or ``MLFLOW_S3_ENDPOINT_URL``) of ``environ`` name; default this process's."""
        env = os.environ if environ is None else environ
        return cls(
            endpoint_url=env.get("AWS_ENDPOINT_URL") or env.get("MLFLOW_S3_ENDPOINT_URL"),
            access_key=env.get("AWS_ACCESS_KEY_ID"),
            secret_key=env.get("AWS_SECRET_ACCESS_KEY"),
            region=env.get("AWS_DEFAULT_REGION", "us-east-1"),
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

    def __repr__(self) -> str:
        return f"Storage({self.config!r})"

    @property
    def client(self):
        """The boto3 S3 client: path addressing, explicit timeouts and attempts (``MODELOPS_S3_*`` settings)."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            from modelops.settings import Settings

            settings = Settings.from_env()
            self._client = boto3.client(
                "s3",
                endpoint_url=self.config.endpoint_url,
                aws_access_key_id=self.config.access_key,
                aws_secret_access_key=self.config.secret_key,
                region_name=self.config.region,
                config=Config(
                    s3={"addressing_style": "path"},
                    connect_timeout=settings.s3_connect_timeout_s,
                    read_timeout=settings.s3_read_timeout_s,
                    retries={"total_max_attempts": settings.s3_max_attempts, "mode": "standard"},
                ),
            )
        return self._client

    # -- single objects -------------------------------------------------------------------------
    def read_bytes(self, uri: str) -> bytes:
        if not is_s3(uri):
            return Path(uri).read_bytes()
        bucket, key = parse_s3_uri(uri)
        with s3_errors("read", uri):
            try:
                return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
            except self.client.exceptions.NoSuchKey:
                raise FileNotFoundError(uri) from None

    def iter_chunks(self, uri: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The bytes of one object (or local file) in chunks of at most ``chunk_size``, never all in memory.

        Raises:
            FileNotFoundError: no such object.
            StorageError: S3 failed (one line), also mid-stream.
        """
        if not is_s3(uri):
            with open(uri, "rb") as fh:
                yield from iter(lambda: fh.read(chunk_size), b"")
            return
        bucket, key = parse_s3_uri(uri)
        with s3_errors("read", uri):
            try:
                body = self.client.get_object(Bucket=bucket, Key=key)["Body"]
            except self.client.exceptions.NoSuchKey:
                raise FileNotFoundError(uri) from None
            try:
                yield from body.iter_chunks(chunk_size)
            finally:
                body.close()

    def delete(self, uri: str) -> None:
        """Delete one object (or local file); deleting what does not exist is not an error."""
        if not is_s3(uri):
            Path(uri).unlink(missing_ok=True)
            return
        bucket, key = parse_s3_uri(uri)
        with s3_errors("delete", uri):
            self.client.delete_object(Bucket=bucket, Key=key)

    def read_with_etag(self, uri: str) -> tuple[bytes, str | None]:
        """Read an object and its ETag; ``(b"", None)`` when it does not exist."""
        bucket, key = parse_s3_uri(uri)
        with s3_errors("read", uri):
            try:
                obj = self.client.get_object(Bucket=bucket, Key=key)
            except self.client.exceptions.NoSuchKey:
                return b"", None
            return obj["Body"].read(), obj["ETag"]

    def write_bytes(self, uri: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False) -> str:
        """Write an object. ``if_match``/``if_none_match`` make it a conditional write (S3 semantics).

        A conditional write carries a fresh write id in its metadata; after a 412 the object is read back
        and, when it holds our write id (a retried request whose first attempt landed), the write succeeded.

        Returns the new ETag (or "" for local files).

        Raises:
            PreconditionFailed: another writer changed (or created) the object first.
            StorageError: S3 failed (one line).
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
        conditional = bool(if_match or if_none_match)
        if if_match:
            kwargs["IfMatch"] = if_match
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        write_id = uuid.uuid4().hex
        if conditional:
            kwargs["Metadata"] = {WRITE_ID_META: write_id}
        with s3_errors("write", uri):
            try:
                return self.client.put_object(**kwargs).get("ETag", "")
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code", "") not in _PRECONDITION_CODES or not conditional:
                    raise
            etag = self._landed(bucket, key, data, write_id)
        if etag is None:
            raise PreconditionFailed(uri)
        return etag

    def _landed(self, bucket: str, key: str, data: bytes, write_id: str) -> str | None:
        """After a 412: the object's ETag if it is our own write (our write id), else None (a real conflict).

        A store that keeps no user metadata at all is judged on the bytes.
        """
        try:
            obj = self.client.get_object(Bucket=bucket, Key=key)
        except self.client.exceptions.NoSuchKey:
            return None
        body = obj["Body"].read()
        stored = {k.lower(): v for k, v in (obj.get("Metadata") or {}).items()}.get(WRITE_ID_META)
        if stored == write_id or (stored is None and not obj.get("Metadata") and body == data):
            return obj.get("ETag", "")
        return None

    def read_json(self, uri: str) -> Any:
        return json.loads(self.read_bytes(uri))

    def write_json(self, uri: str, obj: Any, **kwargs: Any) -> str:
        return self.write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True).encode(), **kwargs)

    def exists(self, uri: str) -> bool:
        if not is_s3(uri):
            return Path(uri).exists()
        from botocore.exceptions import ClientError

        bucket, key = parse_s3_uri(uri)
        with s3_errors("head", uri):
            try:
                self.client.head_object(Bucket=bucket, Key=key)
                return True
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in _MISSING_CODES:
                    return False
                raise

    def download_file(self, uri: str, dest: Path) -> Path:
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not is_s3(uri):
            shutil.copyfile(uri, dest)
        else:
            bucket, key = parse_s3_uri(uri)
            with s3_errors("download", uri):
                self.client.download_file(bucket, key, str(dest))
        return dest

    def upload_file(self, src: Path, uri: str) -> str:
        if not is_s3(uri):
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, uri)
        else:
            bucket, key = parse_s3_uri(uri)
            with s3_errors("upload", uri):
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
        with s3_errors("list", uri):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                out.extend(f"s3://{bucket}/{obj['Key']}" for obj in page.get("Contents", []))
        return sorted(out)

    def list_entries(self, uri: str) -> list[tuple[str, float]]:
        """``(object URI, last-modified epoch seconds)`` of every object under a prefix (recursive), sorted."""
        if not is_s3(uri):
            return [(p, Path(p).stat().st_mtime) for p in Storage.list(self, uri)]
        bucket, prefix = parse_s3_uri(uri)
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        out: list[tuple[str, float]] = []
        with s3_errors("list", uri):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                out.extend((f"s3://{bucket}/{o['Key']}", o["LastModified"].timestamp()) for o in page.get("Contents", []))
        return sorted(out)

    def download_dir(self, uri: str, dest: Path) -> Path:
        """Download every object under ``uri`` into ``dest``, keeping the relative paths of their keys.

        Raises:
            FileNotFoundError: nothing under ``uri``.
            ValueError: a key that would land outside ``dest`` (``..``, an absolute path, a backslash) or on
                ``dest`` itself; checked for every key before anything is written.
        """
        dest = Path(dest)
        objects = self.list(uri)
        if not objects:
            raise FileNotFoundError(f"nothing under {uri}")
        targets = [(obj, _target(dest, uri, obj)) for obj in objects]
        for obj, target in targets:
            self.download_file(obj, target)
        return dest

    def upload_dir(self, src: Path, uri: str) -> list[str]:
        src = Path(src)
        return [self.upload_file(p, join(uri, p.relative_to(src).as_posix())) for p in sorted(src.rglob("*")) if p.is_file()]


def relative(uri: str, obj: str) -> str:
    """The path of ``obj`` (from :meth:`Storage.list` of ``uri``) relative to ``uri``; "" when not under it."""
    if is_s3(uri):
        base = uri.rstrip("/") + "/"
        return obj.removeprefix(base) if obj.startswith(base) else ""
    return Path(obj).relative_to(Path(uri)).as_posix() if Path(obj).is_relative_to(Path(uri)) else ""


def _target(dest: Path, uri: str, obj: str) -> Path:
    """Where object ``obj`` listed under ``uri`` goes in ``dest``; ValueError unless strictly inside ``dest``."""
    rel = relative(uri, obj)
    root = dest.resolve()
    target = (dest / rel).resolve()
    if "\\" in rel or not rel or target == root or not target.is_relative_to(root):
        raise ValueError(f"refusing to download {obj!r}: key {rel!r} does not stay inside {dest}")
    return dest / rel
