"""rollout_model / rollback_model: params, wiring, and the steps operator's deferral state machine.

The operator's I/O (S3 state and routes, Prometheus, MLflow, Triton) sits behind its ``_``-methods; here they are
replaced by an in-memory rollout so each wake's decision (wait, next step, roll back at once, stop) is checked.
The real I/O runs in the integration tests on the stack.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from modelops.rollout.analysis import DeploymentStats, Verdict
from modelops.rollout.state import RolloutState

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag


def test_rollout_params_and_defaults(dagbag):
    params = dagbag.dags["rollout_model"].params
    defaults = {k: params[k] for k in params}
    assert defaults == {"model_name": "digits_cnn", "deployment": None, "steps": [10, 50, 100], "interval_s": 60,
                        "min_success_rate": 0.99, "max_p99_ms": None, "max_p99_regression": 0.25, "min_requests": 20,
                        "require_approval": False, "mode": "canary", "ab_weight": 50, "ab_duration_s": 300}
    for name in defaults:
        assert params.get_param(name).schema.get("title"), name
        assert params.get_param(name).description, name
    assert set(dagbag.dags["rollback_model"].params.keys()) == {"model_name", "to_deployment"}
    assert dagbag.dags["rollback_model"].params["to_deployment"] is None


@pytest.mark.parametrize("bad", [{"steps": [0, 100]}, {"steps": [10, 101]}, {"mode": "blue_green"},
                                 {"min_success_rate": 1.5}, {"interval_s": 0}, {"ab_weight": 100},
                                 {"deployment": "Bad Name"}, {"min_requests": 0}])
def test_bad_params_are_refused(dagbag, bad):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    params = ParamsDict(dagbag.dags["rollout_model"].params)
    params["deployment"] = "m--v2-ort_fp32"
    with pytest.raises((ParamValidationError, ValueError)):
        for key, value in bad.items():
            params[key] = value
        params.validate()


def test_rollout_wiring_and_trigger_rules(dagbag):
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    from modelops_airflow.operators.rollout_tasks import RolloutStepsOperator

    dag = dagbag.dags["rollout_model"]
    assert dag.schedule is None or str(dag.timetable.summary) in ("None", "")
    assert set(dag.task_ids) == {"begin", "steps", "gate", "approve", "promote", "rollback"}
    assert dag.get_task("steps").downstream_task_ids == {"gate", "rollback"}
    assert dag.get_task("gate").downstream_task_ids == {"approve", "promote", "rollback"}
    assert dag.get_task("approve").downstream_task_ids == {"promote", "rollback"}
    assert dag.get_task("rollback").upstream_task_ids == {"begin", "steps", "gate", "approve", "promote"}
    assert dag.get_task("rollback").trigger_rule == "one_failed"
    assert dag.get_task("promote").trigger_rule == "none_failed_min_one_success"  # approve skipped by the gate
    assert isinstance(dag.get_task("steps"), RolloutStepsOperator)
    approve = dag.get_task("approve")
    assert isinstance(approve, ApprovalOperator) and approve.fail_on_reject  # a rejection rolls back
    assert all(t.retries == 0 for t in dag.tasks)
    assert dagbag.dags["rollback_model"].task_ids == ["rollback"]
    # optimize_model starts rollout_model: a fresh Airflow must not create them paused (the demo's rollout once
    # sat queued behind a paused DAG), and start_rollout fails loudly if someone paused it
    assert dag.is_paused_upon_creation is False and dagbag.dags["rollback_model"].is_paused_upon_creation is False
    assert dagbag.dags["optimize_model"].get_task("start_rollout").fail_when_dag_is_paused


@pytest.mark.parametrize("name", ["rollout_model.py", "rollback_model.py"])
def test_dag_files_are_cheap_to_import(name):
    code = (
        "import sys; sys.path[:0] = [{!r}];"
        "import runpy; runpy.run_path({!r});"
        "heavy = [m for m in ('mlflow', 'boto3', 'tritonclient', 'matplotlib', 'modelops.rollout',"
        " 'modelops.tracking') if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)"
    ).format(str(REPO), str(REPO / "dags" / name))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_check_params_steps_and_ab_mode():
    from airflow.sdk.exceptions import AirflowFailException

    from modelops_airflow.operators.rollout_params import check_params

    base = {"model_name": "m", "deployment": "m--v2-a", "steps": [10, 50, 100], "interval_s": 60, "mode": "canary",
            "ab_weight": 30, "ab_duration_s": 120, "min_success_rate": 0.99, "max_p99_ms": None,
            "max_p99_regression": 0.25, "min_requests": 20}
    cfg = check_params(base)
    assert (cfg["steps"], cfg["interval_s"]) == ([10, 50, 100], 60.0)
    ab = check_params({**base, "mode": "ab"})
    assert (ab["steps"], ab["interval_s"], ab["mode"]) == ([30, 100], 120.0, "ab")
    with pytest.raises(AirflowFailException, match="deployment is required"):
        check_params({**base, "deployment": None})
    for steps in ([50, 10, 100], [10, 50], [10, 10, 100]):
        with pytest.raises(AirflowFailException, match="ascending and end at 100"):
            check_params({**base, "steps": steps})


# -- the steps operator --------------------------------------------------------------------------
class _TI:
    def __init__(self, meta: dict) -> None:
        self.meta, self.pushed = meta, {}

    def xcom_pull(self, task_ids: str, key: str = "return_value"):
        return self.meta if task_ids == "begin" else None

    def xcom_push(self, key: str, value) -> None:
        self.pushed[key] = value


def _stats(deployment: str, rate: float | None = 1.0, p99: float | None = 10.0) -> DeploymentStats:
    return DeploymentStats(deployment=deployment, requests=100.0, success_rate=rate, p99_ms=p99)


def _operator(state: RolloutState, verdicts: list[Verdict], stop: str | None = None):
    from modelops_airflow.operators.rollout_tasks import RolloutStepsOperator

    class InMemory(RolloutStepsOperator):
        """The rollout kept in memory: applied steps, recorded verdicts and rollbacks are listed."""

        def _current(self, context):
            return stop or self.state

        def _apply(self, context, state, index):
            self.applied.append(index)
            self.state = replace(self.state, step_index=index, routes_revision=self.state.routes_revision + 1)
            return self.state

        def _judge(self, context, state, window_s):
            self.windows.append(window_s)
            return verdicts.pop(0)

        def _record(self, context, state, verdict):
            self.recorded.append(verdict.passed)
            return self.state

        def _rollback(self, context, state, reason):
            self.rolled_back.append(reason)

        def _log(self, context, state):
            # MLflow comes last: after a rollback, never before it
            self.logged.append(len(self.rolled_back))

    op = InMemory(task_id="steps")
    op.state, op.applied, op.windows, op.recorded, op.rolled_back, op.logged = state, [], [], [], [], []
    ti = _TI({"model": "m", "deployment": "m--v2-a", "steps": state.steps, "mlflow_run_id": "x"})
    return op, {"ti": ti, "run_id": "r1"}


def _state(steps=(10, 50, 100), interval_s: float = 60.0, mode: str = "canary") -> RolloutState:
    return RolloutState(model="m", deployment="m--v2-a", stable=["m--v1-a"], steps=list(steps), step_index=-1,
                        mode=mode, status="running", run_id="r1", started_at="t", updated_at="t", thresholds={},
                        interval_s=interval_s, routes_revision=3)


def _ago(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat()


def _deferred_for(exc) -> float:
    from airflow.providers.standard.triggers.temporal import DateTimeTrigger

    assert isinstance(exc.trigger, DateTimeTrigger)  # TimeDeltaTrigger is one; the triggerer waits, not a worker
    assert exc.method_name == "wake"
    return (exc.trigger.moment - datetime.now(UTC)).total_seconds()


def test_execute_writes_the_first_step_and_defers_instead_of_sleeping():
    from airflow.sdk.exceptions import TaskDeferred

    op, ctx = _operator(_state(), [])
    with pytest.raises(TaskDeferred) as exc:
        op.execute(ctx)
    assert op.applied == [0]
    assert 9 <= _deferred_for(exc.value) <= 10.5  # chunks of at most min(interval_s, 10 s)
    assert exc.value.kwargs["index"] == 0


def test_short_interval_chunks_and_a_10_s_minimum_window():
    from airflow.sdk.exceptions import TaskDeferred

    op, ctx = _operator(_state(interval_s=4), [])
    with pytest.raises(TaskDeferred) as exc:
        op.execute(ctx)
    assert 3 <= _deferred_for(exc.value) <= 4.5
    with pytest.raises(TaskDeferred) as exc:  # woke after 4 s: too early to judge over 10 s
        op.wake(ctx, index=0, started=_ago(4))
    assert op.windows == [] and 3 <= _deferred_for(exc.value) <= 4.5


def test_a_failing_verdict_rolls_back_at_once():
    from airflow.sdk.exceptions import AirflowFailException

    bad = Verdict(False, ["canary success rate 0.5000 < 0.99"], _stats("m--v2-a", 0.5), _stats("m--v1-a"))
    op, ctx = _operator(replace(_state(), step_index=0), [bad])
    with pytest.raises(AirflowFailException, match=r"rolled back: step 1/3 \(10%\): canary success rate 0.5000"):
        op.wake(ctx, index=0, started=_ago(20))  # 20 s into a 60 s step: no waiting for the rest
    assert op.rolled_back == ["step 1/3 (10%): canary success rate 0.5000 < 0.99"] and op.recorded == [False]
    assert op.logged == [1]  # MLflow after the rollback
    assert ctx["ti"].pushed["reason"] == op.rolled_back[0]


def test_a_passing_step_waits_out_its_interval_then_starts_the_next():
    from airflow.sdk.exceptions import TaskDeferred

    good = Verdict(True, [], _stats("m--v2-a"), _stats("m--v1-a"))
    op, ctx = _operator(replace(_state(), step_index=0), [good, good])
    with pytest.raises(TaskDeferred):
        op.wake(ctx, index=0, started=_ago(20))
    assert op.applied == [] and op.recorded == []
    with pytest.raises(TaskDeferred) as exc:
        op.wake(ctx, index=0, started=_ago(60))
    assert op.recorded == [True] and op.applied == [1] and exc.value.kwargs["index"] == 1
    assert op.windows[-1] >= 60  # the window is the whole step


def test_the_last_judged_step_hands_over_and_no_verdict_fails():
    from airflow.sdk.exceptions import AirflowFailException

    good = Verdict(True, [], _stats("m--v2-a"), _stats("m--v1-a"))
    op, ctx = _operator(replace(_state(), step_index=1), [good])
    assert op.wake(ctx, index=1, started=_ago(61)) == {"passed_steps": 2}
    few = Verdict(None, ["only 3 canary requests < 20"], _stats("m--v2-a"), None)
    op, ctx = _operator(replace(_state(), step_index=0), [few, few])
    from airflow.sdk.exceptions import TaskDeferred

    with pytest.raises(TaskDeferred):  # no verdict mid-step: keep waiting
        op.wake(ctx, index=0, started=_ago(30))
    with pytest.raises(AirflowFailException, match="no verdict after 6[01] s: only 3 canary requests"):
        op.wake(ctx, index=0, started=_ago(60))


def test_ab_mode_judges_once_at_the_end():
    from airflow.sdk.exceptions import TaskDeferred

    good = Verdict(True, [], _stats("m--v2-a"), _stats("m--v1-a"))
    op, ctx = _operator(replace(_state(steps=(50, 100), interval_s=120, mode="ab"), step_index=0), [good])
    with pytest.raises(TaskDeferred):
        op.wake(ctx, index=0, started=_ago(60))
    assert op.windows == []
    assert op.wake(ctx, index=0, started=_ago(120)) == {"passed_steps": 1} and op.windows[0] >= 120


def test_a_manual_rollback_stops_the_rollout_without_rolling_back():
    from airflow.sdk.exceptions import AirflowFailException

    line = "stopped: routes were changed by rollback_model run manual__1 (revision 9)"
    op, ctx = _operator(replace(_state(), step_index=0), [], stop=line)
    with pytest.raises(AirflowFailException, match="^stopped: routes were changed by rollback_model run manual__1"):
        op.wake(ctx, index=0, started=_ago(30))
    assert op.rolled_back == [] and ctx["ti"].pushed["reason"] == line


def test_changed_by_names_the_manual_rollback():
    from modelops_airflow.operators.rollout_tasks import MANUAL_BY, changed_by

    state = replace(_state(), status="rolled_back", error=f"rolled back by hand to m--v1-a{MANUAL_BY}manual__7")
    assert changed_by("r1", state) == "rollback_model run manual__7"  # the controller wrote under the rollout's id
    assert changed_by("alice", state) == "alice"
    assert changed_by(None, replace(state, error=None)) == "someone"


def test_single_step_rollout_has_nothing_to_judge():
    op, ctx = _operator(_state(steps=(100,)), [])
    assert op.execute(ctx) is None and op.applied == []
