"""nightly_reoptimize: re-optimize opted-in models whose fingerprint moved since their last run.

Opt a registered model in with the tag ``modelops.optimize=true`` (``modelops.alias`` picks the alias to
follow, default ``champion``; ``modelops.variants`` / ``modelops.latency_slo_ms`` /
``modelops.accuracy_tolerance`` override optimize_model's defaults). For each one the plan computes the
fingerprint (model version, recipe code, worker library versions, target device, settings) and starts
``optimize_model`` only where it differs from the ``modelops.fingerprint`` tag of the version, under the
run id ``nightly__<model>__v<version>__fp-<fingerprint>`` (re-running the same night starts nothing new).
Planning costs one registry search per 1,000 models plus one alias lookup per model.

GPU concurrency: started runs queue behind optimize_model's ``max_active_runs`` and their GPU steps run
in the ``MODELOPS_K8S_POOL`` pool (one slot per GPU). Schedule: ``MODELOPS_NIGHTLY_CRON`` (default 02:00).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import CronTriggerTimetable, Param, dag

from modelops.settings import get_settings
from modelops_airflow.decorators import modelops_task

NIGHTLY_CRON = get_settings().triggers.nightly_cron


@dag(
    dag_id="nightly_reoptimize",
    # No start_date and run_immediately=False: a new (or re-deployed) DAG waits for the next 02:00 instead of
    # re-optimizing everything at once when it first appears.
    schedule=CronTriggerTimetable(NIGHTLY_CRON, timezone="UTC", run_immediately=False),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=False,  # models opt in explicitly with a tag; nothing happens without one
    tags=["modelops", "mlflow", "trigger", "nightly"],
    default_args={"retries": 1, "retry_delay": timedelta(minutes=1)},
    params={
        "models": Param([], type="array", items={"type": "string"}, title="Only these models",
                        description="Registered model names to plan; empty plans every opted-in model."),
        "dry_run": Param(False, type="boolean", title="Dry run",
                         description="Plan and report, start nothing, write no fingerprint."),
    },
    doc_md=__doc__,
)
def nightly_reoptimize():
    @modelops_task
    def plan(params=None, connections=None) -> dict:
        from modelops.triggers.fingerprint import FingerprintContext
        from modelops.triggers.planner import OptimizeDefaults, plan_nightly

        # no modelops.variants tag: the recipe's family defaults (resolved by optimize_model)
        result = plan_nightly(connections.mlflow().get_client(), FingerprintContext.current(), OptimizeDefaults())
        only = set(params.get("models") or [])
        if only:
            result.items = [item for item in result.items if item.model in only]
        summary = result.summary()
        summary["requests"] = [i.request.to_json() for i in result.to_start]
        summary["record"] = [{"model": i.model, "version": i.version, "fingerprint": i.fingerprint,
                              "inputs": i.inputs} for i in result.to_record]
        print(f"planned {summary['models']} model(s) in {summary['planning_s']} s with "
              f"{summary['registry_calls_per_model']} registry call(s) per model")
        return summary

    @modelops_task
    def start(planned: dict, params=None, connections=None) -> dict:
        from modelops.triggers.events import DAG_ID, RunRequest
        from modelops.triggers.planner import PlanItem, record_fingerprint

        if params.get("dry_run"):
            return {}
        # Public REST API (airflow_api_conn_id, default airflow_api_default); an existing run id is a no-op.
        requests = [RunRequest.from_json(r) for r in planned["requests"]]
        outcomes = connections.airflow_api().create_dag_runs(requests, DAG_ID)
        client = connections.mlflow().get_client()
        for rec in planned["record"]:
            record_fingerprint(client, PlanItem(rec["model"], "start", "", rec["version"], rec["fingerprint"],
                                                inputs=rec["inputs"]))
        return outcomes

    @modelops_task
    def summarize(planned: dict, outcomes: dict, connections=None) -> dict:
        from modelops_airflow.operators.openwebui_tasks import refresh_quietly

        refresh_quietly("the nightly plan", connections)  # Open WebUI follows the registry (descriptions, groups) every night
        started = [i for i in planned["items"] if i["run_id"] in outcomes]
        skipped = [i for i in planned["items"] if i["action"] != "start"]
        for item in started:
            print(f"START  {item['model']} v{item['version']}: {item['reason']} -> {item['run_id']} "
                  f"({outcomes[item['run_id']]})")
        for item in skipped:
            print(f"SKIP   {item['model']}: {item['reason']}")
        return {"started": [{"model": i["model"], "version": i["version"], "run_id": i["run_id"],
                             "reason": i["reason"], "outcome": outcomes[i["run_id"]]} for i in started],
                "skipped": [{"model": i["model"], "reason": i["reason"]} for i in skipped],
                "planning_s": planned["planning_s"], "registry_calls": planned["registry_calls"]}

    planned = plan()
    summarize(planned, start(planned))


nightly_reoptimize()
