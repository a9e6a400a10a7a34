"""Fuzzing the webhook receiver and the serving gateway from their OpenAPI schemas (schemathesis): no 5xx.

The receiver's schema is the one its FastAPI app serves (``/modelops/openapi.json`` on Airflow's API server);
every generated body is sent twice: as generated (unsigned: 401) and correctly signed with the stack's secret
(so the parsing and mapping past the signature are fuzzed too). The gateway serves no schema: tests/chaos/data
holds one for its KServe v2 and OpenAI routes (checked against the app's routes below); it is fuzzed with a key
for everything, every other case against a real loaded deployment (``y = x + 1``), the others unknown models. Bounded: at most
``MAX_EXAMPLES`` per operation (valid and invalid inputs: schemathesis' positive and negative modes), no shrinking.
Each operation is driven through schemathesis' Python API and hypothesis (its pytest plugin's lazy fixture
schemas fail on pytest 9: ``Function`` has no ``_nodeid``).
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings

from modelops.local.webhook_cli import RECEIVER_PATH
from tests.chaos.conftest import raw_post

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

MAX_EXAMPLES = 40
GATEWAY_SCHEMA = Path(__file__).parent / "data" / "gateway_openapi.json"
BOUNDED = settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
                   suppress_health_check=list(HealthCheck))
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fuzz(schema, send) -> dict[str, int]:
    """Run ``send(case)`` (which returns the status) on generated cases of every operation of ``schema``;
    examples tried per operation (the statuses seen are printed)."""
    tried: dict[str, int] = {}
    statuses: dict[str, Counter] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        strategy = (operation.as_strategy(schemathesis.GenerationMode.POSITIVE)
                    | operation.as_strategy(schemathesis.GenerationMode.NEGATIVE))
        label = operation.label
        tried[label] = 0

        @given(case=strategy)
        @BOUNDED
        def run(case) -> None:
            tried[case.operation.label] += 1
            statuses.setdefault(case.operation.label, Counter())[send(case)] += 1

        run()
    print("\nfuzzed: " + "; ".join(f"{label}: {dict(seen)}" for label, seen in statuses.items()))
    return tried


def _no_5xx(status: int, what: str, answer: bytes | str) -> None:
    text = answer.decode("utf-8", "replace") if isinstance(answer, bytes) else answer
    assert status < 500, f"{what} -> {status}: {text[:300]}"


# -- the webhook receiver ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def webhook_api(stack):
    base = f"{stack['airflow']['url'].rstrip('/')}{RECEIVER_PATH.rsplit('/mlflow/', 1)[0]}"
    with _OPENER.open(f"{base}/openapi.json", timeout=30) as resp:
        raw = json.loads(resp.read())
    schema = schemathesis.openapi.from_dict(raw)
    schema.config.base_url = base
    return schema


def test_webhook_fuzz_no_5xx(webhook_api, stack, webhook_secret):
    from modelops.triggers.signature import sign

    receiver = f"{stack['airflow']['url'].rstrip('/')}{RECEIVER_PATH}"

    def send(case) -> int:
        response = case.call(timeout=30)
        _no_5xx(response.status_code, f"{case.method} {case.formatted_path} (unsigned)", response.text)
        if case.method != "POST":
            return response.status_code
        assert response.status_code in (400, 401, 413, 422), response.text  # never processed unsigned
        body = case.body if isinstance(case.body, bytes) else json.dumps(case.body).encode()
        delivery, stamp = f"fuzz-{uuid.uuid4()}", str(int(time.time()))
        status, answer = raw_post(receiver, body, {
            "Content-Type": "application/json", "X-MLflow-Delivery-Id": delivery, "X-MLflow-Timestamp": stamp,
            "X-MLflow-Signature": sign(webhook_secret, delivery, stamp, body)})
        _no_5xx(status, f"signed POST {RECEIVER_PATH} {body[:200]!r}", answer)
        return status

    tried = fuzz(webhook_api, send)
    assert set(tried) == {"GET /health", "POST /mlflow/webhook"} and tried["POST /mlflow/webhook"] >= 20


# -- the serving gateway ----------------------------------------------------------------------------
def test_gateway_schema_covers_the_apps_routes():
    """The hand-written schema names every route the gateway serves (the /v1 catch-all aside), and no other."""
    from starlette.routing import Route

    from modelops.serving.gateway.app import create_app
    from modelops.serving.gateway.config import GatewayConfig

    raw = json.loads(GATEWAY_SCHEMA.read_text())
    app = create_app(GatewayConfig.from_settings(), storage=object())  # routes only: nothing is started
    served = {(r.path.replace(":path}", "}"), m.lower()) for r in app.routes if isinstance(r, Route)
              for m in (r.methods or ()) if m != "HEAD" and r.path != "/v1/{path:path}"}
    documented = {(path, method) for path, ops in raw["paths"].items() for method in ops}
    assert documented == served


@pytest.fixture(scope="module")
def gateway_target(stack, settings, storage, triton, publish_plus_k):
    """A model routed to one loaded ``y = x + 1`` deployment, and a key for every model."""
    import httpx

    from modelops.serving.deploy import deploy
    from modelops.serving.gateway.keys import KeyStore

    model = f"chaos_fuzz_{uuid.uuid4().hex[:6]}"
    dep = publish_plus_k(model, f"{model}--v1-ort_fp32", 1.0)
    deploy(triton, storage, settings.triton_bucket, model, dep["deployment"], **dep["deploy_kwargs"])
    _, key = KeyStore(stack["gateway"]["keys_db"]).create(f"chaos-fuzz-{uuid.uuid4().hex[:6]}", "*")
    headers = {"Authorization": f"Bearer {key}"}
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0, 1, 2, 3]}]}
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=stack["gateway"]["url"], trust_env=False, timeout=30) as client:
        while client.post(f"/v2/models/{model}/infer", json=body, headers=headers).status_code != 200:
            assert time.monotonic() < deadline, "the fuzz target model is not served"
            time.sleep(0.2)
    yield {"model": model, "headers": headers, "url": stack["gateway"]["url"]}
    triton.unload_model(dep["deployment"])


@pytest.fixture(scope="module")
def gateway_api(gateway_target):
    schema = schemathesis.openapi.from_dict(json.loads(GATEWAY_SCHEMA.read_text()))
    schema.config.base_url = gateway_target["url"]
    return schema


def test_gateway_fuzz_no_5xx(gateway_api, gateway_target):
    sent = Counter()

    def send(case) -> int:
        sent[case.operation.label] += 1
        if sent[case.operation.label] % 2:  # every other case names the routed model (in the path, in the body)
            if "model" in (case.path_parameters or {}):
                case.path_parameters = {**case.path_parameters, "model": gateway_target["model"]}
            elif isinstance(case.body, dict) and "model" in case.body:
                case.body = {**case.body, "model": gateway_target["model"]}
        response = case.call(headers=gateway_target["headers"], timeout=30)
        _no_5xx(response.status_code, f"{case.method} {case.formatted_path} {str(case.body)[:200]}", response.text)
        if response.status_code >= 400:
            error = response.json()  # a JSON error, OpenAI's shape on /v1
            assert "error" in error, response.text
            if case.path.startswith("/v1"):
                assert {"message", "type"} <= set(error["error"]), f"{response.request.url}: {response.text}"
        return response.status_code

    tried = fuzz(gateway_api, send)
    assert len(tried) == 10
    assert min(n for label, n in tried.items() if "{model}" in label or label.startswith("POST")) >= 20


def test_an_unroutable_v1_path_gets_openais_error_shape():
    """Found by the fuzz run: a newline in a /v1 path matches no route (Starlette's patterns stop at it), and the
    404 was ``{"error": "Not Found"}`` instead of OpenAI's shape."""
    from starlette.testclient import TestClient

    from modelops.serving.gateway.app import create_app
    from modelops.serving.gateway.config import GatewayConfig

    client = TestClient(create_app(GatewayConfig.from_settings(), storage=object()))  # no lifespan: routing only
    response = client.get("/v1/models/a%0Ab")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_url" and response.json()["error"]["type"]
