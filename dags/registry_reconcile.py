"""registry_reconcile: the pull path that starts the optimize_model runs MLflow webhooks lost.

An AssetWatcher runs ``RegistryPollTrigger`` in the triggerer: every ``MODELOPS_RECONCILE_INTERVAL_S``
seconds (default 60) it reads the registry (one ``search_registered_models`` page per 1,000 opted-in
models) and, when alias or legacy-stage facts appear that call for a run, emits an asset event. This DAG
runs on that event and creates each run under the same deterministic run id the webhook uses
(``mlflow__<model>__v<version>__alias-<alias>`` / ``__stage-<stage>``): a run the webhook already started
is left alone, so push and pull together start exactly one run per registry fact.

Stage transitions (deprecated in MLflow, still used) fire no webhook at all: this is their only path.
Triggering this DAG by hand reconciles the whole registry.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, AssetWatcher, dag, task
from modelops_plugin import RegistryPollTrigger

from modelops.settings import get_settings

POLL_INTERVAL_S = get_settings().triggers.reconcile_interval_s

REGISTRY = Asset(
    name="modelops_mlflow_registry",
    uri="modelops://mlflow-registry/promotions",
    watchers=[AssetWatcher(name="mlflow_registry_poll", trigger=RegistryPollTrigger(poll_interval=POLL_INTERVAL_S))],
)


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
    def reconcile(triggering_asset_events=None) -> dict:
        from modelops_plugin import create_dag_runs

        from modelops.triggers.events import RunRequest, TriggerConfig, search_models, wanted_runs

        config = TriggerConfig.from_env()
        requests: dict[str, RunRequest] = {}
        for events in (triggering_asset_events or {}).values():
            for event in events:
                for item in ((event.extra or {}).get("payload") or {}).get("requests", []):
                    req = RunRequest.from_json(item)
                    requests[req.run_id] = req
        if not requests:  # triggered by hand: reconcile everything the registry calls for
            from modelops_hooks import MlflowHook

            requests = {r.run_id: r for r in wanted_runs(search_models(MlflowHook().get_conn(), config), config)}
        outcomes = create_dag_runs(requests.values(), config.dag_id)
        created = sorted(run_id for run_id, outcome in outcomes.items() if outcome == "created")
        for run_id in created:
            print(f"started {config.dag_id} run {run_id}: {requests[run_id].reason}")
        print(f"reconciled {len(outcomes)} registry fact(s): {len(created)} run(s) started, "
              f"{len(outcomes) - len(created)} already had one")
        return {"started": created, "existing": sorted(set(outcomes) - set(created))}

    reconcile()


registry_reconcile()
