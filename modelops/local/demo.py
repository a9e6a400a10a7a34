"""``modelops demo``: stack up, register the demo models as ``champion``, run ``optimize_model`` on each through
Airflow's REST API, show task progress, check that every deployed model answers through the serving gateway
with the demo's API key, then print the summary, a working curl line and how to stop the stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from modelops.local import stack
from modelops.local.airflow_api import AirflowAPI
from modelops.settings import Settings

DAG_ID = "optimize_model"
console = Console(width=150)


def register_demo_model(settings: Settings, env: dict[str, str], kind: str, name: str, alias: str | None,
                        serialization: str | None = None, allow_pickle: bool | None = None) -> dict[str, Any]:
    """Train and register a demo model in the worker environment; returns the registration record.

    ``allow_pickle`` tags the version ``modelops.allow_pickle=true`` (True), never (False) or when it is saved in a
    format whose loading runs code (None: pickle, cloudpickle, skops with extra trusted types), as the stack's
    MLflow admin who trained it would.
    """
    cmd = [str(settings.worker_python), "-m", "model_recipes.demo_models", "register", kind, "--name", name,
           "--allow-pickle", {None: "auto", True: "yes", False: "no"}[allow_pickle]]
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


def summary_table(summary: dict[str, Any], llm: bool = False) -> Table:
    """The run's variants; ``llm``: metric = next-token agreement, latencies = TTFT, throughput = output tokens/s."""
    how = "streamed in Triton, same run" if llm else "perf_analyzer, same run"
    table = Table(title=f"{summary['model']} v{summary['model_version']}: variants ({how})")
    cols = ("agreement", "TTFT p50 ms", "TTFT p99 ms", "tokens/s") if llm else ("metric", "p50 ms", "p99 ms",
                                                                               "throughput/s")  # fmt: skip
    for col in ("variant", *cols, "speedup", "status / reason"):
        table.add_column(col)
    for row in summary["rows"]:
        status = row["status"] + (f": {row['reason']}" if row.get("reason") else "")
        table.add_row(row["variant"], _fmt(row["metric"], ".4f"), _fmt(row["p50_ms"]), _fmt(row["p99_ms"]),
                      _fmt(row["throughput"], ".1f"), _fmt(row["speedup"], ".2f") + ("x" if row["speedup"] else ""),
                      status)
    for variant, res in (summary.get("not_built") or {}).items():  # skipped or failed in optimize: never measured
        table.add_row(variant, "-", "-", "-", "-", "-", f"{res.get('status')}: {res.get('reason') or ''}".rstrip(": "))
    return table


def eval_data_line(summary: dict[str, Any]) -> str:
    """Where the gate's rows came from (``modelops.eval_data``), in one line under the variants table."""
    data = summary.get("eval_data") or {}
    rows = f": {data['eval_rows']} gate rows, {data.get('calibration_rows', 0)} calibration rows" if data.get(
        "eval_rows") else ""
    note = f" [yellow]({data['note']})[/yellow]" if data.get("note") else ""
    return f"eval data: {data.get('source', '?')} ({data.get('origin', '')}){rows}{note}"


# demo model -> (kind for model_recipes.demo_models, registered name, DAG params beyond the defaults)
DEMO_MODELS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "digits": ("digits", "digits_cnn", {}),
    "tabular": ("tabular", "breast_cancer_classifier", {}),
    "minilm": ("minilm", "minilm_embedder", {}),
    "mobilenet": ("mobilenet", "mobilenet_v2", {"latency_slo_ms": 500.0}),
}
DEFAULT_DEMO = ("digits", "tabular", "minilm", "mobilenet")
DEMO_KEY_NAME = "demo"
DEMO_TEXT = "ModelOps serves this sentence through the gateway."


def demo_key(status: dict[str, Any]) -> tuple[str, Path, bool]:
    """The demo's API key (granted ``*``), kept in ``<keys dir>/demo.key`` (mode 600) across demo runs.

    A stored key that still works is reused; otherwise the active key named ``demo`` (its secret lost) is
    revoked and a new one created. Returns ``(key, key file, created now)``.
    """
    from modelops.local.stack.state import write_private
    from modelops.serving.gateway.keys import KeyStore, split_key

    store = KeyStore(Path(status["gateway"]["keys_db"]))
    path = store.path.parent / "demo.key"
    if path.exists():
        key = path.read_text().strip()
        parts = split_key(key)
        stored = store.lookup(parts[0]) if parts else None
        if parts and stored and stored.key.name == DEMO_KEY_NAME and store.verify(stored, parts[1]):
            return key, path, False
    if any(k.name == DEMO_KEY_NAME and k.active for k in store.list()):
        store.revoke(DEMO_KEY_NAME)
    _, key = store.create(DEMO_KEY_NAME, "*")
    write_private(path, key + "\n")
    return key, path, True


def sample_request(metadata: dict[str, Any]) -> dict[str, Any]:
    """A KServe v2 JSON request of batch 1 for a model's metadata: raw text for BYTES inputs, zeros otherwise."""
    inputs = []
    for tensor in metadata["inputs"]:
        shape = [1 if int(d) < 0 else int(d) for d in tensor["shape"]]
        count = 1
        for d in shape:
            count *= d
        data: list[Any] = [DEMO_TEXT] * count if tensor["datatype"] == "BYTES" else [0] * count
        inputs.append({"name": tensor["name"], "shape": shape, "datatype": tensor["datatype"], "data": data})
    return {"inputs": inputs}


def check_gateway(url: str, key: str, model: str, timeout_s: float = 30.0) -> tuple[str, dict[str, Any]]:
    """One real inference of ``model`` through the gateway; returns ``(deployment that answered, request)``.

    Retries while the gateway has not yet read the model's routes (404/503) for up to ``timeout_s``.

    Raises:
        RuntimeError: the model did not answer 200 (with the gateway's error message).
    """
    import httpx

    headers = {"Authorization": f"Bearer {key}"}
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, headers=headers, trust_env=False, timeout=60.0) as client:
        while True:
            meta = client.get(f"/v2/models/{model}")
            if meta.status_code == 200:
                request = sample_request(meta.json())
                answer = client.post(f"/v2/models/{model}/infer", json=request)
                if answer.status_code == 200:
                    return answer.headers.get("x-modelops-deployment", "?"), request
            else:
                answer = meta
            if answer.status_code not in (404, 503) or time.monotonic() > deadline:
                error = answer.json().get("error") if answer.headers.get("content-type", "").endswith("json") else ""
                raise RuntimeError(f"{model} through the gateway: HTTP {answer.status_code} {error or answer.text[:200]}")
            time.sleep(0.5)


def gateway_summary(status: dict[str, Any], models: list[str]) -> bool:
    """Check every deployed demo model through the gateway with the demo key; print the URL and a curl line."""
    if not models:
        return True
    url = status["gateway"]["url"]
    key, key_file, created = demo_key(status)
    table = Table(title=f"through the serving gateway {url}")
    for col in ("model", "answered by", "status"):
        table.add_column(col)
    requests: dict[str, dict[str, Any]] = {}
    for model in models:
        try:
            deployment, requests[model] = check_gateway(url, key, model)
            table.add_row(model, deployment, "[green]200[/green]")
        except (RuntimeError, OSError) as exc:
            table.add_row(model, "-", f"[red]{exc}[/red]")
    console.print(table)
    console.print(f"gateway: {url}  (metrics {status['gateway']['metrics']})")
    if created:
        console.print(f"API key (granted '*', shown once, also kept in {key_file}):\n  {key}")
    console.print(f"KEY=$(cat {key_file})")
    if requests:
        model = min(requests, key=lambda m: len(json.dumps(requests[m])))
        body = json.dumps(requests[model], separators=(",", ":"))
        console.print(f'curl -H "Authorization: Bearer $KEY" {url}/v2/models/{model}/infer -d \'{body}\'',
                      soft_wrap=True, highlight=False, markup=False)
    return len(requests) == len(models)


def demo_one(settings: Settings, status: dict[str, Any], api: AirflowAPI, key: str) -> dict[str, Any] | None:
    """Register one demo model as ``<name>@champion`` and run ``optimize_model`` on it; returns the summary."""
    kind, name, extra = DEMO_MODELS[key]
    console.rule(f"[bold]{name}")
    t0 = time.monotonic()
    reg = register_demo_model(settings, stack.client_env(status), kind, name, "champion")
    console.print(f"registered {name} v{reg['version']} in {time.monotonic() - t0:.1f} s")
    t_run = time.monotonic()
    # the four models replace whatever they had at once; the rollout part below shows the progressive path
    run_id, state = run_optimize(api, {"model_name": name, "model_alias": "champion", "model_version": None,
                                       "rollout_steps": [100], **extra})
    run_s = time.monotonic() - t_run
    if state != "success":
        failed = [t for t, s in api.task_states(DAG_ID, run_id).items() if s == "failed"]
        console.print(f"[red]run {run_id} ended {state}[/red] (failed tasks: {', '.join(failed)}); "
                      f"see the task logs at {status['airflow']['url']}")
        return None
    summary = api.xcom(DAG_ID, run_id, "record")
    summary["dag_run_s"] = round(run_s, 1)
    console.print(summary_table(summary))
    console.print(eval_data_line(summary))
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
    console.print("starting the embedded stack (SeaweedFS, MLflow, Triton, gateway, Airflow) ...")
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
    served = gateway_summary(status, [s["model"] for s in results.values() if s and s.get("deployment")])
    chatted = True
    if not getattr(args, "no_chat", False):
        from modelops.local.demo_chat import demo_chat

        chatted = demo_chat(settings, stack.status())
    rolled = True
    if "digits" in keys and results.get("digits") and not getattr(args, "no_rollout", False):
        from modelops.local.demo_rollout import demo_rollout

        outcome = demo_rollout(settings, status, api, demo_key(status)[0])
        rolled = bool(outcome) and outcome["status"] == "promoted"
    console.print(f"demo total: {time.monotonic() - t0:.1f} s")
    console.print(f"Airflow: {status['airflow']['url']}/dags/{DAG_ID} and /dags/rollout_model  (user {status['airflow']['username']}, "
                  "password: `.venv/bin/modelops stack status --json`)")
    console.print("stop the stack with: [bold].venv/bin/modelops stack down[/bold]  (or `make stack-down`)")
    return 0 if all(results.values()) and served and rolled and chatted else 1


if __name__ == "__main__":
    sys.exit(main())
