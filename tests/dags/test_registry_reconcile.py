"""registry_reconcile creates its runs with TriggerDagRunOperator under the deterministic run ids."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from modelops.triggers.events import RunRequest, run_id_for

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "registry_reconcile.py"))
    assert bag.import_errors == {}
    return bag.dags["registry_reconcile"]


def _request(model: str, version: str, kind: str, key: str, reason: str) -> RunRequest:
    return RunRequest(run_id=run_id_for(model, version, kind, key), model_name=model, model_version=version,
                      reason=reason, source="reconcile")


class _TaskInstance:
    """The one Task SDK call ``plan`` makes: how many runs of a DAG carry these run ids."""

    def __init__(self, existing: set[str]) -> None:
        self.existing = existing
        self.asked: list[tuple[str, list[str]]] = []

    def get_dr_count(self, dag_id: str, run_ids: list[str]) -> int:
        self.asked.append((dag_id, run_ids))
        return sum(run_id in self.existing for run_id in run_ids)


def test_start_is_a_mapped_trigger_dag_run_operator(dag):
    from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator

    assert dag.task_ids == ["plan", "start"]
    start = dag.get_task("start")
    assert start.operator_class is TriggerDagRunOperator
    assert start.upstream_task_ids == {"plan"}
    kwargs = start.partial_kwargs
    assert kwargs["trigger_dag_id"] == "optimize_model"
    assert kwargs["skip_when_already_exists"] is True and kwargs["wait_for_completion"] is False
    assert kwargs["logical_date"] is None


def test_plan_then_trigger_renders_the_deterministic_run_ids(dag):
    from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
    from airflow.sdk.exceptions import DagRunTriggerException

    alias = _request("digits", "3", "alias", "champion", "alias champion -> v3")
    stage = _request("wine", "1", "stage", "production", "stage Production -> v1")
    taken = _request("old", "7", "alias", "champion", "alias champion -> v7")
    events = {"modelops_mlflow_registry": [SimpleNamespace(extra={"payload": {
        "requests": [alias.to_json(), stage.to_json(), taken.to_json(), alias.to_json()]}})]}
    ti = _TaskInstance(existing={taken.run_id})

    todo = dag.get_task("plan").python_callable(triggering_asset_events=events, ti=ti)

    assert [k["trigger_run_id"] for k in todo] == sorted([alias.run_id, stage.run_id])
    assert alias.run_id == "mlflow__digits__v3__alias-champion" and stage.run_id == "mlflow__wine__v1__stage-production"
    assert sorted(run_ids[0] for _, run_ids in ti.asked) == sorted([alias.run_id, stage.run_id, taken.run_id])
    start = dag.get_task("start")
    for kwargs in todo:
        op = TriggerDagRunOperator(task_id="start_one", **{**start.partial_kwargs, **kwargs})
        op.render_template_fields({"ds": "2026-01-01"})
        with pytest.raises(DagRunTriggerException) as raised:
            op.execute({})
        want = alias if kwargs["trigger_run_id"] == alias.run_id else stage
        exc = raised.value
        assert (exc.trigger_dag_id, exc.dag_run_id, exc.conf, exc.note) == \
            ("optimize_model", want.run_id, want.conf, want.note)
        assert exc.note.startswith("reconcile: ") and exc.skip_when_already_exists and exc.logical_date is None


def test_plan_with_nothing_new_maps_no_trigger(dag):
    known = _request("digits", "3", "alias", "champion", "alias champion -> v3")
    events = {"x": [SimpleNamespace(extra={"payload": {"requests": [known.to_json()]}})]}
    assert dag.get_task("plan").python_callable(triggering_asset_events=events,
                                                ti=_TaskInstance({known.run_id})) == []


def test_plan_records_the_alias_moves_it_starts_before_their_runs_exist(dag, monkeypatch):
    """An alias move's run id depends on the last recorded move: plan writes the model tag of each move it
    starts (not of moves whose run exists), so moving the alias back later gets a new run id."""
    from modelops.triggers.events import alias_request
    from modelops_airflow import hooks

    written: list[tuple[str, str, str]] = []

    class _Hook:
        def __init__(self, mlflow_conn_id: str) -> None:
            assert mlflow_conn_id == "mlflow_default"

        def get_client(self):
            return SimpleNamespace(set_registered_model_tag=lambda *args: written.append(args))

    monkeypatch.setattr(hooks, "MlflowHook", _Hook)
    back = alias_request("digits", "3", "champion", "reconcile",
                         {"modelops.alias_run.champion": "4|mlflow__digits__v4__alias-champion"})
    done = alias_request("wine", "1", "champion", "reconcile")
    events = {"x": [SimpleNamespace(extra={"payload": {"requests": [back.to_json(), done.to_json()]}})]}
    todo = dag.get_task("plan").python_callable(triggering_asset_events=events, ti=_TaskInstance({done.run_id}))
    assert [k["trigger_run_id"] for k in todo] == [back.run_id]
    assert back.run_id.startswith("mlflow__digits__v3__alias-champion__after-")
    assert written == [("digits", "modelops.alias_run.champion", f"3|{back.run_id}")]
