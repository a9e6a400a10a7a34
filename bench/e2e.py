"""Trigger-to-serving time of optimize_model per demo model on the embedded stack, through Airflow's REST API.

Starts (or reuses) the stack, registers each demo model (a new version), triggers the DAG and waits for it. Per
model it keeps: the time from the trigger to the end of ``deploy`` (the new deployment serves; ``serving_s``), the
whole run (``dag_run_s``, which goes on with record, the Open WebUI refresh and the rollout hand-off), per-task
durations and the gaps between them (Airflow's scheduling), and the chosen deployment: variant, configuration and
its best throughput under the SLO (the "at least as fast" half of the target).

Writes ``bench/results/e2e.json``, one entry per ``--label`` (earlier labels are kept, so a before/after pair sits
in one file). Run it alone on the machine (``flock /tmp/modelops-bench.lock``): the stack's benchmark step measures.

    .venv/bin/python bench/e2e.py --label after [--models digits minilm] [--conf '{"config_search": false}']
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from results_io import RESULTS, host_info, write_results

REPO = Path(__file__).resolve().parent.parent
TARGETS_S = {"digits": 45.0, "minilm": 90.0}  # issue 12, item 4: trigger to serving


def _when(stamp: str | None) -> datetime | None:
    return datetime.fromisoformat(stamp) if stamp else None


def _task_times(tis: list[dict[str, Any]]) -> tuple[dict[str, float | None], float]:
    """Per-task seconds, and the sum of the idle gaps between one task's end and the next one's start."""
    spans = sorted(((ti["task_id"], _when(ti.get("start_date")), _when(ti.get("end_date"))) for ti in tis
                    if ti.get("start_date")), key=lambda s: s[1])  # fmt: skip
    tasks = {t: round((e - s).total_seconds(), 2) if s and e else None for t, s, e in spans}
    gaps, last_end = 0.0, None
    for _, start, end in spans:
        if last_end is not None and start > last_end:
            gaps += (start - last_end).total_seconds()
        if end is not None:
            last_end = max(last_end, end) if last_end else end
    return tasks, round(gaps, 2)


def one_model(api: Any, status: dict[str, Any], key: str, extra_conf: dict[str, Any]) -> dict[str, Any]:
    from modelops.local import stack
    from modelops.local.demo import DAG_ID, DEMO_MODELS, register_demo_model, run_optimize
    from modelops.settings import Settings

    kind, name, params = DEMO_MODELS[key]
    t0 = time.monotonic()
    reg = register_demo_model(Settings.from_env(), stack.client_env(status), kind, name, "champion")
    register_s = time.monotonic() - t0
    conf = {"model_name": name, "model_alias": "champion", "model_version": None, **params, **extra_conf}
    triggered = datetime.now(UTC)
    t1 = time.monotonic()
    run_id, state = run_optimize(api, conf, show_progress=False)
    run_s = time.monotonic() - t1
    tis = api.request("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")["task_instances"]
    tasks, gaps = _task_times(tis)
    deploy_end = next((_when(ti["end_date"]) for ti in tis if ti["task_id"] == "deploy" and ti.get("end_date")), None)
    out: dict[str, Any] = {
        "model": name,
        "state": state,
        "model_version": reg["version"],
        "register_s": round(register_s, 2),
        "serving_s": round((deploy_end - triggered).total_seconds(), 2) if deploy_end else None,
        "target_serving_s": TARGETS_S.get(key),
        "dag_run_s": round(run_s, 2),
        "airflow_gaps_s": gaps,
        "tasks_s": tasks,
        "conf": conf,
    }
    if state == "success":
        summary = api.xcom(DAG_ID, run_id, "record")
        bench = api.xcom(DAG_ID, run_id, "select")
        out["chosen"], out["speedup"] = summary["chosen"], summary["speedup"]
        out["rows"] = [{k: r.get(k) for k in ("variant", "throughput", "p99_ms", "speedup")} for r in summary["rows"]]
        out["chosen_config"] = (bench or {}).get("config")
        chosen_row = next((r for r in summary["rows"] if r["variant"] == summary["chosen"]), None)
        out["chosen_throughput"] = chosen_row and chosen_row.get("throughput")
    return out


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="run")
    parser.add_argument("--models", nargs="+", default=list(TARGETS_S))
    parser.add_argument("--conf", default="{}", help="extra DAG params (JSON), e.g. '{\"config_search\": false}'")
    args = parser.parse_args()

    from modelops.local import stack
    from modelops.local.demo import airflow_client

    t0 = time.monotonic()
    status = stack.up()
    stack_s = time.monotonic() - t0
    api = airflow_client(status)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True)
    entry = {
        "commit": commit.stdout.strip(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "host": host_info(),
        "loadavg_before": list(os.getloadavg()),
        "stack_up_s": round(stack_s, 2),
        "models": {key: one_model(api, status, key, json.loads(args.conf)) for key in args.models},
        "loadavg_after": list(os.getloadavg()),
    }
    path = RESULTS / "e2e.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    results = {**(previous if "runs" in previous else {"runs": {}}), "targets_s": TARGETS_S}
    results["runs"][args.label] = entry
    write_results("e2e", results)
    print(json.dumps(entry, indent=2))
    return entry


if __name__ == "__main__":
    main()
