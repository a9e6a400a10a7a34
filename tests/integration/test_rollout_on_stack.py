"""Progressive rollout on the real stack: rollout_model / rollback_model DAGs in Airflow, the gateway,
Prometheus and Triton, with synthetic deployments (``y = x + k``; a failing or a slow canary) under load.

Each test routes a fresh model 100% to a stable deployment, starts steady load through the gateway (values
above the synthetic trigger, so a bad canary misbehaves on every request it gets), runs a DAG and checks the
routes, the rollout state, Triton and the load's answers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Self

import pytest

from modelops.local.synthetic import publish_synthetic, request_body

INTERVAL_S = 12  # short steps for the promotions
BAD_INTERVAL_S = 30  # a bad canary must be rolled back within one interval of its step, not at its end


class Load:
    """``threads`` closed-loop clients through the gateway; counts status codes and answering deployments."""

    def __init__(self, url: str, key: str, model: str, threads: int = 4):
        self.url = f"{url}/v2/models/{model}/infer"
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.codes: Counter[int] = Counter()
        self.answered_by: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self) -> None:
        import httpx

        body = request_body(20.0)
        with httpx.Client(trust_env=False, timeout=30) as client:
            while not self._stop.is_set():
                try:
                    response = client.post(self.url, content=body, headers=self.headers)
                    self.codes[response.status_code] += 1
                    self.answered_by[response.headers.get("x-modelops-deployment", "")] += 1
                    if response.status_code != 200 and len(self.failures) < 5:
                        self.failures.append(f"{response.status_code} {response.text[:200]}")
                except httpx.HTTPError as exc:
                    self.codes[0] += 1
                    self.failures.append(repr(exc))

    @property
    def failed(self) -> int:
        return sum(n for code, n in self.codes.items() if code != 200)


@pytest.fixture
def rollout_env(stack, settings, storage, triton, airflow):
    """A fresh model routed 100% to a loaded ``stable`` deployment, and a key granted that model."""
    from modelops.serving.gateway.keys import KeyStore
    from modelops.serving.routes import read_routes, write_routes

    model = f"it_ro_{uuid.uuid4().hex[:6]}"
    stable = f"{model}--v1-stable"
    publish_synthetic(storage, settings.triton_bucket, model, stable, k=1)
    triton.load_model(stable)
    write_routes(storage, settings.triton_bucket, read_routes(storage, settings.triton_bucket, model), {stable: 100},
                 by="test")
    keys = KeyStore(stack["gateway"]["keys_db"])
    name = f"it-ro-{uuid.uuid4().hex[:6]}"
    _, key = keys.create(name, model)
    airflow.wait_for_dag("rollout_model")
    airflow.wait_for_dag("rollback_model")
    time.sleep(1.5)  # the gateway polls the routes every 0.5 s and the key cache lives 1 s
    yield {"model": model, "stable": stable, "key": key, "gateway": stack["gateway"]["url"]}
    keys.revoke(name)
    storage.delete(f"s3://{settings.triton_bucket}/routes/{model}.json")  # no desired state left for the reconciler


def _canary(env: dict, settings, storage, triton, name: str, **behaviour) -> str:
    deployment = f"{env['model']}--v2-{name}"
    publish_synthetic(storage, settings.triton_bucket, env["model"], deployment, **behaviour)
    triton.load_model(deployment)
    return deployment


def _roll(airflow, env: dict, canary: str, **conf) -> tuple[str, float]:
    run_id = f"rollout__{canary}"
    # identical good deployments on a 2-core CI host shared by Airflow, Triton, the gateway and the load differ in
    # p99 by tens of percent from queueing alone: the promotion tests allow 2x; the slow canary (150 ms) is 10x+
    conf = {"model_name": env["model"], "deployment": canary, "interval_s": INTERVAL_S, "min_requests": 10,
            "max_p99_regression": 1.0, **conf}
    airflow.trigger("rollout_model", conf, run_id=run_id)
    return run_id, time.monotonic()


def _routes(settings, storage, model: str) -> dict[str, int]:
    from modelops.serving.routes import read_routes

    return read_routes(storage, settings.triton_bucket, model).weights()


def _state(settings, storage, model: str):
    from modelops.rollout.controller import load_state

    return load_state(storage, settings.triton_bucket, model)


def _wait_unloaded(triton, deployment: str, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not triton.is_model_ready(deployment):
            return True
        time.sleep(0.5)
    return False


def test_a_good_canary_is_promoted_step_by_step_under_load_without_a_failed_request(
        rollout_env, settings, storage, triton, airflow):
    env = rollout_env
    canary = _canary(env, settings, storage, triton, "good", k=2)
    with Load(env["gateway"], env["key"], env["model"]) as load:
        run_id, _ = _roll(airflow, env, canary, steps=[10, 50, 100])
        state = airflow.wait_for_run("rollout_model", run_id, timeout_s=300, poll_s=1.0)
        time.sleep(2)
    assert state == "success", airflow.task_states("rollout_model", run_id)
    assert _routes(settings, storage, env["model"]) == {canary: 100}
    doc = _state(settings, storage, env["model"])
    assert doc.status == "promoted" and doc.stable == [env["stable"]]
    assert [a["weight"] for a in doc.analysis] == [10, 50] and all(a["passed"] for a in doc.analysis)
    assert load.failed == 0, load.failures
    assert load.answered_by[env["stable"]] > 0 and load.answered_by[canary] > 0
    assert _wait_unloaded(triton, env["stable"]), "the replaced stable deployment was not unloaded"
    # the operator's view: `modelops rollout status MODEL --json`
    out = subprocess.run([str(Path(sys.executable).parent / "modelops"), "rollout", "status", env["model"], "--json"],
                         check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert json.dumps(status).count(canary) >= 1 and "promoted" in json.dumps(status)


@pytest.mark.parametrize(("behaviour", "reason"), [
    ({"behaviour": "fail"}, "success rate"),
    ({"behaviour": "slow", "delay_ms": 150, "trigger": 0}, "p99"),  # default-free: 150 ms vs ~10 ms
])
def test_a_bad_canary_is_rolled_back_within_one_interval(
        rollout_env, settings, storage, triton, airflow, behaviour, reason):
    env = rollout_env
    canary = _canary(env, settings, storage, triton, behaviour["behaviour"], k=3, **behaviour)
    with Load(env["gateway"], env["key"], env["model"]) as load:
        run_id, _ = _roll(airflow, env, canary, steps=[10, 50, 100], interval_s=BAD_INTERVAL_S)
        first_routed = back = None
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and back is None:
            weights = _routes(settings, storage, env["model"])
            if first_routed is None and weights.get(canary):
                first_routed = time.monotonic()
            if first_routed is not None and weights == {env["stable"]: 100}:
                back = time.monotonic()
            time.sleep(0.25)
        state = airflow.wait_for_run("rollout_model", run_id, timeout_s=120, poll_s=1.0)
    assert first_routed is not None and back is not None, "the canary was never routed, or never rolled back"
    assert back - first_routed < BAD_INTERVAL_S, f"rolled back {back - first_routed:.1f} s after the bad step began"
    assert state == "failed"
    doc = _state(settings, storage, env["model"])
    assert doc.status == "rolled_back" and reason in (doc.error or ""), doc.error
    assert _wait_unloaded(triton, canary), "the rolled-back canary was not unloaded"
    assert load.answered_by[env["stable"]] > 0
    if behaviour["behaviour"] == "slow":
        assert load.failed == 0, load.failures  # slow, not broken: no client saw an error


def _paused_run_processed(airflow_log: Path, ti_id: str, timeout_s: float = 60.0) -> bool:
    """Wait until the scheduler has processed the exit of the worker that paused ``ti_id`` for input (it logs
    ``TaskInstance Finished: ... ti_id=<id>`` once it has read that executor event).

    Airflow 3.3.2 race, not ours: when the human answers before that, the resumed task is already queued or running
    when the scheduler reads the paused run's exit (same try number), and it marks the task failed ("state changed
    externally"); its guard covers a resume still ``scheduled`` only. CI hit it twice: answering while the worker
    was still exiting (5 s under load), and answering after the exit but 1 s before the scheduler read it. A human
    answers seconds to hours after the request; the test must not answer faster than Airflow settles the pause.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = airflow_log.read_text(errors="replace") if airflow_log.exists() else ""
        if any("TaskInstance Finished:" in line and f"ti_id={ti_id}" in line for line in text.splitlines()):
            return True
        time.sleep(0.5)
    return False


def test_approval_holds_the_last_step_until_a_human_approves(rollout_env, settings, storage, triton, airflow, stack):
    env = rollout_env
    canary = _canary(env, settings, storage, triton, "approved", k=2)
    with Load(env["gateway"], env["key"], env["model"]):
        run_id, _ = _roll(airflow, env, canary, steps=[50, 100], require_approval=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            # Airflow 3.3 shows a HITL task waiting for a human as awaiting_input (deferred before it registers)
            if airflow.task_states("rollout_model", run_id).get("approve") in ("awaiting_input", "deferred"):
                break
            time.sleep(1)
        else:
            pytest.fail(f"approve never started waiting: {airflow.task_states('rollout_model', run_id)}")
        time.sleep(3)
        ti = airflow.request("GET", f"/dags/rollout_model/dagRuns/{run_id}/taskInstances/approve")
        assert _paused_run_processed(Path(stack["airflow"]["log"]), ti["id"]), "the scheduler never saw approve pause"
        assert _routes(settings, storage, env["model"]) == {canary: 50, env["stable"]: 50}  # held at 50 meanwhile
        assert _state(settings, storage, env["model"]).status == "waiting_approval"
        airflow.request("PATCH", f"/dags/rollout_model/dagRuns/{run_id}/taskInstances/approve/-1/hitlDetails",
                        json={"chosen_options": ["Approve"], "params_input": {}})
        state = airflow.wait_for_run("rollout_model", run_id, timeout_s=120, poll_s=1.0)
    assert state == "success", airflow.task_states("rollout_model", run_id)
    assert _routes(settings, storage, env["model"]) == {canary: 100}


def test_rollback_model_restores_the_last_stable_deployment(rollout_env, settings, storage, triton, airflow):
    env = rollout_env
    canary = _canary(env, settings, storage, triton, "promoted", k=2)
    run_id, _ = _roll(airflow, env, canary, steps=[100])
    assert airflow.wait_for_run("rollout_model", run_id, timeout_s=180, poll_s=1.0) == "success"
    assert _routes(settings, storage, env["model"]) == {canary: 100}
    assert _wait_unloaded(triton, env["stable"])
    run = airflow.trigger("rollback_model", {"model_name": env["model"]})
    state = airflow.wait_for_run("rollback_model", run["dag_run_id"], timeout_s=180, poll_s=1.0)
    assert state == "success", airflow.task_states("rollback_model", run["dag_run_id"])
    assert _routes(settings, storage, env["model"]) == {env["stable"]: 100}
    assert triton.is_model_ready(env["stable"])  # loaded again before the routes moved
    assert _wait_unloaded(triton, canary)
