"""A small real KServe v2 HTTP server on 127.0.0.1 standing in for Triton in the gateway tests.

It speaks the subset the gateway uses (health, model metadata/ready, infer with JSON or the binary-tensor
extension), records which deployment got each request and which headers came with it, and fails on demand:
``refuse`` (400 as Triton refuses a tensor), ``unloaded`` (Triton's unknown-model 400), ``delay_s``.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeTriton:
    """Start with :meth:`start`, stop with :meth:`stop`; ``url`` is its base URL."""

    def __init__(self, deployments: set[str]):
        self.deployments = set(deployments)
        self.refuse: set[str] = set()
        self.delay_s = 0.0
        self.hits: Counter[str] = Counter()
        self.headers_seen: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeTriton:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stalls

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _error(self, status: int, message: str) -> None:
                self._send(status, json.dumps({"error": message}).encode())

            def do_GET(self) -> None:
                parts = self.path.strip("/").split("/")
                if parts == ["v2", "health", "ready"]:
                    return self._send(200, b"")
                if len(parts) >= 3 and parts[:2] == ["v2", "models"]:
                    dep = parts[2]
                    if dep not in fake.deployments:
                        return self._error(400, f"Request for unknown model: '{dep}' is not found")
                    if parts[3:] == ["ready"]:
                        return self._send(200, b"")
                    return self._send(200, json.dumps({"name": dep, "versions": ["1"], "platform": "python"}).encode())
                self._error(404, "Not Found")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                parts = self.path.strip("/").split("/")
                if len(parts) != 4 or parts[:2] != ["v2", "models"] or parts[3] != "infer":
                    return self._error(404, "Not Found")
                dep = parts[2]
                with fake._lock:
                    fake.headers_seen.append({k.lower(): v for k, v in self.headers.items()})
                if fake.delay_s:
                    threading.Event().wait(fake.delay_s)
                if dep not in fake.deployments:
                    return self._error(400, f"Request for unknown model: '{dep}' is not found")
                if dep in fake.refuse:
                    return self._error(400, f"unexpected shape for input 'x' for model '{dep}'")
                with fake._lock:
                    fake.hits[dep] += 1
                header_length = self.headers.get("Inference-Header-Content-Length")
                if header_length is not None:  # binary extension: echo the tensor bytes back
                    head = json.dumps({"model_name": dep, "outputs": [{"name": "y", "parameters":
                                       {"binary_data_size": length - int(header_length)}}]}).encode()
                    return self._send(200, head + body[int(header_length):], {
                        "Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))})
                doc = json.loads(body)
                self._send(200, json.dumps({"model_name": dep, "outputs": doc.get("inputs", [])}).encode())

        class Server(ThreadingHTTPServer):
            request_queue_size = 128  # the default backlog of 5 resets concurrent connects

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
