"""Shared unit-test fixtures.

``s3`` is a :class:`~modelops.storage.Storage` whose ``s3://`` objects live in memory with S3's
conditional-write semantics (ETag = MD5 of the body, If-Match, If-None-Match), thread-safe, so code that
races on conditional writes can be tested without a server. Local paths still go to the real filesystem.
The integration tests run the same code against SeaweedFS.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
from pathlib import Path

import pytest

from modelops.storage import PreconditionFailed, Storage, is_s3


class MemoryS3Storage(Storage):
    """In-memory S3 with conditional writes; ``writes`` counts successful writes per URI."""

    def __init__(self) -> None:
        super().__init__()
        self.objects: dict[str, bytes] = {}
        self.writes: dict[str, int] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _etag(data: bytes) -> str:
        return f'"{hashlib.md5(data).hexdigest()}"'  # S3's ETag: MD5 of the body

    def read_bytes(self, uri: str) -> bytes:
        if not is_s3(uri):
            return super().read_bytes(uri)
        with self._lock:
            if uri not in self.objects:
                raise FileNotFoundError(uri)
            return self.objects[uri]

    def iter_chunks(self, uri: str, chunk_size: int = 1 << 20):
        if not is_s3(uri):
            yield from super().iter_chunks(uri, chunk_size)
            return
        with self._lock:
            if uri not in self.objects:
                raise FileNotFoundError(uri)
            data = self.objects[uri]
        for start in range(0, len(data), chunk_size):
            yield data[start : start + chunk_size]

    def read_with_etag(self, uri: str) -> tuple[bytes, str | None]:
        with self._lock:
            data = self.objects.get(uri)
        return (b"", None) if data is None else (data, self._etag(data))

    def write_bytes(self, uri: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False) -> str:
        if not is_s3(uri):
            return super().write_bytes(uri, data, if_match=if_match, if_none_match=if_none_match)
        with self._lock:
            current = self.objects.get(uri)
            if if_none_match and current is not None:
                raise PreconditionFailed(uri)
            if if_match is not None and (current is None or self._etag(current) != if_match):
                raise PreconditionFailed(uri)
            self.objects[uri] = bytes(data)
            self.writes[uri] = self.writes.get(uri, 0) + 1
            return self._etag(data)

    def exists(self, uri: str) -> bool:
        if not is_s3(uri):
            return super().exists(uri)
        with self._lock:
            return uri in self.objects

    def delete(self, uri: str) -> None:
        with self._lock:
            self.objects.pop(uri, None)

    def download_file(self, uri: str, dest: Path) -> Path:
        if not is_s3(uri):
            return super().download_file(uri, dest)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(self.read_bytes(uri))
        return dest

    def upload_file(self, src: Path, uri: str) -> str:
        if not is_s3(uri):
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, uri)
            return uri
        self.write_bytes(uri, Path(src).read_bytes())
        return uri

    def list(self, uri: str) -> list[str]:
        if not is_s3(uri):
            return super().list(uri)
        prefix = uri.rstrip("/") + "/"
        with self._lock:
            return sorted(k for k in self.objects if k.startswith(prefix))


@pytest.fixture
def s3() -> MemoryS3Storage:
    """A fresh in-memory S3 storage with conditional writes."""
    return MemoryS3Storage()
