"""The MLflow webhook receiver under hostile input and Airflow faults.

The real receiver app (``modelops_airflow.webhook``) is driven through Starlette's TestClient, httpx's ASGI
transport or raw ASGI calls, with its real SQLite delivery table in a temporary folder and the real
``AirflowApiHook``. Only the Airflow REST API is a fake (no API server runs in unit tests): a small HTTP
server on 127.0.0.1 that answers as Airflow 3 documents it (``POST /auth/token`` -> 201 with a token;
``POST /api/v2/dags/<dag>/dagRuns`` -> 200 with the dag run JSON, 409 when the ``dag_run_id`` exists).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from modelops.contracts import naming
from modelops.triggers.signature import sign

PATH = "/mlflow/webhook"
SECRET = "s3cret-for-tests"
TOKEN = "fake-jwt"


class FakeAirflowApi:
    """Airflow's public REST API, the two calls the receiver makes. ``fail_next`` answers the next N run
    creations with HTTP 500; ``delay_s`` slows each creation; ``stop()`` makes the API unreachable."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}
        self.fail_next = 0
        self.delay_s = 0.0
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: dict[str, Any]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if self.path == "/auth/token":
                    return self._send(201, {"access_token": TOKEN})
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._send(401, {"detail": "Not authenticated"})
                if not (self.path.startswith("/api/v2/dags/") and self.path.endswith("/dagRuns")):
                    return self._send(404, {"detail": "Not Found"})
                with api.lock:
                    api.in_flight += 1
                    api.max_in_flight = max(api.max_in_flight, api.in_flight)
                time.sleep(api.delay_s)
                with api.lock:
                    api.in_flight -= 1
                dag_id, run_id = self.path.split("/")[4], body["dag_run_id"]
                with api.lock:
                    if api.fail_next > 0:
                        api.fail_next -= 1
                        return self._send(500, {"detail": "Internal Server Error"})
                    if run_id in api.runs:
                        return self._send(409, {"detail": f"DAGRun with dag_id: '{dag_id}' and run_id: "
                                                          f"'{run_id}' already exists"})
                    api.runs[run_id] = {"dag_id": dag_id, "dag_run_id": run_id, "conf": body.get("conf"),
                                        "note": body.get("note"), "state": "queued", "logical_date": None}
                    return self._send(200, api.runs[run_id])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def restart(self) -> None:
        """Serve again on the same port (Airflow's API server back up)."""
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self.server.RequestHandlerClass)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()


class FakeMlflowRegistry:
    """MLflow's REST API, the two registry calls the receiver makes for an alias move: read a registered
    model's tags (``GET /api/2.0/mlflow/registered-models/get``) and set one (``POST .../set-tag``)."""

    def __init__(self) -> None:
        self.tags: dict[str, dict[str, str]] = {}
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: dict[str, Any]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                from urllib.parse import parse_qs, urlparse

                url = urlparse(self.path)
                name = parse_qs(url.query).get("name", [""])[0]
                if url.path != "/api/2.0/mlflow/registered-models/get":
                    return self._send(404, {"error_code": "ENDPOINT_NOT_FOUND"})
                tags = [{"key": k, "value": v} for k, v in registry.tags.setdefault(name, {}).items()]
                return self._send(200, {"registered_model": {"name": name, "tags": tags}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if self.path != "/api/2.0/mlflow/registered-models/set-tag":
                    return self._send(404, {"error_code": "ENDPOINT_NOT_FOUND"})
                registry.tags.setdefault(body["name"], {})[body["key"]] = body["value"]
                return self._send(200, {})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def mlflow_registry():
    registry = FakeMlflowRegistry()
    yield registry
    registry.stop()


@pytest.fixture()
def airflow_api():
    api = FakeAirflowApi()
    yield api
    api.stop()


@pytest.fixture()
def hook(tmp_path, monkeypatch, airflow_api, mlflow_registry):
    """The receiver module, configured: secret, a fresh delivery table, scope ``all`` (no opt-in check; an
    alias move still reads and records the alias's history on the fake registry), a 1 KiB body limit and the
    Airflow API connection pointing at the fake."""
    import modelops_airflow.webhook as receiver

    monkeypatch.setenv("MODELOPS_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("MODELOPS_WEBHOOK_DB", str(tmp_path / "deliveries.db"))
    monkeypatch.setenv("MODELOPS_WEBHOOK_MAX_BODY_KB", "1")
    monkeypatch.setenv("MODELOPS_TRIGGER_SCOPE", "all")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_registry.url)
    monkeypatch.setenv("AIRFLOW_CONN_AIRFLOW_API_DEFAULT", f"http://modelops:pw-for-tests@127.0.0.1:{airflow_api.port}/")
    monkeypatch.setattr(receiver, "_guard", None)
    monkeypatch.setattr(receiver, "_api", None)
    return receiver


@pytest.fixture()
def client(hook):
    from fastapi.testclient import TestClient

    return TestClient(hook.app)


def event(name: str = "m", version: str = "3", kind: str = "alias") -> bytes:
    if kind == "alias":
        data = {"name": name, "version": version, "alias": "champion"}
        entity, action = "model_version_alias", "created"
    else:
        data = {"name": name, "version": version, "key": naming.TAG_OPT_IN, "value": "true"}
        entity, action = "model_version_tag", "set"
    return json.dumps({"entity": entity, "action": action, "timestamp": "2026-01-01T00:00:00Z", "data": data}).encode()


def headers(body: bytes, delivery: str = "d-1", secret: str = SECRET, ts: int | None = None) -> dict[str, str]:
    stamp = str(int(time.time()) if ts is None else ts)
    return {"Content-Type": "application/json", "X-MLflow-Delivery-Id": delivery, "X-MLflow-Timestamp": stamp,
            "X-MLflow-Signature": sign(secret, delivery, stamp, body)}


def outcomes(tmp_path) -> dict[str, str | None]:
    """delivery id -> outcome in the receiver's table ({} when no delivery got that far: no table yet)."""
    if not (tmp_path / "deliveries.db").exists():
        return {}
    with sqlite3.connect(tmp_path / "deliveries.db") as db:
        return dict(db.execute("SELECT delivery_id, outcome FROM deliveries").fetchall())


# -- raw ASGI: what the app reads before answering --------------------------------------------------
def asgi_post(app: Any, chunks: list[bytes], hdrs: dict[str, str]) -> tuple[int, dict[str, Any], int]:
    """POST ``chunks`` as a streamed body straight into the ASGI app: (status, JSON body, chunks read)."""
    read = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal read
        if read < len(chunks):
            read += 1
            return {"type": "http.request", "body": chunks[read - 1], "more_body": read < len(chunks)}
        await asyncio.sleep(3600)  # the client would wait: the app must not need more
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": PATH, "raw_path": PATH.encode(), "root_path": "", "query_string": b"",
             "headers": [(k.lower().encode(), v.encode()) for k, v in hdrs.items()],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8080)}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=30))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body), read


def test_oversized_body_with_content_length_is_refused_unread(hook, airflow_api):
    body = b"x" * 5000
    status, answer, read = asgi_post(hook.app, [body], {**headers(body), "Content-Length": str(len(body))})
    assert (status, read) == (413, 0), answer
    assert "over the limit of 1024 bytes" in answer["error"]
    assert airflow_api.runs == {}


def test_oversized_stream_without_length_is_cut_at_the_limit(hook):
    chunks = [b"y" * 512] * 100  # 50 KiB announced by no Content-Length (chunked transfer)
    status, answer, read = asgi_post(hook.app, chunks, {"X-MLflow-Delivery-Id": "big", "Transfer-Encoding": "chunked"})
    assert status == 413 and read == 3, (status, answer, read)  # 1536 bytes read: one chunk past 1 KiB, no more


def test_oversized_bodies_through_an_http_client(client):
    big = json.dumps({"entity": "model_version_alias", "pad": "z" * 4000}).encode()
    assert client.post(PATH, content=big, headers=headers(big)).status_code == 413
    streamed = client.post(PATH, content=iter([big[:600], big[600:]]), headers=headers(big, delivery="d-2"))
    assert streamed.status_code == 413 and "over the limit" in streamed.json()["error"]
    assert client.post(PATH, content=b"{}", headers={"Content-Length": "lots"}).status_code == 400


def test_limit_is_a_setting(client, monkeypatch):
    big = event(name="m" * 1200)
    assert client.post(PATH, content=big, headers=headers(big)).status_code == 413
    monkeypatch.setenv("MODELOPS_WEBHOOK_MAX_BODY_KB", "64")
    assert client.post(PATH, content=big, headers=headers(big)).status_code == 202


# -- malformed and forged bodies ---------------------------------------------------------------------
def test_non_utf8_body_is_a_400_signed_or_not(client, airflow_api):
    raw = b'{"entity": "model_version_tag", "data": {"name": "\xff\xfe"}}'
    signed = client.post(PATH, content=raw, headers=headers(raw))
    assert signed.status_code == 400 and signed.json() == {"error": "body is not UTF-8"}
    assert client.post(PATH, content=raw).status_code == 400
    assert airflow_api.runs == {}


@pytest.mark.parametrize("raw", [b"not json", b"", b"[1, 2]", b'"text"', b"[" * 20000 + b"]" * 20000, b"{\"a\": NaN"])
def test_non_json_or_non_object_body_is_a_400(client, raw, airflow_api, monkeypatch):
    monkeypatch.setenv("MODELOPS_WEBHOOK_MAX_BODY_KB", "64")  # room for 20,000 nested lists (a RecursionError)
    resp = client.post(PATH, content=raw, headers=headers(raw))
    assert resp.status_code == 400 and resp.json()["error"] in ("body is not JSON", "body is not a JSON object")
    assert airflow_api.runs == {}


def test_odd_payload_shapes_are_ignored_not_500(client):
    for i, data in enumerate([[1], "x", {"name": ["m"], "version": {"v": 1}}, {"name": "m", "version": "٣"}]):
        raw = json.dumps({"entity": "model_version_alias", "action": "created", "data": data}).encode()
        resp = client.post(PATH, content=raw, headers=headers(raw, delivery=f"odd-{i}"))
        assert resp.status_code == 200 and resp.json()["status"] == "ignored", (data, resp.text)


def test_forged_missing_and_stale_signatures_keep_their_codes(client, airflow_api, tmp_path):
    body = event(kind="tag")
    assert client.post(PATH, content=body, headers=headers(body, secret="guess")).status_code == 401
    no_sig = {k: v for k, v in headers(body).items() if k != "X-MLflow-Signature"}
    assert client.post(PATH, content=body, headers=no_sig).json() == {"error": "missing signature"}
    stale = client.post(PATH, content=body, headers=headers(body, ts=int(time.time()) - 600))
    assert stale.status_code == 400 and "stale" in stale.json()["error"]
    assert airflow_api.runs == {} and outcomes(tmp_path) == {}  # nothing claimed for a rejected delivery


# -- the run exists before 202; duplicates; failures are retried -------------------------------------
def test_accepted_means_the_run_exists_and_a_duplicate_starts_none(client, airflow_api, tmp_path):
    body = event(kind="tag", version="5")
    resp = client.post(PATH, content=body, headers=headers(body, delivery="once"))
    assert resp.status_code == 202, resp.text
    run_id = resp.json()["run_id"]
    assert run_id == "mlflow__m__v5__tag-optimize" and resp.json()["run"] == "created"
    assert airflow_api.runs[run_id]["conf"] == {"model_name": "m", "model_version": "5", "model_alias": None}
    assert airflow_api.runs[run_id]["note"].startswith("webhook: tag modelops.optimize=true")
    again = client.post(PATH, content=body, headers=headers(body, delivery="once"))
    assert again.status_code == 409 and again.json()["error"] == "delivery already received"
    # another delivery of the same registry fact (the reconcile created it, or MLflow sent it twice)
    other = client.post(PATH, content=body, headers=headers(body, delivery="twice"))
    assert other.status_code == 202 and other.json()["run"] == "exists"
    assert list(airflow_api.runs) == [run_id]
    assert outcomes(tmp_path) == {"once": "created", "twice": "exists"}


def test_alias_moved_back_creates_a_new_run_through_the_real_rest_calls(client, airflow_api, mlflow_registry):
    """v3 -> v4 -> back to v3: three runs in Airflow; the move history is on the registered model's tag."""
    ids = []
    for delivery, version in (("to-3", "3"), ("to-4", "4"), ("back-to-3", "3")):
        body = event(version=version)
        resp = client.post(PATH, content=body, headers=headers(body, delivery=delivery))
        assert resp.status_code == 202, resp.text
        ids.append(resp.json()["run_id"])
    assert ids[0] == "mlflow__m__v3__alias-champion" and ids[2].startswith(ids[0] + "__after-")
    assert sorted(airflow_api.runs) == sorted(ids)
    assert mlflow_registry.tags["m"] == {"modelops.alias_run.champion": f"3|{ids[2]}"}


def test_failed_run_creation_is_503_and_mlflows_retry_creates_the_run(client, airflow_api, tmp_path):
    body = event(version="7")
    hdrs = headers(body, delivery="retry-me")  # MLflow's retry resends the same headers and body
    airflow_api.fail_next = 1
    first = client.post(PATH, content=body, headers=hdrs)
    assert first.status_code == 503 and first.json()["run_id"] == "mlflow__m__v7__alias-champion", first.text
    assert airflow_api.runs == {}
    assert outcomes(tmp_path)["retry-me"].startswith("error: RuntimeError: creating run mlflow__m__v7")
    second = client.post(PATH, content=body, headers=hdrs)
    assert second.status_code == 202 and second.json()["run"] == "created", second.text
    assert list(airflow_api.runs) == ["mlflow__m__v7__alias-champion"]
    assert client.post(PATH, content=body, headers=hdrs).status_code == 409  # done: now a replay


def test_airflow_down_is_503_then_the_retry_creates_the_run(client, airflow_api):
    airflow_api.stop()
    body = event(version="8")
    hdrs = headers(body, delivery="while-down")
    down = client.post(PATH, content=body, headers=hdrs)
    assert down.status_code == 503 and "retry" in down.json()["error"]
    airflow_api.restart()
    assert client.post(PATH, content=body, headers=hdrs).status_code == 202
    assert list(airflow_api.runs) == ["mlflow__m__v8__alias-champion"]


def test_no_secret_is_503(client, monkeypatch, airflow_api):
    monkeypatch.delenv("MODELOPS_WEBHOOK_SECRET")
    monkeypatch.delenv("MODELOPS_STACK_DIR", raising=False)
    monkeypatch.delenv("MODELOPS_WEBHOOK_SECRET_FILE", raising=False)
    body = event()
    assert client.post(PATH, content=body, headers=headers(body)).status_code == 503
    assert airflow_api.runs == {}


# -- the event loop stays free -------------------------------------------------------------------------
def test_slow_airflow_blocks_neither_the_loop_nor_a_concurrent_duplicate(hook, airflow_api):
    import httpx

    import modelops_airflow.hooks  # noqa: F401 - imported here, not in the timed window

    airflow_api.delay_s = 1.0
    body = event(version="9")
    hdrs = headers(body, delivery="slow")
    done: dict[str, float] = {}

    async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=hook.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as http:
            async def timed(name: str, coro: Any) -> httpx.Response:
                resp = await coro
                done[name] = time.monotonic()
                return resp

            async def later(coro_factory: Any, delay: float) -> Any:
                await asyncio.sleep(delay)
                return await coro_factory()

            return await asyncio.gather(
                timed("webhook", http.post(PATH, content=body, headers=hdrs)),
                timed("health", later(lambda: http.get("/health"), 0.3)),
                timed("duplicate", later(lambda: http.post(PATH, content=body, headers=hdrs), 0.3)),
            )

    started = time.monotonic()
    webhook, health, duplicate = asyncio.run(scenario())
    assert webhook.status_code == 202 and health.status_code == 200
    assert done["health"] - started < 0.9 < done["webhook"] - started  # answered while Airflow was slow
    assert duplicate.status_code == 409 and duplicate.json()["error"] == "delivery in progress"
    assert done["duplicate"] < done["webhook"]
    assert list(airflow_api.runs) == ["mlflow__m__v9__alias-champion"]


def test_a_burst_of_deliveries_leaves_the_api_servers_threads_free(hook, airflow_api):
    """Run creation calls the same API server, whose sync endpoints run in the default thread pool: a burst
    of slow deliveries must neither fill that pool (a deadlock until timeouts) nor run unbounded."""
    import anyio.to_thread
    import httpx

    import modelops_airflow.hooks  # noqa: F401 - imported here, not in the timed window

    airflow_api.delay_s = 0.5
    bodies = [(event(version=str(10 + i)), f"burst-{i}") for i in range(12)]

    async def scenario() -> tuple[list[httpx.Response], float]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = 4  # a small API server
        transport = httpx.ASGITransport(app=hook.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as http:
            posts = [asyncio.ensure_future(http.post(PATH, content=b, headers=headers(b, delivery=d)))
                     for b, d in bodies]
            await asyncio.sleep(0.2)
            started = time.monotonic()
            health = await http.get("/health")  # a sync endpoint: needs a default-pool thread
            health_s = time.monotonic() - started
            assert health.status_code == 200
            return list(await asyncio.gather(*posts)), health_s

    responses, health_s = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [202] * 12
    assert health_s < 0.4, f"/health waited {health_s:.2f} s behind the deliveries"
    assert len(airflow_api.runs) == 12 and airflow_api.max_in_flight <= hook.WORKER_THREADS


def test_openapi_documents_the_body_and_codes(client):
    op = client.get("/openapi.json").json()["paths"][PATH]["post"]
    assert op["requestBody"]["content"]["application/json"]["schema"] == {"type": "object"}
    assert {"202", "400", "401", "409", "413", "503"} <= set(op["responses"])
