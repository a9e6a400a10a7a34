"""The serving gateway on the real stack (issue 9): keys, errors, weighted routing, hot reload, Triton restart.

Two tiny deployments of one model (``y = x + 1`` and ``y = x + 2`` in ONNX Runtime) are published and routed
70/30 by the pipeline's own deploy function, so no DAG run is needed: the answer's values and its
``X-ModelOps-Deployment`` header both tell which deployment served a request.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
import uuid
from urllib.parse import urlsplit

import numpy as np
import pytest

pytestmark = pytest.mark.integration

DEPLOYMENT_HEADER = "x-modelops-deployment"


def _body(x: np.ndarray, dtype: str = "FP32") -> dict:
    return {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": dtype, "data": x.ravel().tolist()}]}


def _output(response) -> np.ndarray:
    out = response.json()["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


@pytest.fixture(scope="module")
def gw(stack, settings, storage, triton, publish_plus_k):
    """Model routed 70/30 to two loaded deployments; a ``*`` key, a narrow key and an httpx client."""
    import httpx

    from modelops.serving.deploy import deploy
    from modelops.serving.gateway.keys import KeyStore

    model = f"it_gw_{uuid.uuid4().hex[:6]}"
    v1 = publish_plus_k(model, f"{model}--v1-ort_fp32", 1.0)
    v2 = publish_plus_k(model, f"{model}--v2-ort_fp32", 2.0)
    deploy(triton, storage, settings.triton_bucket, model, v1["deployment"], **v1["deploy_kwargs"])
    out = deploy(triton, storage, settings.triton_bucket, model, v2["deployment"], rollout_percent=30,
                 **v2["deploy_kwargs"])
    assert out["routes"] == {v1["deployment"]: 70, v2["deployment"]: 30}
    keys = KeyStore(stack["gateway"]["keys_db"])
    _, star = keys.create(f"it-star-{uuid.uuid4().hex[:6]}", "*")
    _, narrow = keys.create(f"it-narrow-{uuid.uuid4().hex[:6]}", f"{model}")
    _, other = keys.create(f"it-other-{uuid.uuid4().hex[:6]}", "someone_else*")
    client = httpx.Client(base_url=stack["gateway"]["url"], trust_env=False, timeout=30.0)
    info = {"model": model, "v1": v1["deployment"], "v2": v2["deployment"], "x": v1["x"], "keys": keys,
            "star": star, "narrow": narrow, "other": other, "client": client}
    _wait_served(info, star)
    yield info
    client.close()


def _infer(gw: dict, key: str | None, model: str | None = None, **kwargs):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if "content" not in kwargs:
        kwargs["json"] = kwargs.pop("body", _body(gw["x"]))
    return gw["client"].post(f"/v2/models/{model or gw['model']}/infer", headers=headers, **kwargs)


def _wait_served(gw: dict, key: str, model: str | None = None, timeout_s: float = 5.0):
    """The gateway polls routes every 0.5 s: wait for a first 200 (or the last answer at the deadline)."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = _infer(gw, key, model)
        if response.status_code == 200 or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def test_status_names_the_gateway(stack):
    from modelops.local import stack as stack_mod

    info = stack_mod.status()["gateway"]
    offset = int(os.environ["MODELOPS_PORT_OFFSET"])
    assert info["url"] == f"http://127.0.0.1:{9000 + offset}" and info["port"] == 9000 + offset
    assert info["metrics"] == f"{info['url']}/metrics"
    assert info["running"] and info["state"] == "running" and info["pid"] > 0
    assert info["log"].endswith("logs/gateway.log")


def test_inference_through_the_gateway_answers_like_triton(gw, stack):
    import httpx

    response = _infer(gw, gw["star"])
    assert response.status_code == 200, response.text
    deployment = response.headers[DEPLOYMENT_HEADER]
    assert deployment in (gw["v1"], gw["v2"])
    direct = httpx.post(f"{stack['triton']['http']}/v2/models/{deployment}/infer", json=_body(gw["x"]), timeout=30)
    assert direct.status_code == 200
    np.testing.assert_array_equal(_output(response), _output(direct))
    np.testing.assert_array_equal(_output(response), gw["x"] + (1 if deployment == gw["v1"] else 2))
    assert _infer(gw, gw["narrow"]).status_code == 200, "a key granted the model by name"
    meta = gw["client"].get(f"/v2/models/{gw['model']}", headers={"Authorization": f"Bearer {gw['star']}"})
    assert meta.status_code == 200 and meta.json()["name"] == meta.headers[DEPLOYMENT_HEADER]


def _error(response, status: int, *fragments: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"} and body["error"], body
    for fragment in fragments:
        assert fragment in body["error"], body


def test_every_client_error_has_its_status_and_a_json_body(gw, stack):
    model, star, narrow, other = gw["model"], gw["star"], gw["narrow"], gw["other"]
    _error(_infer(gw, None), 401, "missing API key")
    _error(_infer(gw, "not-a-key"), 401, "invalid API key")
    _error(_infer(gw, "mo_0123456789ab_" + "A" * 43), 401, "invalid or revoked")
    _error(_infer(gw, other), 403, "not granted", model)
    _error(_infer(gw, star, model="no_such_model_xyz"), 404, "unknown model")
    _error(_infer(gw, narrow, model="no_such_model_xyz"), 403, "not granted")  # a narrow key cannot probe
    _error(_infer(gw, other, model="no_such_model_xyz"), 403, "not granted")
    malformed = gw["client"].post(f"/v2/models/{model}/infer", content=b'{"inputs": [',
                                  headers={"Authorization": f"Bearer {star}", "Content-Type": "application/json"})
    _error(malformed, 400, "malformed JSON")
    wrong_shape = np.zeros((2, 5), dtype=np.float32)
    _error(_infer(gw, star, body=_body(wrong_shape)), 400, "shape")
    _error(_infer(gw, star, body=_body(gw["x"].astype(np.int32), dtype="INT32")), 400, "INT32", "expects 'FP32'")
    unparsable = _body(gw["x"] + 0.5, dtype="INT32")  # Triton answers this one with 500; the gateway with 400
    _error(_infer(gw, star, body=unparsable), 400, "Unable to parse 'data'")

    # 413 from Content-Length alone: the gateway answers before a byte of the body is sent
    url = urlsplit(stack["gateway"]["url"])
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        conn.putrequest("POST", f"/v2/models/{model}/infer")
        conn.putheader("Authorization", f"Bearer {star}")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(17 * 1024 * 1024))
        conn.endheaders()
        answer = conn.getresponse()
        assert answer.status == 413
        assert "over the gateway's limit" in json.loads(answer.read())["error"]
    finally:
        conn.close()


def test_hostile_bodies_are_refused_and_triton_still_serves(gw):
    """A gzip bomb (64 MiB of zeros in 64 KiB) is 413 after 16 MiB inflated, a 10k-deep JSON 400, an unknown
    encoding 415; Triton answers the next request as before."""
    import gzip

    def post(content: bytes, **headers: str):
        return gw["client"].post(f"/v2/models/{gw['model']}/infer", content=content, headers={
            "Authorization": f"Bearer {gw['star']}", "Content-Type": "application/json", **headers})

    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < 128 * 1024
    _error(post(bomb, **{"Content-Encoding": "gzip"}), 413, "after decompression")
    _error(post(b"[" * 10_000 + b"]" * 10_000), 400, "nested deeper")
    _error(post(b"x", **{"Content-Encoding": "br"}), 415, "'br' is not supported")
    served = post(gzip.compress(json.dumps(_body(gw["x"])).encode()), **{"Content-Encoding": "gzip"})
    assert served.status_code == 200 and served.json()["outputs"]


def test_key_limits_on_the_real_gateway(gw):
    """A key over its rate gets 429 with Retry-After, an expired key 401 naming the expiry, and the usage of a key
    shows in the store within a few seconds."""
    from datetime import UTC, datetime, timedelta

    keys = gw["keys"]
    _, limited = keys.create(f"it-rate-{uuid.uuid4().hex[:6]}", gw["model"], rate_limit=1.0)
    assert _wait_served(gw, limited).status_code == 200
    refused = _infer(gw, limited)
    _error(refused, 429, "over its rate limit of 1 request(s)/s")
    assert int(refused.headers["retry-after"]) >= 1
    time.sleep(int(refused.headers["retry-after"]))
    assert _infer(gw, limited).status_code == 200
    record, short = keys.create(f"it-exp-{uuid.uuid4().hex[:6]}", gw["model"],
                                expires_at=datetime.now(UTC) + timedelta(seconds=2))
    assert _wait_served(gw, short).status_code == 200
    time.sleep(2.2)
    _error(_infer(gw, short), 401, f"expired at {record.expires_at}")
    deadline = time.monotonic() + 15
    while not (used := next(k for k in keys.list() if k.name == record.name)).requests and time.monotonic() < deadline:
        time.sleep(0.5)
    assert used.requests >= 1 and used.last_used_at


def test_a_model_routed_to_a_deployment_triton_does_not_serve_is_503(gw, settings, storage):
    from modelops.serving.routes import read_routes, write_routes
    from modelops.storage import parse_s3_uri

    model = f"it_gw_gone_{uuid.uuid4().hex[:6]}"
    current = read_routes(storage, settings.triton_bucket, model)
    write_routes(storage, settings.triton_bucket, current, {f"{model}--v9-ort_fp32": 100}, by="test")
    try:
        deadline = time.monotonic() + 2.5
        while (response := _infer(gw, gw["star"], model=model)).status_code == 404 and time.monotonic() < deadline:
            time.sleep(0.1)
        _error(response, 503, "not ready")
        assert response.headers[DEPLOYMENT_HEADER] == f"{model}--v9-ort_fp32"
    finally:  # a routes file nobody can serve would make every later reconcile try to load it
        bucket, key = parse_s3_uri(f"s3://{settings.triton_bucket}/routes/{model}.json")
        storage.client.delete_object(Bucket=bucket, Key=key)


def test_weights_70_30_over_2000_requests(gw):
    counts = {gw["v1"]: 0, gw["v2"]: 0}
    for _ in range(2000):
        response = _infer(gw, gw["star"])
        assert response.status_code == 200, response.text
        counts[response.headers[DEPLOYMENT_HEADER]] += 1
    share = counts[gw["v2"]] / 2000
    assert abs(share - 0.30) <= 0.04, counts


def test_routes_change_is_served_within_2_s_without_a_failed_request(gw, settings, storage):
    from modelops.serving.routes import read_routes, write_routes

    seen: list[tuple[float, int, str]] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            started = time.monotonic()
            response = _infer(gw, gw["star"])
            seen.append((started, response.status_code, response.headers.get(DEPLOYMENT_HEADER, "")))

    worker = threading.Thread(target=loop)
    worker.start()
    try:
        time.sleep(0.5)
        current = read_routes(storage, settings.triton_bucket, gw["model"])
        written = time.monotonic()
        write_routes(storage, settings.triton_bucket, current, {gw["v2"]: 100}, by="test-switch")
        time.sleep(3.0)
    finally:
        stop.set()
        worker.join(30)
    assert all(code == 200 for _, code, _ in seen), {code for _, code, _ in seen}
    last_v1 = max((t for t, _, d in seen if d == gw["v1"]), default=written)
    assert last_v1 - written <= 2.0, f"v1 still answered {last_v1 - written:.2f} s after the switch"
    assert [d for t, _, d in seen if t > written + 2.0] and all(d == gw["v2"] for t, _, d in seen if t > last_v1)
    assert len(seen) > 50, "the client loop kept going through the switch"


def test_a_revoked_key_is_refused_within_2_s(gw):
    name = f"it-revoke-{uuid.uuid4().hex[:6]}"
    _, key = gw["keys"].create(name, gw["model"])
    assert _wait_served(gw, key).status_code == 200
    gw["keys"].revoke(name)
    revoked = time.monotonic()
    while (response := _infer(gw, key)).status_code == 200 and time.monotonic() - revoked < 5:
        time.sleep(0.05)
    took = time.monotonic() - revoked
    _error(response, 401, "invalid or revoked")
    assert took <= 2.0, f"a revoked key still worked {took:.2f} s later"


def test_metrics_count_requests_by_model_deployment_and_code(gw):
    text = gw["client"].get("/metrics").text
    ok = [line for line in text.splitlines() if line.startswith("modelops_gateway_requests_total{")
          and f'model="{gw["model"]}"' in line and 'code="200"' in line]
    assert {gw["v1"], gw["v2"]} <= {d for line in ok for d in (gw["v1"], gw["v2"]) if f'deployment="{d}"' in line}
    assert sum(float(line.rsplit(" ", 1)[1]) for line in ok) >= 2000
    assert any('code="401"' in line for line in text.splitlines() if line.startswith("modelops_gateway_requests_total"))
    assert "modelops_gateway_request_duration_seconds_bucket" in text and "modelops_gateway_in_flight" in text
    assert f'modelops_gateway_routes_revision{{model="{gw["model"]}"}}' in text


def test_10k_random_keys_then_a_valid_key_is_still_served(gw):
    """A client spraying 10,000 random (well-formed) keys: past its burst of failed lookups it gets 429 before any
    key-store lookup, never a 5xx; a valid key, cached before the spray, is served right after it."""
    import asyncio
    import secrets
    from collections import Counter

    import httpx

    assert _infer(gw, gw["star"]).status_code == 200  # in the key cache now
    codes: Counter[int] = Counter()

    async def spray() -> None:
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        async with httpx.AsyncClient(base_url=str(gw["client"].base_url), trust_env=False, timeout=30,
                                     limits=limits) as client:  # fmt: skip
            gate = asyncio.Semaphore(32)

            async def one() -> None:
                key = f"mo_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"
                async with gate:
                    response = await client.post(f"/v2/models/{gw['model']}/infer", json=_body(gw["x"]),
                                                 headers={"Authorization": f"Bearer {key}"})  # fmt: skip
                codes[response.status_code] += 1

            await asyncio.gather(*(one() for _ in range(10_000)))

    asyncio.run(spray())
    assert set(codes) <= {401, 429} and codes[429] >= 9_000, codes
    served = _infer(gw, gw["star"])
    assert served.status_code == 200 and served.headers[DEPLOYMENT_HEADER] in (gw["v1"], gw["v2"])
    time.sleep(4.5)  # this address's failed-lookup budget refills (burst 20 at 5/s) before the next test


def test_killed_triton_serves_through_the_gateway_again_after_stack_up(gw):
    """kill -9 Triton; `stack up` restarts it, reconciles the routes, and the gateway (left alone) serves again."""
    from modelops.local import stack as stack_mod

    before = stack_mod.status()
    os.kill(before["triton"]["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while stack_mod.status()["triton"]["running"] and time.monotonic() < deadline:
        time.sleep(0.2)
    _error(_infer(gw, gw["star"]), 503)  # Triton gone: the gateway says so, it does not hang or crash
    started = time.monotonic()
    after = stack_mod.up()
    response = _wait_served(gw, gw["star"], timeout_s=max(1.0, 60 - (time.monotonic() - started)))
    took = time.monotonic() - started
    assert response.status_code == 200, (took, response.text)
    assert took <= 60
    assert response.headers[DEPLOYMENT_HEADER] == gw["v2"]  # the routes as the previous test left them
    np.testing.assert_array_equal(_output(response), gw["x"] + 2)
    assert after["triton"]["pid"] != before["triton"]["pid"]
    assert after["gateway"]["pid"] == before["gateway"]["pid"], "a running gateway is left alone"
