"""Triton killed (SIGKILL) while the pipeline's deploy function loads a new deployment.

A model is served by ``v1`` (``y = x + 1``) through the gateway; deploying ``v2`` (``y = x + 2``) starts, and
tritonserver is killed 0.2 s after the load request went out (the server process only, as the OOM killer would:
its python-backend stubs outlive it, holding its accepted connections, so the load request gets no answer until
the client's timeout). Lost: nothing (the routes still name ``v1`` only, same revision; ``stack up`` stops the dead
server's stubs and restarts Triton, and the gateway serves ``v1`` again); what the operator sees: a one-line
``DeployError`` naming the deployment and Triton; a retry of the same deploy succeeds and ``v2`` is served.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import numpy as np
import psutil
import pytest

from modelops import process_tree

pytestmark = [pytest.mark.chaos, pytest.mark.integration]


class KillDuringLoad:
    """The Triton client, except that ``load_model`` kills Triton ``delay_s`` after sending the request."""

    def __init__(self, client, pid: int, delay_s: float = 0.2) -> None:
        self._client, self._pid, self._delay_s = client, pid, delay_s
        self.killed = threading.Event()

    def __getattr__(self, name):
        return getattr(self._client, name)

    def load_model(self, *args, **kwargs):
        def kill() -> None:
            os.kill(self._pid, signal.SIGKILL)
            self.killed.set()

        threading.Timer(self._delay_s, kill).start()
        return self._client.load_model(*args, **kwargs)


def _infer(url: str, key: str, model: str, x: np.ndarray):
    import httpx

    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    return httpx.post(f"{url}/v2/models/{model}/infer", json=body, trust_env=False, timeout=30,
                      headers={"Authorization": f"Bearer {key}"})


def _served(url: str, key: str, model: str, x: np.ndarray, timeout_s: float) -> tuple[int, np.ndarray | None, str]:
    """Poll until the gateway answers 200: (status, output or None, deployment header)."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = _infer(url, key, model, x)
        if response.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    if response.status_code != 200:
        return response.status_code, None, response.text
    out = response.json()["outputs"][0]
    return 200, np.asarray(out["data"], dtype=np.float32).reshape(out["shape"]), response.headers["x-modelops-deployment"]


@pytest.fixture(scope="module")
def killed_deploy(stack, settings, storage, triton, publish_plus_k):
    from modelops.local import stack as stack_mod
    from modelops.serving.deploy import DeployError, deploy
    from modelops.serving.gateway.keys import KeyStore
    from modelops.serving.routes import read_routes

    model = f"chaos_kill_{uuid.uuid4().hex[:6]}"
    v1 = publish_plus_k(model, f"{model}--v1-ort_fp32", 1.0)
    v2 = publish_plus_k(model, f"{model}--v2-ort_fp32", 2.0)
    deploy(triton, storage, settings.triton_bucket, model, v1["deployment"], **v1["deploy_kwargs"])
    _, key = KeyStore(stack["gateway"]["keys_db"]).create(f"chaos-kill-{uuid.uuid4().hex[:6]}", model)
    url, x = stack["gateway"]["url"], v1["x"]
    assert _served(url, key, model, x, 10)[0] == 200
    routes_before = read_routes(storage, settings.triton_bucket, model)

    import tritonclient.http as httpclient

    from modelops.serving.triton.admin import with_admin

    now = stack_mod.status()  # this Triton start's pid and admin token (an earlier test may have restarted it)
    pid = now["triton"]["pid"]
    # The pipeline's client waits up to 120 s for an answer; 15 s (a load here takes ~2 s) keeps the test short.
    short = httpclient.InferenceServerClient(stack["triton"]["http"].removeprefix("http://"), network_timeout=15.0,
                                             connection_timeout=5.0)
    chaotic = KillDuringLoad(with_admin(short, now["triton"]["admin_header"], now["triton"]["admin_token"]), pid)
    error: BaseException | None = None
    try:
        deploy(chaotic, storage, settings.triton_bucket, model, v2["deployment"], **v2["deploy_kwargs"])
    except BaseException as exc:  # noqa: BLE001 - what the run would fail with, asserted below
        error = exc
    assert chaotic.killed.wait(10)
    routes_after_failure = read_routes(storage, settings.triton_bucket, model)
    while stack_mod.status()["triton"]["running"]:
        time.sleep(0.2)
    orphans = process_tree.group_members(pid)  # the dead server's stubs, still alive

    started = time.monotonic()
    stack_mod.up()  # stops the leftovers, restarts Triton; the reconciler loads what the routes name
    orphans_after_up = [p for p in orphans if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    after_restart = _served(url, key, model, x, 90)
    restart_s = time.monotonic() - started
    retry = deploy(triton, storage, settings.triton_bucket, model, v2["deployment"], **v2["deploy_kwargs"])
    after_retry = _served(url, key, model, x, 10)
    print(f"\ntriton killed during deploy: {type(error).__name__}: {error}; served again {restart_s:.0f} s after "
          f"stack up; retry routes {retry['routes']}")
    return {"v1": v1, "v2": v2, "error": error, "DeployError": DeployError, "before": routes_before,
            "after_failure": routes_after_failure, "orphans": orphans,
            "orphans_after_up": orphans_after_up, "after_restart": after_restart,
            "retry": retry, "after_retry": after_retry, "x": x}


def test_the_deploy_fails_in_one_line_naming_triton(killed_deploy):
    error = killed_deploy["error"]
    assert isinstance(error, killed_deploy["DeployError"]), repr(error)
    message = str(error)
    assert "\n" not in message and killed_deploy["v2"]["deployment"] in message and "Triton" in message, message
    assert "routes unchanged" in message


def test_serving_is_untouched(killed_deploy):
    before, after = killed_deploy["before"], killed_deploy["after_failure"]
    assert after.weights() == before.weights() == {killed_deploy["v1"]["deployment"]: 100}
    assert after.revision == before.revision
    assert killed_deploy["orphans_after_up"] == [], f"stubs of the killed Triton {killed_deploy['orphans']} survived"
    status, out, served_by = killed_deploy["after_restart"]
    assert status == 200, served_by
    assert served_by == killed_deploy["v1"]["deployment"]
    np.testing.assert_array_equal(out, killed_deploy["x"] + 1)


def test_a_retry_succeeds(killed_deploy):
    assert killed_deploy["retry"]["routes"] == {killed_deploy["v2"]["deployment"]: 100}
    status, out, served_by = killed_deploy["after_retry"]
    assert status == 200 and served_by == killed_deploy["v2"]["deployment"]
    np.testing.assert_array_equal(out, killed_deploy["x"] + 2)
