"""The demo's progressive rollout: a second version of digits_cnn, promoted step by step under live traffic.

``modelops demo`` ends with this part: it registers a new version of ``digits_cnn`` (alias ``champion`` moves to
it), runs ``optimize_model`` with rollout steps 10 -> 50 -> 100, and while ``rollout_model`` judges each step on
the gateway's metrics in Prometheus, sends steady traffic through the gateway with the demo key (the canary
needs requests to be judged). It prints each routes change as it happens and the judged steps at the end.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from rich.table import Table

from modelops.local.airflow_api import AirflowAPI
from modelops.settings import Settings

ROLLOUT_DAG = "rollout_model"
STEPS = [10, 50, 100]
INTERVAL_S = 20


class Traffic:
    """Closed-loop clients sending one request through the gateway until stopped; counts status codes."""

    def __init__(self, url: str, key: str, model: str, request: dict[str, Any], clients: int = 2):
        self.url, self.model, self.request = url, model, request
        self.headers = {"Authorization": f"Bearer {key}"}
        self.codes: Counter[int] = Counter()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self) -> None:
        import httpx

        with httpx.Client(base_url=self.url, headers=self.headers, trust_env=False, timeout=30.0) as client:
            while not self._stop.is_set():
                try:
                    self.codes[client.post(f"/v2/models/{self.model}/infer", json=self.request).status_code] += 1
                except httpx.HTTPError:
                    self.codes[0] += 1


def steps_table(doc: dict[str, Any]) -> Table:
    """The judged steps of a rollout state document."""
    table = Table(title=f"rollout of {doc['deployment']} (stable {', '.join(doc.get('stable') or []) or '-'}): "
                        f"{doc['status']}")
    for col in ("step", "canary %", "canary requests", "success rate", "canary p99 ms", "stable p99 ms", "verdict"):
        table.add_column(col)
    for entry in doc.get("analysis") or []:
        canary, stable = entry.get("canary") or {}, entry.get("stable") or {}
        verdict = {True: "[green]passed[/green]", False: "[red]failed[/red]"}.get(entry.get("passed"), "no verdict")
        reasons = "; ".join(entry.get("reasons") or [])
        table.add_row(f"{int(entry['step_index']) + 1}/{len(doc['steps'])}", str(entry.get("weight")),
                      _num(canary.get("requests"), ".0f"), _num(canary.get("success_rate"), ".4f"),
                      _num(canary.get("p99_ms"), ".1f"), _num(stable.get("p99_ms"), ".1f"),
                      verdict + (f": {reasons}" if reasons else ""))
    return table


def _num(value: Any, spec: str) -> str:
    return "-" if value is None else format(float(value), spec)


def demo_rollout(settings: Settings, status: dict[str, Any], api: AirflowAPI, key: str) -> dict[str, Any] | None:
    """Register digits_cnn again, optimize it with rollout steps and watch the rollout under traffic.

    Returns the final rollout state document, or None when the optimization or the rollout could not start.
    """
    from modelops.local import demo, stack
    from modelops.rollout.controller import load_state
    from modelops.serving.routes import read_routes
    from modelops.storage import Storage

    console = demo.console
    kind, name, extra = demo.DEMO_MODELS["digits"]
    console.rule(f"[bold]progressive rollout: a new version of {name}")
    reg = demo.register_demo_model(settings, stack.client_env(status), kind, name, "champion")
    console.print(f"registered {name} v{reg['version']} (alias champion moved to it)")
    conf = {"model_name": name, "model_alias": "champion", "model_version": None, "rollout_steps": STEPS,
            "rollout_interval_s": INTERVAL_S, **extra}
    run_id, state = demo.run_optimize(api, conf, show_progress=False)
    if state != "success":
        console.print(f"[red]optimize_model run {run_id} ended {state}[/red]")
        return None
    deployed = api.xcom(demo.DAG_ID, run_id, "deploy") or {}
    if not deployed.get("rollout"):
        console.print(f"{deployed.get('deployment')} took 100% at once (no previous deployment): nothing to roll out")
        return None
    deployment = deployed["deployment"]
    rollout_run = f"rollout__{deployment}"
    console.print(f"{deployment} gets {STEPS[0]}%; rollout_model run {rollout_run} judges each step for "
                  f"{INTERVAL_S} s on live metrics (watch it at {status['airflow']['url']}/dags/{ROLLOUT_DAG})")
    storage = Storage(stack.s3_config(status))
    request = demo.check_gateway(status["gateway"]["url"], key, name)[1]
    traffic = Traffic(status["gateway"]["url"], key, name, request)
    traffic.start()
    started, last = time.monotonic(), None
    try:
        deadline = started + 20 * INTERVAL_S + 300
        while time.monotonic() < deadline:
            weights = read_routes(storage, settings.triton_bucket, name).weights()
            if weights != last:
                console.print(f"[dim]{time.monotonic() - started:6.1f}s[/dim] routes: "
                              + ", ".join(f"{d} {w}%" for d, w in weights.items()))
                last = weights
            run = api.request("GET", f"/dags/{ROLLOUT_DAG}/dagRuns/{rollout_run}")
            if run["state"] in ("success", "failed"):
                break
            time.sleep(1)
    finally:
        traffic.stop()
    doc = load_state(storage, settings.triton_bucket, name)
    if doc is None:
        console.print("[red]no rollout state was written[/red]")
        return None
    console.print(steps_table(doc.to_json()))
    console.print(f"traffic during the rollout: {dict(traffic.codes)} (HTTP status: requests)")
    return doc.to_json()
