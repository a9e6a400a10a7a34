"""The gateway app in-process (ASGI) against a real KServe v2 HTTP server on 127.0.0.1.

Routes files live in a temp directory (the routes source takes a local path as well as s3://), keys in a
temp SQLite store; only the ASGI hop is in-process, the hop to the upstream is real HTTP.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelops.serving.gateway import GatewayConfig, create_app
from modelops.serving.gateway.keys import KeyStore
from tests.unit.gateway_upstream import FakeTriton

INFER = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}


def write_routes(directory: Path, model: str, weights: dict[str, int], revision: int = 1) -> None:
    doc = {"model": model, "revision": revision, "routes": [{"deployment": d, "weight": w} for d, w in weights.items()]}
    tmp = directory / f".{model}.tmp"
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, directory / f"{model}.json")


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def triton() -> FakeTriton:
    fake = FakeTriton({"m--v1", "m--v2", "other--v1"}).start()
    yield fake
    fake.stop()


@pytest.fixture
def config(tmp_path: Path, triton: FakeTriton) -> GatewayConfig:
    routes = tmp_path / "routes"
    routes.mkdir()
    write_routes(routes, "m", {"m--v1": 100})
    write_routes(routes, "other", {"other--v1": 100})
    write_routes(routes, "empty", {})
    write_routes(routes, "gone", {"gone--v1": 100})  # routed, but not loaded in Triton
    return GatewayConfig(triton_url=triton.url, routes_uri=str(routes), keys_db=tmp_path / "keys.db",
                         max_body_bytes=4096, routes_poll_s=0.1)


@pytest.fixture
def keys(config: GatewayConfig) -> dict[str, str]:
    store = KeyStore(config.keys_db)
    return {name: store.create(name, models)[1] for name, models in
            (("all", "*"), ("narrow", "m,gone,empty"), ("glob", "oth*"))}


@asynccontextmanager
async def gateway(config: GatewayConfig) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(config)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=10) as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_infer_json_and_binary_pass_through(config: GatewayConfig, keys: dict[str, str], triton: FakeTriton) -> None:
    async def scenario() -> None:
        async with gateway(config) as gw:
            r = await gw.post("/v2/models/m/infer", json=INFER, headers=bearer(keys["narrow"]))
            assert r.status_code == 200 and r.headers["x-modelops-deployment"] == "m--v1"
            assert r.json() == {"model_name": "m--v1", "outputs": INFER["inputs"]}
            head = json.dumps({"inputs": [{"name": "x", "shape": [4], "datatype": "UINT8",
                                           "parameters": {"binary_data_size": 4}}]}).encode()
            r = await gw.post("/v2/models/m/infer", content=head + b"\x00\xff\x01\x02", headers={
                **bearer(keys["all"]), "Inference-Header-Content-Length": str(len(head)),
                "Content-Type": "application/octet-stream"})
            assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
            n = int(r.headers["inference-header-content-length"])
            assert r.content[n:] == b"\x00\xff\x01\x02"
            r = await gw.get("/v2/models/other", headers=bearer(keys["glob"]))
            assert r.status_code == 200 and r.json()["name"] == "other--v1"
            r = await gw.get("/v2/models/m/ready", headers=bearer(keys["all"]))
            assert r.json() == {"name": "m", "ready": True}
            assert (await gw.get("/v2/health/live")).status_code == 200
            assert (await gw.get("/v2/health/ready")).json() == {"ready": True}
        assert all("authorization" not in h for h in triton.headers_seen)  # the key never goes upstream
        assert triton.headers_seen[1]["inference-header-content-length"] == str(len(head))

    run(scenario())


def test_every_error_is_json_with_its_status(config: GatewayConfig, keys: dict[str, str], triton: FakeTriton) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 1000

    async def scenario() -> list[tuple[str, int, str]]:
        seen = []
        async with gateway(config) as gw:
            async def call(label: str, method: str, path: str, **kwargs: Any) -> None:
                r = await gw.request(method, path, **kwargs)
                seen.append((label, r.status_code, r.json()["error"]))

            revoked = KeyStore(config.keys_db)
            key = revoked.create("old", "*")[1]
            revoked.revoke("old")
            ok = bearer(keys["narrow"])
            await call("no key", "POST", "/v2/models/m/infer", json=INFER)
            await call("not bearer", "POST", "/v2/models/m/infer", json=INFER, headers={"Authorization": "Basic x"})
            await call("unknown key", "POST", "/v2/models/m/infer", json=INFER,
                       headers=bearer("mo_0123456789ab_" + "s" * 43))
            await call("garbage key", "POST", "/v2/models/m/infer", json=INFER, headers=bearer("hunter2"))
            await call("revoked key", "POST", "/v2/models/m/infer", json=INFER, headers=bearer(key))
            await call("not granted", "POST", "/v2/models/other/infer", json=INFER, headers=ok)
            await call("unknown model, narrow key", "POST", "/v2/models/nope/infer", json=INFER, headers=ok)
            await call("unknown model, * key", "POST", "/v2/models/nope/infer", json=INFER,
                       headers=bearer(keys["all"]))
            await call("malformed JSON", "POST", "/v2/models/m/infer", content=b'{"inputs": [', headers=ok)
            await call("not an object", "POST", "/v2/models/m/infer", content=b"[1]", headers=ok)
            await call("not UTF-8", "POST", "/v2/models/m/infer", content=b'{"a": "\xff"}', headers=ok)
            await call("bad header length", "POST", "/v2/models/m/infer", content=b"{}",
                       headers={**ok, "Inference-Header-Content-Length": "99"})
            triton.refuse.add("m--v1")
            await call("tensor refused", "POST", "/v2/models/m/infer", json=INFER, headers=ok)
            triton.refuse.clear()
            await call("too large", "POST", "/v2/models/m/infer", content=b"{" + b" " * 5000 + b"}", headers=ok)
            await call("too large, streamed", "POST", "/v2/models/m/infer", content=chunks(), headers=ok)
            await call("empty routes", "POST", "/v2/models/empty/infer", json=INFER, headers=ok)
            await call("not loaded", "POST", "/v2/models/gone/infer", json=INFER, headers=ok)
            await call("not ready", "GET", "/v2/models/gone/ready", headers=ok)
            await call("no route", "GET", "/v3/nothing")
        down = replace(config, triton_url="http://127.0.0.1:9")  # discard port: nothing listens
        async with gateway(down) as gw:
            r = await gw.post("/v2/models/m/infer", json=INFER, headers=bearer(keys["all"]))
            seen.append(("triton down", r.status_code, r.json()["error"]))
            r = await gw.get("/v2/health/ready")
            seen.append(("triton down, health", r.status_code, r.json()["error"]))
        return seen

    seen = run(scenario())
    statuses = {label: status for label, status, _ in seen}
    assert statuses == {
        "no key": 401, "not bearer": 401, "unknown key": 401, "garbage key": 401, "revoked key": 401,
        "not granted": 403, "unknown model, narrow key": 403, "unknown model, * key": 404,
        "malformed JSON": 400, "not an object": 400, "not UTF-8": 400, "bad header length": 400,
        "tensor refused": 400, "too large": 413, "too large, streamed": 413,
        "empty routes": 503, "not loaded": 503, "not ready": 503, "no route": 404,
        "triton down": 503, "triton down, health": 503,
    }
    messages = {label: message for label, _, message in seen}
    assert "unexpected shape for input 'x'" in messages["tensor refused"]  # Triton's message passed on
    assert messages["unknown model, narrow key"] == "API key 'narrow' is not granted model 'nope'"
    assert messages["not granted"] == "API key 'narrow' is not granted model 'other'"  # same shape: no probing
    assert all("\n" not in m and "hunter2" not in m and keys["narrow"] not in m for m in messages.values())
    assert sum(triton.hits.values()) == 0  # client mistakes never reached Triton


def test_weights_split_70_30_over_2000_requests_and_sticky_sessions(
    config: GatewayConfig, keys: dict[str, str], triton: FakeTriton,
) -> None:
    write_routes(Path(config.routes_uri), "m", {"m--v1": 70, "m--v2": 30}, revision=2)

    async def scenario() -> tuple[Counter[str], set[str], Counter[str]]:
        async with gateway(config) as gw:
            answered: Counter[str] = Counter()
            sem = asyncio.Semaphore(4)

            async def one(session: str | None = None) -> str:
                async with sem:
                    headers = {**bearer(keys["all"]), **({"X-Session-Id": session} if session else {})}
                    r = await gw.post("/v2/models/m/infer", json=INFER, headers=headers)
                    assert r.status_code == 200
                    return r.headers["x-modelops-deployment"]

            for dep in await asyncio.gather(*(one() for _ in range(2000))):
                answered[dep] += 1
            sticky = set(await asyncio.gather(*(one("user-7") for _ in range(30))))
            sessions = Counter(await asyncio.gather(*(one(f"s{i}") for i in range(300))))
            return answered, sticky, sessions

    answered, sticky, sessions = run(scenario())
    assert abs(answered["m--v1"] / 2000 - 0.70) <= 0.04, answered
    assert triton.hits["m--v1"] + triton.hits["m--v2"] >= 2000  # the fake counted what the header says
    assert len(sticky) == 1
    assert set(sessions) == {"m--v1", "m--v2"}


def test_routes_change_is_served_within_2s_without_a_failed_request(
    config: GatewayConfig, keys: dict[str, str], triton: FakeTriton,
) -> None:
    routes = Path(config.routes_uri)
    triton.delay_s = 0.02  # requests overlap the switch

    async def scenario() -> tuple[float, Counter[int], bool, int]:
        async with gateway(config) as gw:
            gw_state = gw.app.state.gateway  # type: ignore[attr-defined]
            statuses: Counter[int] = Counter()
            switched_at: list[float] = []
            first_v2: list[float] = []
            stop = asyncio.Event()

            async def client() -> None:
                while not stop.is_set():
                    r = await gw.post("/v2/models/m/infer", json=INFER, headers=bearer(keys["all"]))
                    statuses[r.status_code] += 1
                    if r.headers.get("x-modelops-deployment") == "m--v2" and not first_v2:
                        first_v2.append(time.monotonic())

            workers = [asyncio.create_task(client()) for _ in range(8)]
            await asyncio.sleep(0.3)
            await asyncio.to_thread(write_routes, routes, "m", {"m--v2": 100}, 2)
            switched_at.append(time.monotonic())
            while not first_v2 and time.monotonic() - switched_at[0] < 5:
                await asyncio.sleep(0.01)
            # v1 is out of the routes: it drains, and stays idle while the load goes on
            drained = await gw_state.in_flight.wait_idle("m--v1", timeout_s=2)
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*workers)
            metrics = (await gw.get("/metrics")).text
            revision = [line for line in metrics.splitlines() if line.startswith('modelops_gateway_routes_revision{model="m"}')]
            assert revision == ['modelops_gateway_routes_revision{model="m"} 2.0'], revision
            return first_v2[0] - switched_at[0] if first_v2 else 99.0, statuses, drained, gw_state.in_flight.count(
                "m--v1")

    seen_after, statuses, drained, v1_in_flight = run(scenario())
    assert seen_after < 2.0
    assert set(statuses) == {200} and sum(statuses.values()) > 50
    assert drained and v1_in_flight == 0


def test_a_revoked_key_is_refused_within_2s(config: GatewayConfig, keys: dict[str, str]) -> None:
    async def scenario() -> float:
        async with gateway(config) as gw:
            r = await gw.post("/v2/models/m/infer", json=INFER, headers=bearer(keys["narrow"]))
            assert r.status_code == 200
            await asyncio.to_thread(KeyStore(config.keys_db).revoke, "narrow")
            revoked = time.monotonic()
            while time.monotonic() - revoked < 5:
                r = await gw.post("/v2/models/m/infer", json=INFER, headers=bearer(keys["narrow"]))
                if r.status_code == 401:
                    return time.monotonic() - revoked
                await asyncio.sleep(0.05)
            return 99.0

    assert run(scenario()) < 2.0


def test_metrics_text_has_the_series(config: GatewayConfig, keys: dict[str, str], triton: FakeTriton) -> None:
    async def scenario() -> str:
        async with gateway(config) as gw:
            for _ in range(3):
                await gw.post("/v2/models/m/infer", json=INFER, headers=bearer(keys["all"]))
            await gw.post("/v2/models/m/infer", json=INFER)
            await gw.post("/v2/models/probe-123/infer", json=INFER, headers=bearer(keys["all"]))
            r = await gw.get("/metrics")
            assert r.headers["content-type"].startswith("text/plain")
            return r.text

    text = run(scenario())
    assert 'modelops_gateway_requests_total{code="200",deployment="m--v1",model="m"} 3.0' in text
    assert 'modelops_gateway_requests_total{code="401",deployment="",model=""} 1.0' in text
    assert 'modelops_gateway_requests_total{code="404",deployment="",model=""} 1.0' in text  # no per-probe series
    assert 'modelops_gateway_request_duration_seconds_count{deployment="m--v1",model="m"} 3.0' in text
    assert 'modelops_gateway_in_flight{deployment="m--v1",model="m"} 0.0' in text
    assert 'modelops_gateway_routes_revision{model="other"} 1.0' in text


def test_main_serves_on_uvicorn(config: GatewayConfig, keys: dict[str, str], tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MODELOPS_GATEWAY_TRITON_URL": config.triton_url,
           "MODELOPS_GATEWAY_ROUTES_URI": config.routes_uri, "MODELOPS_GATEWAY_KEYS_DB": str(config.keys_db),
           "MODELOPS_GATEWAY_MAX_BODY_MB": "0.001"}
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "modelops.serving.gateway", "--port", str(port)], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        r = httpx.post(f"http://127.0.0.1:{port}/v2/models/m/infer", json=INFER, headers=bearer(keys["all"]))
        assert r.status_code == 200 and r.headers["x-modelops-deployment"] == "m--v1"
        r = httpx.post(f"http://127.0.0.1:{port}/v2/models/m/infer", content=b"x" * 5000,
                       headers=bearer(keys["all"]))
        assert r.status_code == 413
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert keys["all"] not in log.read_text()


def test_bad_setting_stops_the_gateway_with_one_line() -> None:
    import subprocess
    import sys

    env = {**os.environ, "MODELOPS_GATEWAY_ROUTES_POLL_S": "5"}
    out = subprocess.run([sys.executable, "-m", "modelops.serving.gateway"], env=env, capture_output=True, text=True,
                         check=False)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("gateway: error: MODELOPS_GATEWAY_ROUTES_POLL_S must be less than or equal")



def test_an_internal_error_is_json_500_and_counted(config: GatewayConfig, keys: dict[str, str]) -> None:
    async def scenario() -> None:
        async with gateway(config) as gw:
            state = gw.app.state.gateway

            def broken(table, request):
                raise RuntimeError("a bug")

            state._pick = broken  # type: ignore[method-assign]  # a bug after routing: the handler must count it
            transport = httpx.ASGITransport(app=gw.app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                r = await client.post("/v2/models/m/infer", json=INFER, headers=bearer(keys["all"]))
            assert r.status_code == 500 and r.json() == {"error": "internal gateway error: RuntimeError"}
            text = state.metrics.render().decode()
            assert 'modelops_gateway_requests_total{code="500",deployment="",model="m"} 1.0' in text
            assert state.auth.quotas.total_in_flight == 0  # its lease was given back too

    run(scenario())


def test_pinned_requests_are_left_out_of_the_series_rollouts_judge(
        config: GatewayConfig, keys: dict[str, str], tmp_path: Path) -> None:
    write_routes(Path(config.routes_uri), "m", {"m--v1": 50, "m--v2": 50}, revision=2)

    async def scenario() -> None:
        async with gateway(config) as gw:
            await asyncio.sleep(0.3)  # the split is polled in
            for i in range(4):  # pinned: a client chose its deployment
                r = await gw.post("/v2/models/m/infer", json=INFER, headers={**bearer(keys["all"]),
                                                                               "X-Session-Id": f"s{i}"})
                assert r.status_code == 200
            for _ in range(6):  # placed by the weights
                assert (await gw.post("/v2/models/m/infer", json=INFER, headers=bearer(keys["all"]))).status_code == 200
            text = gw.app.state.gateway.metrics.render().decode()

        def total(name: str) -> float:
            return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith(name + "{") and 'model="m"' in line and 'code="200"' in line)

        assert total("modelops_gateway_requests_total") == 10
        assert total("modelops_gateway_weighted_requests_total") == 6

    run(scenario())
