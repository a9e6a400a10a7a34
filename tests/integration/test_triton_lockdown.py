"""Triton locked down (issue 9.6) and the routes as desired state (9.7), on the real stack.

A tiny published deployment (``y = x + 1`` in ONNX Runtime, manifest and routes as the pipeline writes them)
keeps this fast: no DAG run is needed to show that model control needs the admin header and that a killed
Triton gets its routed deployments back from ``stack up`` alone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
X = np.arange(8, dtype=np.float32).reshape(2, 4)  # the inputs publish_plus_k smoke-tests with


def _http(method: str, url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, data=b"{}" if method == "POST" else None, method=method, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=120) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def published(publish_plus_k):
    """A published (manifest-verified) plus-one deployment, not loaded, with its smoke-test npz files."""
    model = f"it_lock_{uuid.uuid4().hex[:6]}"
    out = publish_plus_k(model, f"{model}--v1-ort_fp32", 1.0)
    kwargs = out["deploy_kwargs"]
    return {**out, "samples": kwargs["samples_uri"], "candidate": kwargs["candidate_outputs_uri"]}


def test_model_control_needs_the_admin_header_and_deploy_sends_it(stack, settings, storage, published):
    import tritonclient.http as httpclient

    from modelops.serving.deploy import DeployError, deploy
    from modelops.serving.routes import read_routes

    from modelops.local import stack as stack_mod

    info = stack_mod.status()["triton"]  # this Triton start's token (rotated whenever an earlier test restarted it)
    header, token = info["admin_header"], info["admin_token"]
    assert header == "X-ModelOps-Admin" and len(token) >= 40
    deployment, base = published["deployment"], info["http"]
    load, unload = f"{base}/v2/repository/models/{deployment}/load", f"{base}/v2/repository/models/{deployment}/unload"

    for url in (load, unload, f"{base}/v2/repository/index"):
        code, body = _http("POST", url)
        assert code == 403 and header in body, (url, code, body)
    assert _http("POST", load, {header: "wrong-token"})[0] == 403
    assert _http("GET", f"{base}/v2/models/{deployment}/ready")[0] != 200  # the refused load did nothing
    assert _http("GET", f"{base}/v2/health/ready")[0] == 200, "health stays open"

    assert _http("POST", load, {header: token}) == (200, "")
    assert _http("GET", f"{base}/v2/models/{deployment}/ready")[0] == 200
    assert _http("GET", f"{base}/v2/models/{deployment}")[0] == 200, "metadata stays open"
    assert _http("POST", unload, {header: token}) == (200, "")

    # the deploy step through a client without the header: refused, routes untouched, nothing loaded
    plain = httpclient.InferenceServerClient(base.removeprefix("http://"), network_timeout=120.0)
    kwargs = {"samples_uri": published["samples"], "candidate_outputs_uri": published["candidate"], "run_id": "t"}
    with pytest.raises(DeployError, match=r"refused to load .* \(403\).*admin header") as err:
        deploy(plain, storage, settings.triton_bucket, published["model"], deployment, **kwargs)
    assert token not in str(err.value)
    assert read_routes(storage, settings.triton_bucket, published["model"]).revision == 0
    # ... and through the pipeline's own client: TritonHook on the stack's triton_default connection
    from modelops_airflow.hooks import TritonHook

    out = deploy(TritonHook().get_client(), storage, settings.triton_bucket, published["model"], deployment, **kwargs)
    assert out["routes"] == {deployment: 100}
    np.testing.assert_array_equal(_infer(base, deployment), X + 1)


def _infer(base: str, deployment: str) -> np.ndarray:
    from modelops.serving.triton.client import http_client, infer

    client = http_client(base.removeprefix("http://"), 30.0)
    try:
        return infer(client, deployment, {"x": X}, ["y"])["y"]
    finally:
        client.close()


def _ready(base: str, deployment: str) -> bool:
    try:
        return _http("GET", f"{base}/v2/models/{deployment}/ready")[0] == 200
    except OSError:
        return False


def _local_copies(deployment: str) -> list[Path]:
    """Triton's local copies of ``deployment`` (TRITON_AWS_MOUNT_DIRECTORY: a folderXXXXXX per load)."""
    from modelops.local.stack.services import triton_mount_dir

    mount = triton_mount_dir(Path(os.environ["MODELOPS_STACK_DIR"]))
    return [p.parent for p in mount.glob("folder*/config.pbtxt") if f'"{deployment}"' in p.read_text()]


def test_killed_triton_serves_its_routed_deployments_again_after_stack_up(stack, published):
    """kill -9 Triton; `stack up` restarts it alone (the others keep their pids) and reloads what is routed."""
    from modelops.local import stack as stack_mod

    deployment, base = published["deployment"], stack["triton"]["http"]
    before = stack_mod.status()
    assert before["triton"]["running"] and _ready(base, deployment), "the previous test routed and loaded it"
    killed_copies = set(_local_copies(deployment))  # a reload in flight (the reconciler's) may hold a second one
    assert killed_copies, "Triton keeps its copy of the S3 model in the stack's mount directory"
    os.kill(before["triton"]["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while stack_mod.status()["triton"]["running"] and time.monotonic() < deadline:
        time.sleep(0.2)
    after_kill = stack_mod.status()
    assert after_kill["triton"]["state"] == "exited"

    started = time.monotonic()
    after = stack_mod.up()
    while not _ready(base, deployment) and time.monotonic() - started < 60:
        time.sleep(0.5)
    took = time.monotonic() - started
    assert _ready(base, deployment), f"{deployment} not ready {took:.0f} s after stack up"
    assert took <= 60
    np.testing.assert_array_equal(_infer(base, deployment), X + 1)
    copies = set(_local_copies(deployment))
    assert copies and not copies & killed_copies, "the killed Triton's copies were removed before the restart"
    assert after["triton"]["pid"] != before["triton"]["pid"]
    for name in ("s3", "mlflow", "airflow"):
        assert after[name]["pid"] == before[name]["pid"], f"{name} was running and must have been left alone"
    # a new admin token for the new Triton: the old one (say, read off the dead one's command line) opens nothing
    old, new = before["triton"]["admin_token"], after["triton"]["admin_token"]
    assert new != old and Path(after["triton"]["admin_token_file"]).read_text().strip() == new
    index = f"{base}/v2/repository/index"
    assert _http("POST", index, {"X-ModelOps-Admin": old})[0] == 403
    assert _http("POST", index, {"X-ModelOps-Admin": new})[0] == 200
    # the reconciler (which loaded it back above) and Airflow's triton_default follow the file, with no restart
    from modelops_airflow.hooks import TritonHook

    assert TritonHook().admin() == ("X-ModelOps-Admin", new)


def test_the_admin_token_is_on_no_command_line_but_tritons(stack):
    """Every process of this machine: the token shows only in tritonserver's argv (Triton takes it nowhere else;
    what that leaves visible is in docs/operations.md), never in a service's environment given on its command line."""
    import psutil

    from modelops.local import stack as stack_mod

    token = stack_mod.status()["triton"]["admin_token"]
    holders = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        if token in " ".join(proc.info["cmdline"] or ()):
            holders.append(proc.info["name"])
    assert holders == ["tritonserver"]


def test_reconcile_cli_is_idempotent_and_loads_what_is_missing(stack, published):
    info = stack["triton"]
    deployment, base = published["deployment"], info["http"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "modelops.local.cli", "serving", "reconcile", "--json"]

    def run() -> dict[str, str]:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        token = stack_mod.status()["triton"]["admin_token"]
        assert token not in proc.stdout + proc.stderr, "the token is never printed"
        return {a["deployment"]: a["action"] for a in json.loads(proc.stdout)}

    from modelops.local import stack as stack_mod

    assert run()[deployment] == "ready"  # loaded: left alone
    stack_mod.down(services=["reconciler"])  # the stack's own watcher would reload it first
    try:
        current = stack_mod.status()["triton"]  # rotated by the restart of the test above
        admin = {current["admin_header"]: current["admin_token"]}
        assert _http("POST", f"{base}/v2/repository/models/{deployment}/unload", admin)[0] == 200
        deadline = time.monotonic() + 30
        while _ready(base, deployment) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert run()[deployment] == "loaded"
        assert _ready(base, deployment)
    finally:
        stack_mod.up(services=["reconciler"])
