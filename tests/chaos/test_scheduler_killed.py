"""The Airflow scheduler SIGKILLed in the middle of an ``optimize_model`` run, then restarted.

The stack's Airflow service is a supervisor (``modelops.local.stack.airflow_supervisor``) that starts a dead
component again, as Kubernetes restarts a scheduler pod. What the user sees: the run goes on and succeeds. The
task in flight when the scheduler died (a heavy step) keeps running under its own task supervisor, which
outlives the scheduler and reports its end to the API server; the new scheduler (up about 2 s later) queues the
rest of the run (observed: every task at try 1). Lost: nothing: the model is deployed, routed and answers under
the run's own deployment name.
"""

from __future__ import annotations

import signal
import time

import psutil
import pytest

from tests.chaos.conftest import DAG_ID
from tests.integration.conftest import register  # noqa: F401 - session fixture

pytestmark = [pytest.mark.chaos, pytest.mark.integration]
HEAVY = ("export", "optimize", "validate", "benchmark")


def _scheduler(airflow_pid: int) -> psutil.Process | None:
    for proc in psutil.Process(airflow_pid).children(recursive=True):
        try:
            cmd = proc.cmdline()
        except psutil.NoSuchProcess:
            continue
        if len(cmd) >= 2 and cmd[-2:] == ["scheduler", "--skip-serve-logs"] and "airflow" in " ".join(cmd[:-2]):
            return proc
    return None


@pytest.fixture(scope="module")
def killed_run(stack, airflow, register, quiet_optimize):  # noqa: F811
    from modelops.local import stack as stack_mod

    for run_id in list(quiet_optimize):  # earlier chaos tests' queued runs must not run once the DAG is unpaused
        airflow.request("DELETE", f"/dags/{DAG_ID}/dagRuns/{run_id}")
        quiet_optimize.remove(run_id)
    reg = register("digits", alias=None, name=f"chaos_sched_{int(time.time())}")
    airflow_pid = stack_mod.status()["airflow"]["pid"]
    before = _scheduler(airflow_pid)
    assert before is not None, "no scheduler under the stack's Airflow service"
    run_id = airflow.trigger(DAG_ID, {"model_name": reg["name"], "model_version": reg["version"], "model_alias": None})["dag_run_id"]
    quiet_optimize.append(run_id)
    deadline = time.monotonic() + 900
    in_flight = None
    while in_flight is None and time.monotonic() < deadline:
        states = airflow.task_states(DAG_ID, run_id)
        if any(s in ("failed", "upstream_failed") for s in states.values()):
            break
        in_flight = next((t for t in HEAVY if states.get(t) == "running"), None)
        time.sleep(0.5)
    assert in_flight, f"no heavy task ever ran: {states}"
    before.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    after = None
    while after is None and time.monotonic() - killed_at < 120:
        candidate = _scheduler(airflow_pid)
        after = candidate if candidate is not None and candidate.pid != before.pid else None
        time.sleep(0.5)
    restarted_s = time.monotonic() - killed_at
    state = airflow.wait_for_run(DAG_ID, run_id, timeout_s=1500)
    tis = {ti["task_id"]: ti for ti in
           airflow.request("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")["task_instances"]}
    airflow.request("PATCH", f"/dags/{DAG_ID}", json={"is_paused": True})  # as quiet_optimize keeps it
    print(f"\nscheduler SIGKILLed while {in_flight!r} ran; restarted after {restarted_s:.1f} s; run {state}; "
          f"tries: { {t: ti.get('try_number') for t, ti in tis.items()} }")
    yield {"reg": reg, "run_id": run_id, "state": state, "tis": tis, "in_flight": in_flight, "after": after,
           "airflow_pid": airflow_pid}


def test_the_scheduler_is_started_again_by_the_supervisor(killed_run, airflow):
    assert killed_run["after"] is not None, "no new scheduler within 120 s"
    assert psutil.Process(killed_run["airflow_pid"]).is_running()  # the same Airflow service, not a new stack
    health = airflow.session.get(f"{airflow.url}/api/v2/monitor/health", timeout=10).json()
    assert health["scheduler"]["status"] == "healthy", health


def test_the_run_goes_on_and_succeeds(killed_run):
    assert killed_run["state"] == "success", {t: ti["state"] for t, ti in killed_run["tis"].items()}
    for task in ("resolve", "export", "optimize", "validate", "benchmark", "select", "publish", "deploy", "record"):
        assert killed_run["tis"][task]["state"] == "success", task


def test_nothing_is_lost_the_version_is_deployed_and_answers(killed_run, airflow, mlflow_client, storage, settings,
                                                             triton):
    from modelops.contracts.naming import TAG_DEPLOYMENT, TAG_STATUS
    from modelops.serving.routes import read_routes

    reg = killed_run["reg"]
    summary = airflow.xcom(DAG_ID, killed_run["run_id"], "record")
    tags = mlflow_client.get_model_version(reg["name"], reg["version"]).tags
    assert tags[TAG_STATUS] == "deployed" and tags[TAG_DEPLOYMENT] == summary["deployment"]
    assert read_routes(storage, settings.triton_bucket, reg["name"]).weights() == {summary["deployment"]: 100}
    assert triton.is_model_ready(summary["deployment"])
