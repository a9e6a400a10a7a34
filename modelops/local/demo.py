"""``modelops demo``: stack up, register the digits CNN as ``champion``, run ``optimize_model`` through
Airflow's REST API, show task progress, then print the summary and how to stop the stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from modelops.local import stack
from modelops.local.airflow_api import AirflowAPI
from modelops.settings import Settings

DAG_ID = "optimize_model"
console = Console(width=150)


def register_demo_model(settings: Settings, env: dict[str, str], kind: str, name: str, alias: str | None,
                        serialization: str | None = None) -> dict[str, Any]:
    """Train and register a demo model in the worker environment; returns the registration record."""
    cmd = [str(settings.worker_python), "-m", "model_recipes.demo_models", "register", kind, "--name", name]
    if alias:
        cmd += ["--alias", alias]
    if serialization:
        cmd += ["--serialization", serialization]
    proc = subprocess.run(cmd, env={**os.environ, **env, "PYTHONPATH": str(settings.repo_root)}, capture_output=True,
                          text=True, timeout=900, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"registering {name} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def airflow_client(status: dict[str, Any]) -> AirflowAPI:
    af = status["airflow"]
    return AirflowAPI(af["url"], af["username"], af["password"])


def run_optimize(api: AirflowAPI, conf: dict[str, Any], *, show_progress: bool = True, timeout_s: float = 1800) -> tuple[str, str]:
    """Trigger ``optimize_model`` and wait; returns ``(run_id, final state)``."""
    api.wait_for_dag(DAG_ID)
    run = api.trigger(DAG_ID, conf)
    run_id = run["dag_run_id"]
    started = time.monotonic()

    def show(states: dict[str, str | None]) -> None:
        if not show_progress:
            return
        line = "  ".join(f"{t}={_short(s)}" for t, s in states.items())
        console.print(f"[dim]{time.monotonic() - started:6.1f}s[/dim] {line}")

    state = api.wait_for_run(DAG_ID, run_id, timeout_s=timeout_s, on_change=show)
    return run_id, state


def _short(state: str | None) -> str:
    return {"success": "[green]ok[/green]", "failed": "[red]FAILED[/red]", "running": "[yellow]running[/yellow]",
            "skipped": "[cyan]skipped[/cyan]", "upstream_failed": "[red]upstream_failed[/red]"}.get(state or "", state or "-")


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title=f"{summary['model']} v{summary['model_version']}: variants (perf_analyzer, same run)")
    for col in ("variant", "metric", "p50 ms", "p99 ms", "throughput/s", "speedup", "status / reason"):
        table.add_column(col)
    for row in summary["rows"]:
        status = row["status"] + (f": {row['reason']}" if row.get("reason") else "")
        table.add_row(row["variant"], _fmt(row["metric"], ".4f"), _fmt(row["p50_ms"]), _fmt(row["p99_ms"]),
                      _fmt(row["throughput"], ".1f"), _fmt(row["speedup"], ".2f") + ("x" if row["speedup"] else ""),
                      status)
    return table


# demo model -> (kind for model_recipes.demo_models, registered name, DAG params beyond the defaults)
DEMO_MODELS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "digits": ("digits", "digits_cnn", {}),
    "tabular": ("tabular", "breast_cancer_classifier", {}),
    "minilm": ("minilm", "minilm_embedder", {}),
    "mobilenet": ("mobilenet", "mobilenet_v2", {"latency_slo_ms": 500.0}),
}
DEFAULT_DEMO = ("digits", "tabular", "minilm", "mobilenet")


def demo_one(settings: Settings, status: dict[str, Any], api: AirflowAPI, key: str) -> dict[str, Any] | None:
    """Register one demo model as ``<name>@champion`` and run ``optimize_model`` on it; returns the summary."""
    kind, name, extra = DEMO_MODELS[key]
    console.rule(f"[bold]{name}")
    t0 = time.monotonic()
    reg = register_demo_model(settings, stack.client_env(status), kind, name, "champion")
    console.print(f"registered {name} v{reg['version']} in {time.monotonic() - t0:.1f} s")
    t_run = time.monotonic()
    run_id, state = run_optimize(api, {"model_name": name, "model_alias": "champion", "model_version": None, **extra})
    run_s = time.monotonic() - t_run
    if state != "success":
        failed = [t for t, s in api.task_states(DAG_ID, run_id).items() if s == "failed"]
        console.print(f"[red]run {run_id} ended {state}[/red] (failed tasks: {', '.join(failed)}); "
                      f"see the task logs at {status['airflow']['url']}")
        return None
    summary = api.xcom(DAG_ID, run_id, "record")
    summary["dag_run_s"] = round(run_s, 1)
    console.print(summary_table(summary))
    if summary.get("deployment"):
        console.print(f"chosen deployment: [bold]{summary['deployment']}[/bold] ({summary['chosen']}, "
                      f"{_fmt(summary['speedup'])}x the baseline's throughput); DAG run {run_s:.1f} s")
        console.print(f"Triton:  {status['triton']['http']}/v2/models/{summary['deployment']}")
    else:
        console.print(f"[yellow]nothing deployed[/yellow]: {summary.get('reason')}")
    console.print(f"MLflow:  {summary.get('mlflow_run_url') or status['mlflow']['url']}")
    return summary


def main(args: Any = None) -> int:
    settings = Settings.from_env()
    keys = [k.strip() for k in (getattr(args, "models", None) or ",".join(DEFAULT_DEMO)).split(",") if k.strip()]
    unknown = [k for k in keys if k not in DEMO_MODELS]
    if unknown:
        console.print(f"[red]unknown demo models {unknown}; known: {sorted(DEMO_MODELS)}[/red]")
        return 2
    t0 = time.monotonic()
    console.rule("[bold]ModelOps demo")
    console.print("starting the embedded stack (SeaweedFS, MLflow, Triton, Airflow) ...")
    status = stack.up()
    console.print(f"stack ready in {time.monotonic() - t0:.1f} s")
    api = airflow_client(status)
    results = {key: demo_one(settings, status, api, key) for key in keys}
    console.rule("[bold]summary")
    table = Table(title="demo models")
    for col in ("model", "chosen", "speedup", "metric", "DAG run s", "deployment"):
        table.add_column(col)
    for key, summary in results.items():
        if summary is None:
            table.add_row(DEMO_MODELS[key][1], "[red]run failed[/red]", "-", "-", "-", "-")
            continue
        chosen = next((r for r in summary["rows"] if r["variant"] == summary["chosen"]), {})
        table.add_row(summary["model"], summary["chosen"] or "-", _fmt(summary["speedup"]) + "x",
                      _fmt(chosen.get("metric"), ".4f"), _fmt(summary.get("dag_run_s"), ".1f"),
                      summary.get("deployment") or summary.get("reason") or "-")
    console.print(table)
    console.print(f"demo total: {time.monotonic() - t0:.1f} s")
    console.print(f"Airflow: {status['airflow']['url']}/dags/{DAG_ID}  (user {status['airflow']['username']}, "
                  "password: `.venv/bin/modelops stack status --json`)")
    console.print("stop the stack with: [bold].venv/bin/modelops stack down[/bold]  (or `make stack-down`)")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
