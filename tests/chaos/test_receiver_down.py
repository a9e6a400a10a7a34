"""The webhook receiver down while 20 registry events happen, then the registry reconcile.

MLflow delivers to a forwarding proxy in front of the receiver (proved live first); stopping the proxy is the
receiver down: MLflow's deliveries are refused, it retries three times and drops them; it stays down while the
registry reconcile (pull) recovers the events. The 20 events are those
the webhook handles: 10 ``champion`` alias moves on opted-in models and 10 ``modelops.optimize=true`` tags on
versions of a model that is not opted in. Lost after the reconcile: nothing (every event has its run, with
the reconcile's note, whether its scheduled registry poll or the run triggered here started it); none came
through the webhook path.
"""

from __future__ import annotations

import contextlib
import time

import pytest

from modelops.contracts.naming import TAG_OPT_IN
from modelops.local import webhook_cli
from modelops.triggers.events import run_id_for
from tests.chaos.conftest import runs_for_model
from tests.integration import triggers_helpers as th

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

ALIAS_MODELS = 10
TAGGED_VERSIONS = 10
RECONCILE_WAIT_S = 240  # a reconcile run (20 mapped trigger tasks) on a busy 2-core machine


@pytest.fixture(scope="module")
def outage(stack, mlflow_client, airflow, quiet_optimize):
    th.unpause(airflow, "registry_reconcile")
    proxy = th.ForwardingProxy(f"{stack['airflow']['url'].rstrip('/')}{webhook_cli.RECEIVER_PATH}")
    webhook_cli.register(url=proxy.url)
    models: list[str] = []
    try:
        th.wait_webhook_live(mlflow_client, proxy)  # MLflow delivers (so the outage below is one)
        aliased = [th.unique("chaos_down") for _ in range(ALIAS_MODELS)]
        tagged = th.unique("chaos_tagdown")
        models += [*aliased, tagged]
        versions = {name: th.fake_model(mlflow_client, name)[0] for name in aliased}
        tag_versions = th.fake_model(mlflow_client, tagged, versions=TAGGED_VERSIONS, opted_in=False)
        expected = {run_id_for(n, v, "alias", "champion"): (n, v, "reconcile: alias champion")
                    for n, v in versions.items()}
        expected.update({run_id_for(tagged, v, "tag", "optimize"): (tagged, v, "reconcile: tag")
                         for v in tag_versions})
        quiet_optimize.extend(expected)
        proxy.stop()
        seen = len(proxy.deliveries)
        down_at = time.monotonic()
        for name, version in versions.items():
            mlflow_client.set_registered_model_alias(name, "champion", version)
        for version in tag_versions:
            mlflow_client.set_model_version_tag(tagged, version, TAG_OPT_IN, "true")
        time.sleep(12)  # MLflow's three retries (1 + 2 + 4 s backoff) are spent: the events are lost
        during = {run_id: th.get_run(airflow, run_id) for run_id in expected}
        lost_deliveries = sum(1 for d in proxy.deliveries[seen:]
                              if b"model_version_alias" in d.body or b"model_version_tag" in d.body)
        # The receiver stays down for MLflow (a late retry would reach it otherwise): the pull side alone recovers.
        reconcile = airflow.trigger("registry_reconcile", {})
        found: dict[str, dict | None] = {}
        deadline = time.monotonic() + RECONCILE_WAIT_S
        while time.monotonic() < deadline:
            found = {run_id: th.get_run(airflow, run_id) for run_id in expected}
            if all(found.values()):
                break
            time.sleep(3)
        print(f"\nreceiver down: 20 events, recovered {sum(1 for r in found.values() if r)} runs "
              f"{time.monotonic() - down_at:.0f} s after the outage began "
              f"({sum(1 for r in during.values() if r)} by the scheduled poll within the first 12 s)")
        yield {"expected": expected, "during": during, "found": found, "lost_deliveries": lost_deliveries,
               "reconcile": reconcile}
    finally:
        proxy.stop()
        webhook_cli.unregister()
        for name in models:  # leave no opted-in model behind for later sessions on a kept stack
            with contextlib.suppress(Exception):
                mlflow_client.delete_registered_model(name)


def test_no_event_reached_the_receiver(outage):
    """MLflow's deliveries were all refused, and no run came from the webhook path (the reconcile's scheduled
    registry poll may already have started some of them during the outage: their note says reconcile)."""
    assert outage["lost_deliveries"] == 0
    early = {run_id: run.get("note") for run_id, run in outage["during"].items() if run is not None}
    assert all((note or "").startswith("reconcile:") for note in early.values()), early


def test_reconcile_recovers_every_event(outage):
    missing = [run_id for run_id, run in outage["found"].items() if run is None]
    assert missing == [], f"{len(missing)} of 20 events not recovered within {RECONCILE_WAIT_S} s: {missing}"
    for run_id, (model, version, note) in outage["expected"].items():
        run = outage["found"][run_id]
        assert run["conf"]["model_name"] == model and run["conf"]["model_version"] == str(version)
        assert (run.get("note") or "").startswith(note), run.get("note")


def test_reconcile_starts_exactly_one_run_per_event(outage, airflow):
    for model in {m for m, _, _ in outage["expected"].values()}:
        ids = sorted(runs_for_model(airflow, model))
        assert ids == sorted(k for k, (m, _, _) in outage["expected"].items() if m == model)
