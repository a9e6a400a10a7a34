"""A run's optimization lease is kept alive while a heavy step works; losing it stops the step (real processes)."""

from __future__ import annotations

import json
import sys
import threading
import time

import pytest

from modelops.runs.lease_keeper import LeaseKeeper, for_run
from modelops.runs.resolve import (
    OPTIMIZE_LOCK_TTL_S,
    RunRefused,
    fence_optimization,
    lock_optimization,
    optimize_lock_uri,
)
from modelops.serving.locks import holder

SPEC = "s3://modelops-artifacts/runs/m/3/r1/spec.json"


@pytest.fixture
def spec(s3):
    s3.write_json(SPEC, {"model_name": "m", "model_version": "3", "triton_bucket": "triton"})
    return SPEC


def _steal(s3) -> None:
    """Another run takes the lease (the first one's expired, say)."""
    uri = optimize_lock_uri("triton", "m", "3")
    doc = json.loads(s3.read_bytes(uri))
    s3.write_bytes(uri, json.dumps({**doc, "owner": "run-2"}).encode())


def test_the_keeper_renews_while_the_step_works(s3, spec):
    lock_optimization(s3, "triton", "m", "3", "run-1")
    before = holder(s3, optimize_lock_uri("triton", "m", "3"))["expires_at_epoch"]
    lost = []
    keeper = for_run(s3, spec, "run-1", lost.append, interval_s=0.05)
    with keeper:
        time.sleep(0.4)
    assert keeper.renewals >= 3 and not lost and keeper.lost is None
    after = holder(s3, optimize_lock_uri("triton", "m", "3"))
    assert after["owner"] == "run-1" and after["expires_at_epoch"] > before
    assert after["expires_at_epoch"] <= time.time() + OPTIMIZE_LOCK_TTL_S + 1


def test_a_lease_already_lost_never_starts_the_step(s3, spec):
    lock_optimization(s3, "triton", "m", "3", "run-1")
    _steal(s3)
    with pytest.raises(RunRefused, match=r"^the optimization of m v3: the lease was lost to run-2 .*start a new run$"):
        with for_run(s3, spec, "run-1", lambda _: None):
            pytest.fail("the step must not start")


def test_losing_the_lease_mid_step_says_why_once(s3, spec):
    lock_optimization(s3, "triton", "m", "3", "run-1")
    lost, called = [], threading.Event()
    keeper = LeaseKeeper(lambda: fence_optimization(s3, "triton", "m", "3", "run-1"),
                         lambda why: (lost.append(why), called.set()), interval_s=0.05)
    with keeper:
        _steal(s3)
        assert called.wait(5)
        time.sleep(0.2)
    assert len(lost) == 1 and keeper.lost == lost[0] and "lost to run-2" in lost[0]


def test_no_keeper_for_a_step_run_by_hand_or_a_hand_written_spec(s3, spec):
    assert for_run(s3, spec, None, print) is None
    s3.write_json(SPEC, {"variants": ["trt_fp16"]})
    assert for_run(s3, SPEC, "run-1", print) is None


def test_the_step_operator_stops_a_step_whose_lease_is_lost(s3, spec, monkeypatch, tmp_path):
    """A running step (a real process, 60 s of sleep) is stopped within the keeper's interval once another run
    holds the lease, and the task fails saying so; the lease stays with the other run."""
    from airflow.sdk.exceptions import AirflowFailException

    import modelops.runs.lease_keeper as keeper_module
    from modelops_airflow.operators import step_operator as so

    lock_optimization(s3, "triton", "m", "3", "run-1")
    op = so.LocalStepOperator(task_id="export", step="export", spec=spec)
    real_for_run = keeper_module.for_run
    monkeypatch.setattr(keeper_module, "for_run", lambda storage, *a, **k: real_for_run(s3, *a, interval_s=0.1))
    # a step that would work for a minute: only the lost lease can end it within the 30 s asserted below
    monkeypatch.setattr(so, "step_command", lambda *a: ["-c", "import time; time.sleep(60)"])
    monkeypatch.setenv("MODELOPS_WORKER_PYTHON", sys.executable)
    monkeypatch.setenv("MODELOPS_STEP_USER", "-")
    monkeypatch.setattr(op, "_env", lambda settings: {"PATH": "/usr/bin:/bin"})
    monkeypatch.setattr("modelops_airflow.hooks.ModelOpsS3Hook.storage", lambda self: s3)
    threading.Timer(0.5, _steal, args=(s3,)).start()
    started = time.monotonic()
    with pytest.raises(AirflowFailException, match=r"^export stopped: the optimization of m v3: the lease was lost"):
        op.execute({"run_id": "run-1"})
    assert time.monotonic() - started < 30  # stopped, not slept out
    assert holder(s3, optimize_lock_uri("triton", "m", "3"))["owner"] == "run-2"


def test_a_step_pod_starts_only_while_its_run_holds_the_lease(s3, spec, monkeypatch):
    """Kubernetes mode: the lease is renewed before the pod is created; a run that lost it creates no pod."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.sdk.exceptions import AirflowFailException

    from modelops.settings import Settings
    from modelops_airflow.operators.step_pod import kubernetes_step

    started = []
    monkeypatch.setattr(KubernetesPodOperator, "execute", lambda self, context: started.append(self.task_id) or {})
    monkeypatch.setattr("modelops_airflow.hooks.ModelOpsS3Hook.storage", lambda self: s3)
    op = kubernetes_step("export", spec, Settings.from_env({}).kubernetes, task_id="export")
    lock_optimization(s3, "triton", "m", "3", "run-1")
    before = holder(s3, optimize_lock_uri("triton", "m", "3"))["expires_at_epoch"]
    time.sleep(0.01)
    op.execute({"run_id": "run-1"})
    assert started == ["export"]
    assert holder(s3, optimize_lock_uri("triton", "m", "3"))["expires_at_epoch"] > before
    _steal(s3)
    with pytest.raises(AirflowFailException, match="the lease was lost to run-2"):
        op.execute({"run_id": "run-1"})
    assert started == ["export"]
