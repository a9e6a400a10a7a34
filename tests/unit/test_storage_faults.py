"""Storage under faults: one-line errors from real boto3 calls, false 412s after a retried write, secrets kept
out of reprs, and a publish that an S3 outage interrupted, completed by the next one."""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from modelops.local.stack.state import Credentials
from modelops.serving.publish import CLAIM, MANIFEST, InvalidDeployment, verify_deployment
from modelops.storage import WRITE_ID_META, PreconditionFailed, S3Config, Storage, StorageError
from tests.unit.test_publish_identity import PLAIN, publish


class _MiniS3(BaseHTTPRequestHandler):
    """Just enough S3 over HTTP for boto3: GET/PUT with If-Match/If-None-Match and user metadata.

    Bucket ``denied`` answers 403 AccessDenied, any bucket but ``b`` 404 NoSuchBucket.
    """

    objects: ClassVar[dict[str, tuple[bytes, dict[str, str]]]] = {}

    def log_message(self, *args) -> None:  # quiet
        pass

    def _error(self, status: int, code: str, message: str) -> None:
        body = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _target(self) -> str | None:
        bucket = self.path.lstrip("/").split("/", 1)[0].split("?", 1)[0]
        if bucket == "denied":
            self._error(403, "AccessDenied", "Access Denied")
        elif bucket != "b":
            self._error(404, "NoSuchBucket", "The specified bucket does not exist")
        else:
            return self.path.split("?", 1)[0]
        return None

    def do_GET(self) -> None:
        key = self._target()
        if key is None:
            return
        if key not in self.objects:
            return self._error(404, "NoSuchKey", "The specified key does not exist.")
        body, meta = self.objects[key]
        self.send_response(200)
        self.send_header("ETag", _etag(body))
        for name, value in meta.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:
        key = self._target()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if key is None:
            return
        current = self.objects.get(key)
        if (self.headers.get("If-None-Match") == "*" and current) or (
            self.headers.get("If-Match") and (not current or self.headers["If-Match"] != _etag(current[0]))
        ):
            return self._error(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold")
        self.objects[key] = (body, {k: v for k, v in self.headers.items() if k.lower().startswith("x-amz-meta-")})
        self.send_response(200)
        self.send_header("ETag", _etag(body))
        self.send_header("Content-Length", "0")
        self.end_headers()


def _etag(body: bytes) -> str:
    import hashlib

    return f'"{hashlib.md5(body).hexdigest()}"'


@pytest.fixture
def mini_s3(monkeypatch):
    monkeypatch.setenv("MODELOPS_S3_MAX_ATTEMPTS", "3")
    _MiniS3.objects = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _MiniS3)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Storage(S3Config(endpoint_url=f"http://127.0.0.1:{server.server_port}", access_key="AK", secret_key="SK"))
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_endpoint_down_is_a_fast_one_line_error_for_every_operation(monkeypatch, tmp_path):
    monkeypatch.setenv("MODELOPS_S3_MAX_ATTEMPTS", "2")
    port = _closed_port()
    storage = Storage(S3Config(endpoint_url=f"http://127.0.0.1:{port}", access_key="AK", secret_key="SECRET-XYZ"))
    (tmp_path / "f").write_bytes(b"x")
    calls = {
        "read": lambda: storage.read_bytes("s3://b/k"),
        "write": lambda: storage.write_bytes("s3://b/k", b"x", if_none_match=True),
        "list": lambda: storage.list("s3://b/p"),
        "head": lambda: storage.exists("s3://b/k"),
        "upload": lambda: storage.upload_file(tmp_path / "f", "s3://b/k"),
        "download": lambda: storage.download_file("s3://b/k", tmp_path / "g"),
        "delete": lambda: storage.delete("s3://b/k"),
    }
    started = time.monotonic()
    for op, call in calls.items():
        with pytest.raises(StorageError) as err:
            call()
        line = str(err.value)
        assert line.startswith(f"S3 {op} s3://b/") and f"cannot reach the S3 endpoint http://127.0.0.1:{port}" in line
        assert "\n" not in line and "SECRET-XYZ" not in line
    assert time.monotonic() - started < 30  # bounded attempts, no endless retry


def test_client_has_explicit_timeouts_and_attempts_from_settings(monkeypatch):
    monkeypatch.setenv("MODELOPS_S3_CONNECT_TIMEOUT_S", "2.5")
    monkeypatch.setenv("MODELOPS_S3_READ_TIMEOUT_S", "7")
    monkeypatch.setenv("MODELOPS_S3_MAX_ATTEMPTS", "4")
    config = Storage(S3Config(endpoint_url="http://127.0.0.1:9")).client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (2.5, 7.0)
    assert config.retries["total_max_attempts"] == 4 and config.retries["mode"] == "standard"


def test_access_denied_and_missing_bucket_are_one_line_errors(mini_s3):
    with pytest.raises(StorageError, match=r"^S3 read s3://denied/k failed: AccessDenied: Access Denied$"):
        mini_s3.read_bytes("s3://denied/k")
    with pytest.raises(StorageError, match=r"^S3 write s3://nope/k failed: NoSuchBucket: The specified bucket"):
        mini_s3.write_bytes("s3://nope/k", b"x")
    with pytest.raises(FileNotFoundError):  # a missing key stays FileNotFoundError
        mini_s3.read_bytes("s3://b/missing")


def test_iter_chunks_streams_an_object_through_boto3(mini_s3):
    data = bytes(range(256)) * 40
    mini_s3.write_bytes("s3://b/deploy/1/model.onnx", data)
    chunks = list(mini_s3.iter_chunks("s3://b/deploy/1/model.onnx", 1000))
    assert b"".join(chunks) == data and max(map(len, chunks)) <= 1000 and len(chunks) >= 11
    with pytest.raises(FileNotFoundError):
        list(mini_s3.iter_chunks("s3://b/missing"))
    with pytest.raises(StorageError, match=r"^S3 read s3://denied/k failed: AccessDenied: Access Denied$"):
        list(mini_s3.iter_chunks("s3://denied/k"))


def _lose_first_response(storage: Storage) -> list[int]:
    from botocore.exceptions import ConnectionClosedError

    client, statuses = storage.client, []

    def send(request, **_kw):
        response = client._endpoint.http_session.send(request)
        statuses.append(response.status_code)
        if len(statuses) == 1:  # it landed, but boto3 sees a dropped connection and retries
            raise ConnectionClosedError(endpoint_url=request.url)
        return response

    client.meta.events.register_first("before-send.s3.PutObject", send, unique_id="lose-first")
    return statuses


def test_retried_conditional_write_that_landed_is_a_success_not_a_conflict(mini_s3):
    statuses = _lose_first_response(mini_s3)
    etag = mini_s3.write_bytes("s3://b/routes/m.json", b"v1", if_none_match=True)
    assert statuses == [200, 412] and etag == _etag(b"v1")
    assert WRITE_ID_META in "".join(_MiniS3.objects["/b/routes/m.json"][1]).lower()
    statuses.clear()
    etag2 = mini_s3.write_bytes("s3://b/routes/m.json", b"v2", if_match=etag)
    assert statuses == [200, 412] and etag2 == _etag(b"v2")


def test_someone_elses_write_is_still_a_conflict_even_with_the_same_bytes(mini_s3):
    other = Storage(mini_s3.config)
    other.write_bytes("s3://b/k", b"same", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        mini_s3.write_bytes("s3://b/k", b"same", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        mini_s3.write_bytes("s3://b/k", b"same", if_match='"stale"')


def test_secrets_never_in_reprs():
    creds = Credentials.generate()
    cfg = S3Config(endpoint_url="http://s3", access_key="AKIA1", secret_key="very-secret-value")
    for text in (repr(cfg), str(cfg), f"{cfg}", repr(Storage(cfg))):
        assert "very-secret-value" not in text and "***" in text
    secrets = [v for k, v in creds.to_dict().items() if k not in ("airflow_username", "openwebui_admin_email")]
    for text in (repr(creds), str(creds), f"{creds!r}"):
        assert not [s for s in secrets if s in text]
        assert "airflow_password='***'" in text and "s3_secret_key='***'" in text
    assert creds.to_dict()["s3_secret_key"] not in ("***", "")  # stack.json keeps the real values


class _OutageS3:
    """Wraps the conftest storage: S3 goes down after ``ok_uploads`` object uploads."""

    def __init__(self, s3, ok_uploads: int) -> None:
        self.s3, self.left = s3, ok_uploads
        self.upload_file = self._upload

    def _upload(self, src, uri):
        if self.left <= 0:
            raise StorageError(f"S3 upload {uri} failed: cannot reach the S3 endpoint http://127.0.0.1:1")
        self.left -= 1
        return self.s3.upload_file(src, uri)

    def __getattr__(self, name):
        return getattr(self.s3, name)


def test_publish_interrupted_by_an_s3_outage_is_never_served_and_the_next_publish_completes_it(s3):
    with pytest.raises(StorageError, match=r"^S3 upload s3://triton/.* failed: cannot reach"):
        publish(_OutageS3(s3, ok_uploads=1), b"model-A", run_id="run-1")
    uri = f"s3://triton/{PLAIN}"
    assert s3.exists(f"{uri}/{CLAIM}") and not s3.exists(f"{uri}/{MANIFEST}")
    with pytest.raises(InvalidDeployment, match="no manifest.json"):
        verify_deployment(s3, uri)  # what deploy and reconcile call before loading: never served
    out = publish(s3, b"model-A", run_id="run-1")  # Airflow's retry of the same run: completes at once
    assert out["deployment"] == PLAIN and not out["reused"]
    assert verify_deployment(s3, uri)["content_digest"] == out["content_digest"]


def test_a_dead_publishers_old_claim_is_completed_without_waiting(s3):
    with pytest.raises(StorageError):
        publish(_OutageS3(s3, ok_uploads=0), b"model-A", run_id="dead-run")
    claim_uri = f"s3://triton/{PLAIN}/{CLAIM}"
    claim = json.loads(s3.read_bytes(claim_uri))
    claim["claimed_at"] = (datetime.now(UTC) - timedelta(hours=2)).isoformat(timespec="seconds")
    s3.write_bytes(claim_uri, json.dumps(claim).encode())
    started = time.monotonic()
    out = publish(s3, b"model-A", run_id="next-run")  # default claim_wait_s: 120 s
    assert time.monotonic() - started < 20
    assert out["deployment"] == PLAIN and not out["reused"]
    verify_deployment(s3, out["uri"])


def test_make_private_closes_the_stack_folder_whatever_existed_before(tmp_path):
    import os
    import stat

    from modelops.local.stack.state import make_private

    root = tmp_path / "stack"
    (root / "mlflow").mkdir(parents=True)
    (root / "stack.json").write_text("{}")
    (root / "mlflow" / "mlflow.db").write_text("db")
    (root / "shim").write_text("#!/bin/sh\n")
    outside = tmp_path / "outside.txt"
    outside.write_text("not ours")
    (root / "link").symlink_to(outside)
    for path, mode in ((root, 0o755), (root / "mlflow", 0o777), (root / "stack.json", 0o644),
                       (root / "mlflow" / "mlflow.db", 0o666), (root / "shim", 0o755), (outside, 0o644)):
        os.chmod(path, mode)
    make_private(root)

    def mode(p):
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(root) == mode(root / "mlflow") == 0o700
    assert mode(root / "stack.json") == mode(root / "mlflow" / "mlflow.db") == 0o600
    assert mode(root / "shim") == 0o700  # still executable, by the owner only
    assert mode(outside) == 0o644  # a symlink's target outside the stack is left alone
