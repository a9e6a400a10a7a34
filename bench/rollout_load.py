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
import contextlib
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


class RoutesWatch:
    """Polls the routes file every 0.2 s in a thread and keeps each change: ``(time, weights)``."""

    def __init__(self, storage: Any, bucket: str, model: str):
        self.storage, self.bucket, self.model = storage, bucket, model
        self.changes: list[tuple[float, dict[str, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        from modelops.serving.routes import read_routes

        while not self._stop.is_set():
            weights = read_routes(self.storage, self.bucket, self.model).weights()
            if not self.changes or self.changes[-1][1] != weights:
                self.changes.append((time.time(), weights))
            time.sleep(0.2)

    def timeline(self, since: float) -> list[dict[str, Any]]:
        """Each routes state after ``since`` with how long it lasted (the last one: until now)."""
        rows = [(t, w) for t, w in self.changes if t >= since]
        out = []
        for i, (t, w) in enumerate(rows):
            end = rows[i + 1][0] if i + 1 < len(rows) else time.time()
            out.append({"at_s": round(t - since, 1), "held_s": round(end - t, 1), "weights": w})
        return out


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


def _bad_step_to_rollback_s(timeline: list[dict[str, Any]], canary: str, stable: str) -> float | None:
    """Seconds from the routes first giving ``canary`` traffic to their being back at ``stable`` 100%."""
    start = next((r["at_s"] for r in timeline if r["weights"].get(canary)), None)
    if start is None:
        return None
    back = next((r["at_s"] for r in timeline if r["at_s"] > start and r["weights"] == {stable: 100}), None)
    return round(back - start, 1) if back is not None else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 s intervals instead of 20 s")
    args = parser.parse_args(argv)
    interval = 10 if args.quick else 20

    from modelops.contracts.naming import routes_uri
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
    watch = RoutesWatch(storage, bucket, model)
    load.start()
    watch.start()
    try:
        time.sleep(5)
        promotion_started = time.time()
        results["promotion"] = _rollout(api, storage, bucket, model, good, conf)
        after_promotion = load.requests
        slow_started = time.time()
        results["rollback"] = _rollout(api, storage, bucket, model, slow, conf)
        time.sleep(3)
    finally:
        load.stop()
        watch.stop()
        _keys("revoke", key_name)
        # the bench's model leaves no desired state behind (the reconciler would keep loading it)
        storage.delete(routes_uri(bucket, model))
        for deployment in (stable, good, slow):
            with contextlib.suppress(Exception):
                triton.unload_model(deployment)
    results["requests"] = load.requests
    results["requests_during_promotion"] = after_promotion
    results["failed_requests"] = load.requests - load.codes.get(200, 0)
    results["codes"] = {str(c): n for c, n in load.codes.items()}
    results["answered_by"] = dict(load.deployments)
    results["first_failures"] = load.failures
    results["promotion"]["routes_timeline"] = watch.timeline(promotion_started)
    results["rollback"]["routes_timeline"] = timeline = watch.timeline(slow_started)
    results["rollback"]["bad_step_to_full_rollback_s"] = _bad_step_to_rollback_s(timeline, slow, good)
    for phase in ("promotion", "rollback"):
        analysis = ((results[phase].get("rollout") or {}).get("analysis")) or []
        results[phase]["steps"] = [{k: a.get(k) for k in ("step_index", "weight", "at", "passed", "reasons")}
                                   for a in analysis]
    write_results("rollout_load", results)
    print(json.dumps({k: v for k, v in results.items() if k not in ("promotion", "rollback")}, indent=2))
    print(json.dumps({p: {k: results[p].get(k) for k in ("dag_run_state", "wall_s", "steps", "routes_timeline",
                                                          "bad_step_to_full_rollback_s")}
                      for p in ("promotion", "rollback")}, indent=2, default=str))
    return 0 if results["failed_requests"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
