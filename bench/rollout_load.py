"""Rollout under load (issue 10): steady traffic through the gateway across a promotion and a rollback.

On the running stack (``modelops stack up``), with synthetic deployments (:mod:`modelops.local.synthetic`)
of a fresh model name:

1. ``stable`` (``y = x + 1``) is loaded and routed 100%;
2. a good canary (``y = x + 2``) is rolled out by the ``rollout_model`` DAG, steps 10 -> 50 -> 100, and must
   be promoted;
3. a slow canary (correct, 100 ms slower) is rolled out next and must be rolled back on its p99.

A closed-loop client (concurrency 8, aiohttp) sends requests through the gateway the whole time. Written
to ``bench/results/rollout_load.json``: requests and failures (target: 0 failed requests), the answers per
deployment, the time each step took, and the time from the slow step's start to the routes being back on
the stable deployment. ``--quick`` uses 10 s intervals (the default 20 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from results_io import write_results

REPO = Path(__file__).resolve().parent.parent
CONCURRENCY = 8


class Load:
    """Closed-loop load through the gateway in a thread of its own; counts answers by code and deployment."""

    def __init__(self, url: str, key: str, body: bytes, concurrency: int = CONCURRENCY):
        self.url, self.body, self.concurrency = url, body, concurrency
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.codes: Counter[int] = Counter()
        self.deployments: Counter[str] = Counter()
        self.failures: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    @property
    def requests(self) -> int:
        return sum(self.codes.values())

    async def _run(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
            await asyncio.gather(*(self._worker(session) for _ in range(self.concurrency)))

    async def _worker(self, session: aiohttp.ClientSession) -> None:
        while not self._stop.is_set():
            try:
                async with session.post(self.url, data=self.body, headers=self.headers) as response:
                    text = await response.read()
                    self.codes[response.status] += 1
                    self.deployments[response.headers.get("x-modelops-deployment", "")] += 1
                    if response.status != 200 and len(self.failures) < 20:
                        self.failures.append({"at": time.time(), "code": response.status, "body": text[:200].decode()})
            except aiohttp.ClientError as exc:
                self.codes[0] += 1
                if len(self.failures) < 20:
                    self.failures.append({"at": time.time(), "code": 0, "body": repr(exc)[:200]})


def _keys(*args: str) -> str:
    return subprocess.run([str(REPO / ".venv" / "bin" / "modelops"), "keys", *args],
                          check=True, capture_output=True, text=True).stdout


def _rollout(api: Any, storage: Any, bucket: str, model: str, canary: str, conf: dict[str, Any]) -> dict[str, Any]:
    """Run rollout_model for ``canary`` and wait; the run's state, wall time and per-step timings."""
    from modelops.rollout.controller import load_state

    run_id = f"rollout__{canary}"
    started = time.time()
    api.trigger("rollout_model", {"model_name": model, "deployment": canary, **conf}, run_id=run_id)
    state = api.wait_for_run("rollout_model", run_id, timeout_s=900, poll_s=1.0)
    doc = load_state(storage, bucket, model)
    return {"dag_run_state": state, "wall_s": round(time.time() - started, 1),
            "rollout": doc.to_json() if doc is not None else None}


def _routes_back_at(storage: Any, bucket: str, model: str, stable: str, since: float, timeout_s: float) -> float | None:
    from modelops.serving.routes import read_routes

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if read_routes(storage, bucket, model).weights() == {stable: 100}:
            return time.time() - since
        time.sleep(0.2)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 s intervals instead of 20 s")
    args = parser.parse_args(argv)
    interval = 10 if args.quick else 20

    from modelops.local import stack
    from modelops.local.demo import airflow_client
    from modelops.local.synthetic import publish_synthetic, request_body
    from modelops.serving.routes import read_routes, write_routes
    from modelops.serving.triton.admin import with_admin

    status = stack.status()
    os.environ.update(stack.client_env(status))
    import tritonclient.http as httpclient

    from modelops.settings import Settings
    from modelops.storage import Storage

    settings, storage = Settings.from_env(), Storage()
    bucket = settings.triton_bucket
    triton = with_admin(httpclient.InferenceServerClient(status["triton"]["http"].removeprefix("http://")),
                        status["triton"]["admin_header"], status["triton"]["admin_token"])
    model = f"rollout_bench_{uuid.uuid4().hex[:6]}"
    stable, good, slow = (f"{model}--v0-{n}" for n in ("stable", "good", "slow"))
    publish_synthetic(storage, bucket, model, stable, k=1)
    publish_synthetic(storage, bucket, model, good, k=2)
    publish_synthetic(storage, bucket, model, slow, k=3, behaviour="slow", delay_ms=100, trigger=0)
    for deployment in (stable, good, slow):
        triton.load_model(deployment)
    write_routes(storage, bucket, read_routes(storage, bucket, model), {stable: 100}, by="bench/rollout_load.py")

    key_name = f"bench-rollout-{int(time.time())}"
    key = json.loads(_keys("create", "--name", key_name, "--models", model, "--json"))["key"]
    api = airflow_client(status)
    api.wait_for_dag("rollout_model")
    time.sleep(2)  # the gateway polls routes every 0.5 s
    load = Load(f"{status['gateway']['url']}/v2/models/{model}/infer", key, request_body(20.0))
    conf = {"steps": [10, 50, 100], "interval_s": interval, "min_requests": 20}
    results: dict[str, Any] = {"model": model, "concurrency": CONCURRENCY, "interval_s": interval}
    load.start()
    try:
        time.sleep(5)
        results["promotion"] = _rollout(api, storage, bucket, model, good, conf)
        after_promotion = load.requests
        slow_started = time.time()
        results["rollback"] = _rollout(api, storage, bucket, model, slow, conf)
        back = _routes_back_at(storage, bucket, model, good, slow_started, 5)
        results["rollback"]["routes_back_on_stable_after_s"] = round(back, 1) if back is not None else None
        time.sleep(3)
    finally:
        load.stop()
        _keys("revoke", key_name)
        for deployment in (stable, good, slow):
            try:
                triton.unload_model(deployment)
            except Exception:  # noqa: BLE001 - best effort cleanup of the bench's own deployments
                pass
    results["requests"] = load.requests
    results["requests_during_promotion"] = after_promotion
    results["failed_requests"] = load.requests - load.codes.get(200, 0)
    results["codes"] = {str(c): n for c, n in load.codes.items()}
    results["answered_by"] = dict(load.deployments)
    results["first_failures"] = load.failures
    for phase in ("promotion", "rollback"):
        analysis = ((results[phase].get("rollout") or {}).get("analysis")) or []
        results[phase]["steps"] = [{k: a.get(k) for k in ("step_index", "weight", "at", "passed", "reasons")}
                                   for a in analysis]
    write_results("rollout_load", results)
    print(json.dumps({k: v for k, v in results.items() if k not in ("promotion", "rollback")}, indent=2))
    print(json.dumps({p: {k: results[p].get(k) for k in ("dag_run_state", "wall_s", "steps",
                                                          "routes_back_on_stable_after_s")}
                      for p in ("promotion", "rollback")}, indent=2, default=str))
    return 0 if results["failed_requests"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
