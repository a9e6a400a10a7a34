"""Trigger latencies and nightly planning cost -> bench/results/triggers.json.

- push: MLflow alias move -> optimize_model run queued, through the real webhook and receiver;
- pull: the same with the receiver down (the registry_reconcile poll starts the run);
- nightly planning for 1,000 opted-in models against a fake registry that behaves like MlflowClient
  (paged, filtered search; alias lookup), counting registry calls, plus a real-server pass over
  ``--real-models`` models to get the per-call cost of the real registry.

Uses the stack of MODELOPS_STACK_DIR / MODELOPS_PORT_OFFSET (started if needed). Runs started here are for
cheap versions with no model behind them: they fail at resolve, which does not matter for the latencies.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from results_io import write_results

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "plugins")]


class _Page(list):
    def __init__(self, items: list[Any], token: str | None) -> None:
        super().__init__(items)
        self.token = token


class FakeRegistry:
    """MlflowClient's documented behaviour for the two planner calls: ``search_registered_models`` filters on
    the opt-in tag server-side and pages with ``max_results`` / ``page_token``; ``get_model_version_by_alias``
    returns the version the alias points at, with its tags."""

    def __init__(self, n: int, alias_on_newest: bool) -> None:
        from modelops.contracts.naming import TAG_FINGERPRINT, TAG_OPT_IN

        self.models = [SimpleNamespace(name=f"model_{i:05d}", tags={TAG_OPT_IN: "true"} if i % 10 else {},
                                       aliases={"champion": str(1 + i % 7)}) for i in range(int(n * 10 / 9) + 1)]
        self.opted = [m for m in self.models if m.tags][:n]
        self.versions = {m.name: SimpleNamespace(version=m.aliases["champion"],
                                                 tags={TAG_FINGERPRINT: "x", "modelops.status": "deployed"})
                         for m in self.opted}
        for m in self.models:  # latest_versions: the newest version per stage, with its tags (SQL store)
            newest = self.versions.get(m.name) if alias_on_newest else None
            m.latest_versions = [SimpleNamespace(version=newest.version, current_stage="None", tags=newest.tags)
                                 ] if newest else []

    def search_registered_models(self, filter_string=None, max_results=100, page_token=None):
        start = int(page_token or 0)
        token = str(start + max_results) if start + max_results < len(self.opted) else None
        return _Page(self.opted[start:start + max_results], token)

    def get_model_version_by_alias(self, name, alias):
        return self.versions[name]


def bench_planner_fake(n: int, alias_on_newest: bool) -> dict[str, Any]:
    from modelops.triggers.fingerprint import FingerprintContext
    from modelops.triggers.planner import OptimizeDefaults, plan_nightly

    context = FingerprintContext.current()
    plan = plan_nightly(FakeRegistry(n, alias_on_newest), context, OptimizeDefaults())
    s = plan.summary()
    return {"models": s["models"], "planning_s": s["planning_s"], "registry_calls": s["registry_calls"],
            "registry_calls_per_model": s["registry_calls_per_model"], "to_start": s["to_start"]}


def bench_planner_real(client: Any, n: int, th: Any, created: list[str]) -> dict[str, Any]:
    from modelops.contracts.naming import TAG_ALIAS
    from modelops.triggers.fingerprint import FingerprintContext
    from modelops.triggers.planner import OptimizeDefaults, plan_nightly

    t0 = time.perf_counter()
    for _ in range(n):  # alias "bench" is watched by neither webhook nor reconcile: no run starts
        name = th.unique("bench_plan")
        created.append(name)
        (version,) = th.fake_model(client, name, tags={TAG_ALIAS: "bench"})
        client.set_registered_model_alias(name, "bench", version)
    setup_s = time.perf_counter() - t0
    plan = plan_nightly(client, FingerprintContext.current(), OptimizeDefaults())
    s = plan.summary()
    per_model = s["planning_s"] / max(1, s["models"])
    return {"models": s["models"], "planning_s": s["planning_s"], "registry_calls": s["registry_calls"],
            "registry_calls_per_model": s["registry_calls_per_model"], "setup_s": round(setup_s, 1),
            "extrapolated_1000_models_s": round(per_model * 1000, 2)}


def _stats(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "values_s": [round(v, 3) for v in values],
            "median_s": round(statistics.median(values), 3) if values else None,
            "max_s": round(max(values), 3) if values else None}


def bench_push(client: Any, api: Any, th: Any, created: list[str], n: int) -> dict[str, Any]:
    from modelops.triggers.events import run_id_for

    name = th.unique("bench_push")
    created.append(name)
    versions = th.fake_model(client, name, versions=n)
    latencies = []
    for version in versions:
        t0 = time.monotonic()  # before the call: the delivery may leave MLflow before the call returns
        client.set_registered_model_alias(name, "champion", version)
        run, _ = th.wait_run(api, run_id_for(name, version, "alias", "champion"), timeout_s=30, poll_s=0.05)
        latencies.append(time.monotonic() - t0 if run else float("nan"))
    return _stats(latencies)


def bench_pull(client: Any, api: Any, th: Any, created: list[str], proxy: Any, n: int, interval: float) -> dict:
    from modelops.triggers.events import run_id_for

    proxy.stop()
    latencies = []
    try:
        for _ in range(n):
            name = th.unique("bench_pull")
            created.append(name)
            (version,) = th.fake_model(client, name)
            t0 = time.monotonic()
            client.set_registered_model_alias(name, "champion", version)
            run, _ = th.wait_run(api, run_id_for(name, version, "alias", "champion"), timeout_s=interval + 90,
                                 poll_s=0.5)
            latencies.append(time.monotonic() - t0 if run else float("nan"))
    finally:
        proxy.start()
    return {**_stats(latencies), "poll_interval_s": interval}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--planner-models", type=int, default=1000)
    parser.add_argument("--real-models", type=int, default=100, help="models created on the real server (0: skip)")
    parser.add_argument("--push", type=int, default=5, help="alias moves measured through the webhook")
    parser.add_argument("--pull", type=int, default=2, help="alias moves measured with the receiver down")
    args = parser.parse_args(argv)

    results: dict[str, Any] = {
        "planner_fake_alias_on_older_version": bench_planner_fake(args.planner_models, alias_on_newest=False),
        "planner_fake_alias_on_newest_version": bench_planner_fake(args.planner_models, alias_on_newest=True),
    }
    print(json.dumps(results, indent=1))
    from mlflow import MlflowClient

    from modelops.local import stack, webhook_cli
    from modelops.local.demo import airflow_client
    from modelops.triggers.events import TriggerConfig
    from tests.integration import triggers_helpers as th

    status = stack.up()
    os.environ.update(stack.client_env(status))
    client = MlflowClient(status["mlflow"]["url"], registry_uri=status["mlflow"]["url"])
    api = airflow_client(status)
    th.unpause(api, "optimize_model", "registry_reconcile")
    proxy = th.ForwardingProxy(f"{status['airflow']['url']}{webhook_cli.RECEIVER_PATH}")
    created: list[str] = []
    try:
        webhook_cli.register(url=proxy.url)
        results["webhook_live_after_s"] = round(th.wait_webhook_live(client, proxy), 2)
        if args.real_models:
            results["planner_real"] = bench_planner_real(client, args.real_models, th, created)
            print(json.dumps(results["planner_real"]))
        results["push_event_to_run_queued"] = bench_push(client, api, th, created, args.push)
        print(json.dumps(results["push_event_to_run_queued"]))
        interval = TriggerConfig.from_env().poll_interval_s
        results["pull_event_to_run_queued"] = bench_pull(client, api, th, created, proxy, args.pull, interval)
        print(json.dumps(results["pull_event_to_run_queued"]))
    finally:
        webhook_cli.unregister()
        proxy.stop()
        for name in created:
            try:
                client.delete_registered_model(name)
            except Exception as exc:  # noqa: BLE001 - cleanup is best effort
                print(f"cleanup of {name}: {exc}", file=sys.stderr)
    results["notes"] = ("push goes MLflow -> forwarding proxy (~1 ms) -> receiver; latency is measured from the "
                        "alias call starting to the run being visible in Airflow's REST API (polled every 50 ms). "
                        "pull latency is poll phase (0..interval) + the registry_reconcile run.")
    out = write_results("triggers", results)
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
