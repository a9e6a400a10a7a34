"""End-to-end time of optimize_model on the embedded stack, triggered through Airflow's REST API.

Starts (or reuses) the stack, registers the digits CNN, runs the DAG, and writes
bench/results/e2e.json with the stack start time, registration time, DAG run time, per-task
durations and the run's summary (chosen variant, speedup, per-variant throughput and p99).
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

from results_io import write_results

REPO = Path(__file__).resolve().parent.parent


def _seconds(ti: dict) -> float | None:
    if not ti.get("start_date") or not ti.get("end_date"):
        return None
    fmt = lambda s: datetime.fromisoformat(s)
    return round((fmt(ti["end_date"]) - fmt(ti["start_date"])).total_seconds(), 2)


def main() -> dict:
    from modelops.local import stack
    from modelops.local.demo import DAG_ID, airflow_client, register_demo_model, run_optimize
    from modelops.settings import Settings

    t0 = time.monotonic()
    status = stack.up()
    stack_s = time.monotonic() - t0
    t1 = time.monotonic()
    reg = register_demo_model(Settings.from_env(), stack.client_env(status), "digits", "digits_cnn", "champion")
    register_s = time.monotonic() - t1
    api = airflow_client(status)
    t2 = time.monotonic()
    run_id, state = run_optimize(api, {"model_name": "digits_cnn", "model_alias": "champion", "model_version": None},
                                 show_progress=False)
    run_s = time.monotonic() - t2
    tis = api.request("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")["task_instances"]
    summary = api.xcom(DAG_ID, run_id, "record") if state == "success" else None
    results = {
        "state": state,
        "stack_up_s": round(stack_s, 2),
        "register_s": round(register_s, 2),
        "dag_run_s": round(run_s, 2),
        "model_version": reg["version"],
        "tasks_s": {ti["task_id"]: _seconds(ti) for ti in tis},
        "chosen": summary and summary["chosen"],
        "speedup": summary and summary["speedup"],
        "variants": summary and [{k: r[k] for k in ("variant", "metric", "throughput", "p50_ms", "p99_ms", "speedup")}
                                 for r in summary["rows"]],
    }
    write_results("e2e", results)
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
