"""Deploy against a Triton that goes away: one-line ``DeployError``, routes untouched, whatever the socket did.

A real ``tritonclient.http`` client talks to a real local TCP server that misbehaves the ways a dying Triton does:
it closes the connection after reading the load request (the server killed with its accepted sockets), or nothing
listens at all (connection refused). Storage is the in-memory S3 of conftest.py.
"""

from __future__ import annotations

import socket
import threading

import pytest

from modelops.local.synthetic import publish_synthetic
from modelops.serving.deploy import DeployError, deploy
from modelops.serving.routes import read_routes, write_routes
from modelops.serving.triton import client as triton_client

BUCKET = "triton"


class ClosesAfterRequest:
    """Accepts connections, reads the request head, closes without answering (a killed server's socket)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                self.requests += 1

    def close(self) -> None:
        self.sock.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def published(s3):
    publish_synthetic(s3, BUCKET, "m", "m--v1-synthetic", k=1.0)
    publish_synthetic(s3, BUCKET, "m", "m--v2-synthetic", k=2.0)
    write_routes(s3, BUCKET, read_routes(s3, BUCKET, "m"), {"m--v1-synthetic": 100}, by="run1")
    return read_routes(s3, BUCKET, "m")


@pytest.mark.parametrize("failure", ["connection closed", "connection refused"])
def test_a_lost_triton_fails_the_deploy_in_one_line_and_leaves_the_routes(s3, published, failure):
    server = ClosesAfterRequest() if failure == "connection closed" else None
    url = server.url if server else f"127.0.0.1:{_free_port()}"
    client = triton_client.http_client(url, timeout_s=5)
    try:
        with pytest.raises(DeployError) as info:
            deploy(client, s3, BUCKET, "m", "m--v2-synthetic", run_id="run2", smoke=lambda: None)
    finally:
        client.close()
        if server:
            server.close()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("Triton could not serve m--v2-synthetic: Triton unreachable while loading it (")
    assert message.endswith("routes unchanged, retry once Triton is up")
    if server:
        assert server.requests >= 1  # the load request did reach the socket before it was closed
    after = read_routes(s3, BUCKET, "m")
    assert (after.revision, after.weights()) == (published.revision, {"m--v1-synthetic": 100})
