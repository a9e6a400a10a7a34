"""registry_reconcile: the pull path that starts the optimize_model runs MLflow webhooks lost.

An AssetWatcher runs ``RegistryPollTrigger`` in the triggerer: every ``MODELOPS_RECONCILE_INTERVAL_S``
seconds (default 60) it reads the registry (one ``search_registered_models`` page per 1,000 opted-in
models, one ``search_model_versions`` page per 1,000 versions tagged ``modelops.optimize=true``) and, when
alias, legacy-stage or tag facts appear that call for a run, emits an asset event. This DAG runs on that
event and creates each run under the same deterministic run id the webhook uses
(``mlflow__<model>__v<version>__alias-<alias>`` / ``__stage-<stage>`` / ``__tag-optimize``): a run the
webhook already started is left alone, so push and pull together start exactly one run per registry fact.
An alias moved back to an older version is a new fact: its id carries ``__after-<digest>`` of the alias's last
recorded move (the model tag ``modelops.alias_run.<alias>``, which ``plan`` writes before the run is created).

Tasks: ``plan`` turns the event's requests (or, when triggered by hand, the whole registry) into one
``TriggerDagRunOperator`` call per run that does not exist yet; ``start`` is that operator, mapped, with
``trigger_run_id`` = the deterministic run id and ``skip_when_already_exists`` (a run created between the
plan and the trigger, e.g. by the webhook, makes its mapped task skip, never a second run).

Stage transitions (deprecated in MLflow, still used) fire no webhook at all: this is their only path. A
version tagged ``modelops.optimize=true`` whose ``modelops.status`` says it was optimized or is in progress
(by an alias run, say) gets no tag run from here: reconcile never builds the same candidates twice.
Triggering this DAG by hand reconciles the whole registry. Connections: ``mlflow_conn_id`` in the
trigger and the ``plan`` task (``MLFLOW_CONN_ID`` below).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Asset, AssetWatcher, dag, task

from modelops.settings import get_settings
from modelops.triggers.events import DAG_ID
from modelops_airflow.triggers import RegistryPollTrigger

POLL_INTERVAL_S = get_settings().triggers.reconcile_interval_s
MLFLOW_CONN_ID = "mlflow_default"

REGISTRY = Asset(
    name="modelops_mlflow_registry",
    # "x-": a scheme no provider normalizes, so parsing this file never loads the providers' URI handlers
    # (the amazon provider's would import boto3).
    uri="x-modelops://mlflow-registry/promotions",
    watchers=[AssetWatcher(name="mlflow_registry_poll",
                           trigger=RegistryPollTrigger(poll_interval=POLL_INTERVAL_S, mlflow_conn_id=MLFLOW_CONN_ID))],
)


def trigger_kwargs(requests: list[dict], existing: set[str] | frozenset[str] = frozenset()) -> list[dict]:
    """One ``TriggerDagRunOperator`` kwargs dict per run request whose run id is not in ``existing``."""
    from modelops.triggers.events import RunRequest

    wanted = {r.run_id: r for r in map(RunRequest.from_json, requests)}
    return [{"trigger_run_id": run_id, "conf": req.conf, "note": req.note}
            for run_id, req in sorted(wanted.items()) if run_id not in existing]


def _record_alias_moves(requests: list[dict], run_ids: set[str]) -> None:
    """Before the runs of alias moves are created, write each move on its model (``modelops.alias_run.<alias>``)
    so that the alias moved back to this version later gets a new run id (see ``alias_run_id``)."""
    from modelops.triggers.events import RunRequest, record_alias_moves

    moves = [r for r in map(RunRequest.from_json, requests) if r.tag is not None and r.run_id in run_ids]
    if moves:
        from modelops_airflow.hooks import MlflowHook

        record_alias_moves(MlflowHook(mlflow_conn_id=MLFLOW_CONN_ID).get_client(), moves)


@dag(
    dag_id="registry_reconcile",
    schedule=[REGISTRY],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=False,  # a promotion that never deploys is the worst outcome: on by default
    tags=["modelops", "mlflow", "trigger"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=10)},
    doc_md=__doc__,
)
def registry_reconcile():
    @task
    def plan(triggering_asset_events=None, ti=None) -> list[dict]:
        """The runs to create: the event's requests (all the registry calls for when run by hand), less those
        that exist (one execution-API count per request keeps the mapped fan-out to what is new)."""
        requests = [item for events in (triggering_asset_events or {}).values() for event in events
                    for item in ((event.extra or {}).get("payload") or {}).get("requests", [])]
        if not requests:  # triggered by hand: reconcile everything the registry calls for
            from modelops.triggers.events import TriggerConfig, registry_requests
            from modelops_airflow.hooks import MlflowHook

            config = TriggerConfig.from_env()
            client = MlflowHook(mlflow_conn_id=MLFLOW_CONN_ID).get_client()
            requests = [r.to_json() for r in registry_requests(client, config)]
        run_ids = {item["run_id"] for item in requests}
        existing = {run_id for run_id in run_ids if ti.get_dr_count(dag_id=DAG_ID, run_ids=[run_id])}
        todo = trigger_kwargs(requests, existing)
        _record_alias_moves(requests, {item["trigger_run_id"] for item in todo})
        for item in todo:
            print(f"to start: {DAG_ID} run {item['trigger_run_id']}: {item['note']}")
        print(f"reconciled {len(run_ids)} registry fact(s): {len(todo)} run(s) to start, "
              f"{len(existing)} already had one")
        return todo

    TriggerDagRunOperator.partial(
        task_id="start",
        trigger_dag_id=DAG_ID,
        logical_date=None,  # runs are identified by their run id only, as the webhook creates them
        skip_when_already_exists=True,
        wait_for_completion=False,
        openlineage_inject_parent_info=False,  # the conf is optimize_model's params, nothing else
    ).expand_kwargs(plan())


registry_reconcile()
