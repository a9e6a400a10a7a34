"""Prometheus and the reconciler of the real stack (issue 10.1): the scrape targets, the gateway's series through
PromQL, and a routed deployment unloaded by hand coming back without ``stack up``."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

pytestmark = pytest.mark.integration


def _get(url: str, **params):
    import httpx

    return httpx.get(url, params=params, timeout=10.0, trust_env=False)


def _query(prom: str, promql: str) -> float | None:
    body = _get(f"{prom}/api/v1/query", query=promql).json()
    assert body["status"] == "success", body
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def _until(check, timeout_s: float, interval_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval_s)


@pytest.fixture(scope="module")
def routed(stack, settings, storage, triton, publish_plus_k):
    """A plus-one deployment routed at 100 %, a key for it and an httpx client on the gateway."""
    import httpx

    from modelops.serving.deploy import deploy
    from modelops.serving.gateway.keys import KeyStore

    model = f"it_prom_{uuid.uuid4().hex[:6]}"
    v1 = publish_plus_k(model, f"{model}--v1-ort_fp32", 1.0)
    deploy(triton, storage, settings.triton_bucket, model, v1["deployment"], **v1["deploy_kwargs"])
    _, key = KeyStore(stack["gateway"]["keys_db"]).create(f"it-prom-{uuid.uuid4().hex[:6]}", model)
    client = httpx.Client(base_url=stack["gateway"]["url"], trust_env=False, timeout=30.0,
                          headers={"Authorization": f"Bearer {key}"})
    yield {"model": model, "deployment": v1["deployment"], "x": v1["x"], "client": client}
    client.close()


def _infer(routed: dict):
    x = routed["x"]
    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    return routed["client"].post(f"/v2/models/{routed['model']}/infer", json=body)


def test_prometheus_is_ready_and_scrapes_triton_and_the_gateway(stack):
    prom = stack["prometheus"]["url"]
    assert stack["prometheus"]["running"] and stack["prometheus"]["state"] == "running"
    assert _get(f"{prom}/-/ready").status_code == 200

    def targets() -> dict[str, str]:
        active = _get(f"{prom}/api/v1/targets").json()["data"]["activeTargets"]
        return {t["labels"]["job"]: t["health"] for t in active}

    assert _until(lambda: targets() == {"triton": "up", "gateway": "up"}, 30), targets()
    assert targets() == {"triton": "up", "gateway": "up"}
    assert _query(prom, 'up{job="triton"}') == 1.0 and _query(prom, 'up{job="gateway"}') == 1.0
    # Triton's own series are there too (its metrics port is scraped, not only probed)
    assert _until(lambda: _query(prom, "count(nv_pinned_memory_pool_total_bytes)"), 30) == 1.0


def test_gateway_requests_are_visible_through_promql(stack, routed):
    prom, model, deployment = stack["prometheus"]["url"], routed["model"], routed["deployment"]
    # the gateway polls the routes every 0.5 s: until it has read them the model is unknown to it (403)
    first = _until(lambda: _infer(routed).status_code == 200, 10, 0.1)
    assert first, _infer(routed).text
    for _ in range(4):
        response = _infer(routed)
        assert response.status_code == 200, response.text
    np.testing.assert_allclose(np.asarray(response.json()["outputs"][0]["data"]).reshape(2, 4), routed["x"] + 1)
    total = f'sum(modelops_gateway_requests_total{{model="{model}",deployment="{deployment}",code="200"}})'
    assert _until(lambda: (_query(prom, total) or 0) >= 5, 30), _query(prom, total)
    p99 = (f'histogram_quantile(0.99, sum by (le) (modelops_gateway_request_duration_seconds_bucket'
           f'{{model="{model}",deployment="{deployment}"}}))')
    seconds = _query(prom, p99)
    assert seconds is not None and 0 < seconds < 30
    revision = _query(prom, f'modelops_gateway_routes_revision{{model="{model}"}}')
    assert revision is not None and revision >= 1


def test_reconciler_reloads_a_routed_deployment_unloaded_by_hand(stack, routed, triton):
    """No `stack up`: the reconciler service notices within its interval and loads the deployment again."""
    deployment = routed["deployment"]
    info = stack["reconciler"]
    assert info["running"] and info["state"] == "running"
    import psutil

    argv = " ".join(psutil.Process(info["pid"]).cmdline())
    from modelops.local import stack as stack_mod

    assert stack_mod.status()["triton"]["admin_token"] not in argv, "the admin token never shows in ps"
    assert triton.is_model_ready(deployment)
    with open(info["log"], "rb") as fh:
        offset = fh.seek(0, 2)
    loaded = f"reconcile: {deployment} ({routed['model']}): loaded"

    def reloaded() -> bool:
        with open(info["log"], "rb") as fh:
            fh.seek(offset)
            return loaded in fh.read().decode(errors="replace") and triton.is_model_ready(deployment)

    started = time.monotonic()
    triton.unload_model(deployment)
    assert _until(reloaded, 3 * info["interval_s"] + 30), f"{deployment} not reloaded by the reconciler"
    assert time.monotonic() - started <= 3 * info["interval_s"] + 30
    assert _infer(routed).status_code == 200
