"""Triggers on the real stack: MLflow webhooks -> receiver -> runs, the registry reconcile, the nightly plan.

MLflow delivers real signed webhooks through a forwarding proxy (stopping it = the receiver is down). Runs
are started for cheap registered versions whose source is no model: they fail at resolve, which is all a
trigger test needs (a run with the right id and conf exists, and one of them is seen leaving the queue).
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid

import pytest

from modelops.contracts.naming import TAG_ALIAS, TAG_FINGERPRINT
from modelops.triggers.events import TriggerConfig, run_id_for
from modelops.triggers.signature import load_secret, sign
from tests.integration import triggers_helpers as th

pytestmark = pytest.mark.integration
RECONCILE_WAIT_S = TriggerConfig.from_env().poll_interval_s + 60  # one poll interval + scheduling on 2 cores


@pytest.fixture(scope="module")
def world(stack, mlflow_client, airflow):
    """Receiver behind a proxy, the MLflow webhook registered and live, the trigger DAGs unpaused."""
    from modelops.local import webhook_cli

    th.unpause(airflow, "optimize_model", "registry_reconcile", "nightly_reoptimize")
    receiver = f"{stack['airflow']['url']}{webhook_cli.RECEIVER_PATH}"
    proxy = th.ForwardingProxy(receiver)
    # registered as against any deployment: its MLflow, Airflow and the secret file the receiver reads, no stack state
    from modelops.local.stack.auth import use_mlflow_credentials
    from modelops.settings import Settings
    from modelops.triggers.signature import secret_path

    use_mlflow_credentials(stack)  # as a deployment's operator: an MLflow admin's MLFLOW_TRACKING_USERNAME/_PASSWORD
    where = webhook_cli.target(mlflow_url=stack["mlflow"]["url"], airflow_url=stack["airflow"]["url"],
                               secret_file=str(secret_path(Settings.from_env().stack_dir)))
    assert where.receiver_url == receiver
    registered = webhook_cli.register(url=proxy.url, where=where)
    live_after = th.wait_webhook_live(mlflow_client, proxy)
    models: list[str] = []
    yield {"proxy": proxy, "receiver": receiver, "webhook": registered, "live_after_s": live_after, "models": models}
    webhook_cli.unregister(where)
    proxy.stop()
    for name in models:  # leave no opted-in model behind for later sessions on a kept stack
        with contextlib.suppress(Exception):
            mlflow_client.delete_registered_model(name)


@pytest.fixture(scope="module")
def pushed(world, mlflow_client, airflow):
    """An opted-in model whose champion alias was set while the receiver was up: (model, run id, latency)."""
    name = th.unique("trig_push")
    world["models"].append(name)
    (version,) = th.fake_model(mlflow_client, name)
    mlflow_client.set_registered_model_alias(name, "champion", version)
    run_id = run_id_for(name, version, "alias", "champion")
    run, waited = th.wait_run(airflow, run_id, timeout_s=30)
    return {"model": name, "version": version, "run_id": run_id, "run": run, "latency_s": waited}


@pytest.fixture(scope="module")
def pulled(world, mlflow_client):
    """Registry facts no webhook reports: an alias moved while the receiver was down, a legacy stage change."""
    down = th.unique("trig_down")
    staged = th.unique("trig_stage")
    world["models"] += [down, staged]
    v_down = th.fake_model(mlflow_client, down, versions=2)
    (v_stage,) = th.fake_model(mlflow_client, staged)
    world["proxy"].stop()
    seen = len(world["proxy"].deliveries)
    mlflow_client.set_registered_model_alias(down, "champion", v_down[1])
    moved_at = time.monotonic()
    mlflow_client.transition_model_version_stage(staged, v_stage, "Production")
    time.sleep(12)  # MLflow's three retries (1 + 2 + 4 s backoff) are spent: the alias event is lost
    world["proxy"].start()
    return {"down": down, "down_version": v_down[1], "staged": staged, "stage_version": v_stage,
            "moved_at": moved_at, "deliveries_before": seen}


def test_alias_set_starts_a_run(pushed):
    run = pushed["run"]
    assert run is not None, f"no run {pushed['run_id']} within 30 s of the alias move"
    assert run["conf"] == {"model_name": pushed["model"], "model_version": pushed["version"], "model_alias": None}
    assert (run.get("note") or "").startswith("webhook: alias champion")
    print(f"push latency (alias set -> run queued): {pushed['latency_s'] * 1000:.0f} ms")
    assert pushed["latency_s"] < 10


def test_forged_signature_is_rejected_and_starts_nothing(world, airflow):
    model = th.unique("trig_forged")
    body = json.dumps({"entity": "model_version_tag", "action": "set", "timestamp": "now",
                       "data": {"name": model, "version": "1", "key": "modelops.optimize", "value": "true"}}).encode()
    ts, delivery = str(int(time.time())), str(uuid.uuid4())
    forged = {"Content-Type": "application/json", "X-MLflow-Delivery-Id": delivery, "X-MLflow-Timestamp": ts,
              "X-MLflow-Signature": sign("not-the-secret", delivery, ts, body)}
    status, answer = th.post(world["receiver"], body, forged)
    assert status == 401, answer
    stale_ts = str(int(time.time()) - 600)
    stale = {**forged, "X-MLflow-Timestamp": stale_ts, "X-MLflow-Signature": sign(load_secret(), delivery, stale_ts, body)}
    assert th.post(world["receiver"], body, stale)[0] == 400
    run_id = run_id_for(model, 1, "tag", "optimize")
    time.sleep(2)
    assert th.get_run(airflow, run_id) is None
    # Control: the same event, correctly signed, is accepted (so the rejection above was the signature's).
    genuine = {**forged, "X-MLflow-Signature": sign(load_secret(), delivery, ts, body)}
    assert th.post(world["receiver"], body, genuine)[0] == 202
    assert th.wait_run(airflow, run_id, timeout_s=20)[0] is not None


def test_replayed_delivery_starts_no_second_run(world, pushed, airflow):
    original = next(d for d in world["proxy"].deliveries if pushed["model"].encode() in d.body
                    and b"model_version_alias" in d.body)
    assert original.status == 202
    status, answer = th.post(world["receiver"], original.body, original.headers)
    assert status == 409, answer
    assert [r["dag_run_id"] for r in th.runs_for_model(airflow, pushed["model"])] == [pushed["run_id"]]


def test_nightly_starts_changed_fingerprints_and_skips_unchanged(world, pulled, mlflow_client, airflow):
    from modelops.triggers.fingerprint import FingerprintContext
    from modelops.triggers.planner import OptimizeDefaults, plan_nightly

    same, changed, fresh = th.unique("trig_same"), th.unique("trig_changed"), th.unique("trig_fresh")
    world["models"] += [same, changed, fresh]
    # The nightly follows each model's modelops.alias; "nightly" is no alias the push/pull triggers watch, so
    # only the nightly plan can start runs for these models.
    for name in (same, changed, fresh):
        (version,) = th.fake_model(mlflow_client, name, tags={TAG_ALIAS: "nightly"})
        mlflow_client.set_registered_model_alias(name, "nightly", version)
    # Planned in this process exactly as the DAG plans: record "same" as already deployed with this fingerprint.
    plan = plan_nightly(mlflow_client, FingerprintContext.current(), OptimizeDefaults())
    by_model = {i.model: i for i in plan.items}
    assert plan.summary()["registry_calls_per_model"] <= 2
    mlflow_client.set_model_version_tag(same, "1", TAG_FINGERPRINT, by_model[same].fingerprint)
    mlflow_client.set_model_version_tag(same, "1", "modelops.status", "deployed")
    mlflow_client.set_model_version_tag(changed, "1", TAG_FINGERPRINT, "0123456789abcdef")
    mlflow_client.set_model_version_tag(changed, "1", "modelops.status", "deployed")

    run = airflow.trigger("nightly_reoptimize", {"models": [same, changed, fresh], "dry_run": False})
    assert airflow.wait_for_run("nightly_reoptimize", run["dag_run_id"], timeout_s=240) == "success"
    summary = airflow.xcom("nightly_reoptimize", run["dag_run_id"], "summarize")
    started = {s["model"]: s for s in summary["started"]}
    skipped = {s["model"]: s["reason"] for s in summary["skipped"]}
    assert set(started) == {changed, fresh} and "unchanged" in skipped[same]
    assert "fingerprint changed" in started[changed]["reason"]
    for name in (changed, fresh):
        assert th.get_run(airflow, started[name]["run_id"]) is not None
        assert mlflow_client.get_model_version(name, "1").tags[TAG_FINGERPRINT] == by_model[name].fingerprint
    assert [r["dag_run_id"] for r in th.runs_for_model(airflow, same)] == []


def test_receiver_down_then_reconcile_starts_the_run(world, pulled, airflow):
    run_id = run_id_for(pulled["down"], pulled["down_version"], "alias", "champion")
    lost = [d for d in world["proxy"].deliveries[pulled["deliveries_before"]:] if pulled["down"].encode() in d.body]
    assert lost == []  # the alias event never reached the receiver
    run, _ = th.wait_run(airflow, run_id, timeout_s=RECONCILE_WAIT_S, poll_s=1)
    assert run is not None, f"reconcile did not start {run_id} within {RECONCILE_WAIT_S:g} s"
    print(f"pull latency (alias moved while receiver down -> run queued): {time.monotonic() - pulled['moved_at']:.1f} s")
    assert (run.get("note") or "").startswith("reconcile: alias champion")
    assert run["conf"]["model_version"] == pulled["down_version"]


def test_legacy_stage_transition_starts_a_run(pulled, airflow):
    run_id = run_id_for(pulled["staged"], pulled["stage_version"], "stage", "production")
    run, _ = th.wait_run(airflow, run_id, timeout_s=RECONCILE_WAIT_S, poll_s=1)
    assert run is not None and (run.get("note") or "").startswith("reconcile: stage Production")


def test_webhook_and_reconcile_start_exactly_one_run(pushed, pulled, airflow):
    # The reconcile cycles that started the pulled runs also saw the pushed alias: it must have left it alone.
    runs = th.runs_for_model(airflow, pushed["model"])
    assert [r["dag_run_id"] for r in runs] == [pushed["run_id"]]
    assert runs[0]["note"].startswith("webhook:")


def test_a_triggered_run_leaves_the_queue(pushed, airflow):
    deadline = time.monotonic() + 120
    state = "queued"
    while time.monotonic() < deadline:
        state = th.get_run(airflow, pushed["run_id"])["state"]
        if state != "queued":
            break
        time.sleep(1)
    assert state in ("running", "failed", "success")
