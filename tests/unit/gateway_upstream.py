"""A small real KServe v2 HTTP server on 127.0.0.1 standing in for Triton in the gateway tests.

It speaks the subset the gateway uses (health, model metadata/ready, infer with JSON or the binary-tensor
extension), records which deployment got each request and which headers came with it, and fails on demand:
``refuse`` (400 as Triton refuses a tensor), ``unloaded`` (Triton's unknown-model 400), ``delay_s``.

For the OpenAI API: ``embedders`` (deployment -> dimension) are text embedders (BYTES ``text`` in, FP32
``embedding`` out, batched, vectors from :func:`fake_embedding`), and ``llms`` are decoupled chat models behind the
generate extension: ``generate_stream`` streams SSE events per the LLM serving contract, replying
``You said: <last user message>`` one word per event (``max_tokens`` and ``stop`` honoured, tokens = words; a
last message ``fail`` sends an error event after the first word). ``chunk_delay_s`` slows the stream and
``stream_aborted`` is set when the client closed it before the end. :class:`FakeMlflow` answers
``registered-models/get``.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeTriton:
    """Start with :meth:`start`, stop with :meth:`stop`; ``url`` is its base URL."""

    def __init__(self, deployments: set[str], llms: set[str] | None = None, embedders: dict[str, int] | None = None):
        self.llms = set(llms or ())
        self.embedders = dict(embedders or {})
        self.deployments = set(deployments) | self.llms | set(self.embedders)
        self.chunk_delay_s = 0.0
        self.stream_aborted = threading.Event()
        self.generate_bodies: list[dict[str, Any]] = []
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
                    if dep in fake.embedders:
                        return self._send(200, json.dumps(embedder_metadata(dep, fake.embedders[dep])).encode())
                    return self._send(200, json.dumps({"name": dep, "versions": ["1"], "platform": "python"}).encode())
                self._error(404, "Not Found")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                parts = self.path.strip("/").split("/")
                if len(parts) != 4 or parts[:2] != ["v2", "models"] or parts[3] not in ("infer", "generate_stream"):
                    return self._error(404, "Not Found")
                dep = parts[2]
                if parts[3] == "generate_stream":
                    return self._generate_stream(dep, body)
                if dep in fake.embedders:
                    return self._embed(dep, json.loads(body))
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

            def _embed(self, dep: str, doc: dict[str, Any]) -> None:
                with fake._lock:
                    fake.hits[dep] += 1
                (tensor,) = doc["inputs"]
                if tensor["name"] != "text" or tensor["datatype"] != "BYTES" or len(tensor["shape"]) != 2:
                    return self._error(400, f"unexpected inference input '{tensor['name']}' for model '{dep}'")
                dim = fake.embedders[dep]
                data = [x for text in tensor["data"] for x in fake_embedding(text, dim)]
                self._send(200, json.dumps({"model_name": dep, "outputs": [{
                    "name": "embedding", "datatype": "FP32", "shape": [len(tensor["data"]), dim], "data": data}]}).encode())

            def _generate_stream(self, dep: str, body: bytes) -> None:
                if dep not in fake.llms:
                    return self._error(400, f"Request for unknown model: '{dep}' is not found")
                doc = json.loads(body)
                with fake._lock:
                    fake.hits[dep] += 1
                    fake.generate_bodies.append(doc)
                messages = json.loads(doc["messages_json"])
                params = json.loads(doc.get("params_json") or "{}")
                if not messages or not isinstance(messages, list):
                    return self._error(400, "messages_json must be a non-empty list")
                events = chat_events(dep, messages, params)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for i, event in enumerate(events):
                        if i and fake.chunk_delay_s:
                            threading.Event().wait(fake.chunk_delay_s)
                        data = b"data: " + json.dumps(event).encode() + b"\n\n"
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:  # the gateway closed the stream (its client went away)
                    fake.stream_aborted.set()
                    self.close_connection = True

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


def fake_embedding(text: str, dim: int) -> list[float]:
    """A deterministic unit vector of ``text`` (float32 values)."""
    raw = hashlib.sha256(text.encode()).digest() * (dim // 32 + 1)
    values = [b - 127.5 for b in raw[:dim]]
    norm = math.sqrt(sum(v * v for v in values))
    return [struct.unpack("<f", struct.pack("<f", v / norm))[0] for v in values]


def embedder_metadata(deployment: str, dim: int) -> dict[str, Any]:
    """KServe metadata of a batched text embedder, as Triton answers it."""
    return {"name": deployment, "versions": ["1"], "platform": "python",
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1, 1]}],
            "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, dim]}]}


def chat_events(deployment: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> list[dict[str, Any]]:
    """The generate_stream events of the fake chat model (see the module docstring)."""
    prompt = sum(len(str(m.get("content", "")).split()) for m in messages)
    last = str(messages[-1].get("content", ""))
    reply = f"You said: {last}"
    finish = "stop"
    for stop in params.get("stop") or []:
        if stop in reply:
            reply = reply[: reply.index(stop)]
    words = reply.split(" ")
    limit = int(params.get("max_tokens", 128))
    if len(words) > limit:
        words, finish = words[:limit], "length"
    events: list[dict[str, Any]] = []
    for i, word in enumerate(words):
        events.append({"model_name": deployment, "model_version": "1", "text": (" " if i else "") + word,
                       "finish_reason": "", "prompt_tokens": prompt, "completion_tokens": i + 1})
        if last == "fail":
            return [*events, {"error": "the model ran out of memory"}]
    events.append({"model_name": deployment, "model_version": "1", "text": "", "finish_reason": finish,
                   "prompt_tokens": prompt, "completion_tokens": len(words)})
    return events


class FakeMlflow:
    """``GET /api/2.0/mlflow/registered-models/get?name=`` of ``models`` (name -> description, tags); counts calls."""

    def __init__(self, models: dict[str, tuple[str, dict[str, str]]]):
        self.models = models
        self.calls: Counter[str] = Counter()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeMlflow:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                from urllib.parse import parse_qs, urlsplit

                url = urlsplit(self.path)
                name = parse_qs(url.query).get("name", [""])[0]
                fake.calls[name] += 1
                if url.path != "/api/2.0/mlflow/registered-models/get" or name not in fake.models:
                    status, doc = 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"{name} not found"}
                else:
                    description, tags = fake.models[name]
                    status, doc = 200, {"registered_model": {
                        "name": name, "creation_timestamp": 1700000000123, "description": description,
                        "tags": [{"key": k, "value": v} for k, v in tags.items()]}}
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
