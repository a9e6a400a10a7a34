"""The rollout state machine on an in-memory S3 with conditional writes and a recording fake Triton."""

from __future__ import annotations

import hashlib
import json

import pytest

from modelops.contracts.naming import deployment_uri
from modelops.rollout import controller as ctl
from modelops.rollout.analysis import DeploymentStats, Thresholds, Verdict
from modelops.rollout.state import RolloutError, RolloutState, rollout_uri
from modelops.serving.locks import holder, lock_uri
from modelops.serving.routes import RoutesConflict, read_routes, write_routes

B = "triton"


class FakeTriton:
    def __init__(self, ready: set[str]) -> None:
        self.ready = set(ready)
        self.calls: list[tuple[str, str]] = []

    def is_model_ready(self, name: str) -> bool:
        return name in self.ready

    def load_model(self, name: str) -> None:
        self.calls.append(("load", name))
        self.ready.add(name)

    def unload_model(self, name: str) -> None:
        self.calls.append(("unload", name))
        self.ready.discard(name)


def publish(s3, deployment: str) -> None:
    body = b"model bytes of " + deployment.encode()
    s3.write_bytes(f"{deployment_uri(B, deployment)}/1/model.onnx", body)
    manifest = {"files": {"1/model.onnx": {"sha256": hashlib.sha256(body).hexdigest()}}}
    s3.write_bytes(f"{deployment_uri(B, deployment)}/manifest.json", json.dumps(manifest).encode())


def set_routes(s3, weights: dict[str, int], by: str = "deploy"):
    return write_routes(s3, B, read_routes(s3, B, "m"), weights, by=by)


def start(s3, run_id: str = "r1", steps=(10, 50, 100), canary: str = "m--v2") -> RolloutState:
    return ctl.begin(s3, B, "m", canary, run_id=run_id, steps=list(steps), mode="canary", thresholds=Thresholds(),
                     interval_s=60)  # fmt: skip


def verdict(passed: bool | None, reasons: list[str]) -> Verdict:
    return Verdict(passed, reasons, DeploymentStats("m--v2", 100, 0.95, 12.0), DeploymentStats("m--v1", 900, 1.0, 10))


@pytest.fixture
def served(s3):
    publish(s3, "m--v1")
    publish(s3, "m--v2")
    set_routes(s3, {"m--v1": 100})
    return FakeTriton({"m--v1", "m--v2"})


def test_a_canary_goes_through_its_steps_and_is_promoted(s3, served):
    state = start(s3)
    assert (state.status, state.step_index, state.stable, state.steps) == ("running", -1, ["m--v1"], [10, 50, 100])
    assert holder(s3, lock_uri(B, "rollout", "m"))["owner"] == "r1"
    for i, weight in enumerate([10, 50]):
        state = ctl.apply_step(s3, B, state, i)
        assert read_routes(s3, B, "m").weights() == {"m--v2": weight, "m--v1": 100 - weight}
        state = ctl.record_verdict(s3, B, state, verdict(True, []))
    assert state.step_index == 1 and [a["weight"] for a in state.analysis] == [10, 50]
    assert state.analysis[0]["canary"]["p99_ms"] == 12.0 and state.analysis[0]["stable"]["deployment"] == "m--v1"
    state = ctl.promote(s3, B, state, client=served, gateway_metrics_urls=[])
    assert state.status == "promoted" and state.step_index == 2
    assert read_routes(s3, B, "m").weights() == {"m--v2": 100}
    assert served.calls == [("unload", "m--v1")]
    assert holder(s3, lock_uri(B, "rollout", "m")) is None
    assert ctl.load_state(s3, B, "m").to_json() == state.to_json()
    again = ctl.promote(s3, B, state, client=served, gateway_metrics_urls=[])  # a retried task
    assert again.status == "promoted" and read_routes(s3, B, "m").revision == 4
    assert ctl.last_stable(s3, B, "m") == "m--v1"


def test_one_rollout_per_model_and_history(s3, served):
    first = start(s3, "r1")
    with pytest.raises(RolloutError, match=r"^a rollout of m is already running: .*held by r1"):
        start(s3, "r2", canary="m--v3")
    assert start(s3, "r1").to_json() == first.to_json()  # a retried begin gets its own state back
    ctl.rollback(s3, B, first, "canary success rate 0.5 < 0.99 over 40 requests", client=served,
                 gateway_metrics_urls=[])  # fmt: skip
    second = start(s3, "r2", canary="m--v3")
    assert second.history[0]["run_id"] == "r1" and second.history[0]["status"] == "rolled_back"
    assert second.history[0]["error"].startswith("canary success rate")
    for i in range(3, 25):  # history keeps the newest 20
        ctl.rollback(s3, B, ctl.load_state(s3, B, "m"), "x", client=served, gateway_metrics_urls=[])
        start(s3, f"r{i}", canary="m--v3")
    history = ctl.load_state(s3, B, "m").history
    assert len(history) == 20 and history[0]["run_id"] == "r23"


def test_first_deployment_goes_to_100_at_once(s3):
    state = ctl.begin(s3, B, "fresh", "fresh--v1", run_id="r", steps=[10, 50, 100], mode="canary",
                      thresholds=Thresholds(), interval_s=5)  # fmt: skip
    assert state.stable == [] and state.steps == [100]
    state = ctl.apply_step(s3, B, state, 0)
    assert read_routes(s3, B, "fresh").weights() == {"fresh--v1": 100}


def test_bad_input_is_refused_in_one_line(s3, served):
    with pytest.raises(RolloutError, match="steps must be increasing"):
        start(s3, steps=(50, 10, 100))
    with pytest.raises(RolloutError, match="ending with 100"):
        start(s3, steps=(10, 50))
    with pytest.raises(RolloutError, match="mode must be one of"):
        ctl.begin(s3, B, "m", "m--v2", run_id="r", steps=[100], mode="blue", thresholds=Thresholds(), interval_s=1)


def test_a_lost_routes_race_is_retried_from_a_fresh_read(s3, served, monkeypatch):
    state = start(s3)
    real = ctl.write_routes
    lost = []

    def racing(storage, bucket, current, weights, *, by):
        if not lost:  # another writer changes the routes (keeping both deployments) just before our write
            lost.append(real(storage, bucket, current, {"m--v1": 100}, by="someone"))
        return real(storage, bucket, current, weights, by=by)

    monkeypatch.setattr(ctl, "write_routes", racing)
    state = ctl.apply_step(s3, B, state, 0)
    routes = read_routes(s3, B, "m")
    assert routes.weights() == {"m--v2": 10, "m--v1": 90} and routes.revision == 3
    assert state.routes_revision == 3 and state.step_index == 0

    def always_lost(*args, **kwargs):
        raise RoutesConflict("changed")

    monkeypatch.setattr(ctl, "write_routes", always_lost)
    with pytest.raises(RolloutError, match="kept changing"):
        ctl.apply_step(s3, B, state, 1)


def test_a_hand_made_rollback_stops_the_rollout_without_overwriting_it(s3, served):
    state = ctl.apply_step(s3, B, start(s3), 0)
    set_routes(s3, {"m--v1": 100}, by="operator")  # rolled back by hand
    with pytest.raises(RolloutError, match=r"^stopped: routes were changed by operator \(revision 3\) and no longer "
                                           r"name the canary m--v2$"):  # fmt: skip
        ctl.apply_step(s3, B, state, 1)
    stored = ctl.load_state(s3, B, "m")
    assert stored.status == "aborted" and stored.error.startswith("stopped:")
    assert holder(s3, lock_uri(B, "rollout", "m")) is None
    after = ctl.rollback(s3, B, state, "step failed", client=served, gateway_metrics_urls=[])
    assert after.status == "aborted" and read_routes(s3, B, "m").revision == 3 and served.calls == []
    with pytest.raises(RolloutError, match="aborted; it cannot be promoted"):
        ctl.promote(s3, B, state, client=served, gateway_metrics_urls=[])


def test_rollback_is_idempotent_and_retires_the_canary(s3, served):
    state = ctl.apply_step(s3, B, start(s3), 0)
    state = ctl.record_verdict(s3, B, state, verdict(False, ["canary success rate 0.950 < 0.99 over 100 requests"]))
    out = ctl.rollback(s3, B, state, "canary success rate 0.950 < 0.99 over 100 requests", client=served,
                       gateway_metrics_urls=[])  # fmt: skip
    assert out.status == "rolled_back" and out.error == "canary success rate 0.950 < 0.99 over 100 requests"
    assert read_routes(s3, B, "m").weights() == {"m--v1": 100} and served.calls == [("unload", "m--v2")]
    revision = read_routes(s3, B, "m").revision
    again = ctl.rollback(s3, B, state, "retried", client=served, gateway_metrics_urls=[])
    assert again.status == "rolled_back" and again.error == out.error and read_routes(s3, B, "m").revision == revision
    assert holder(s3, lock_uri(B, "rollout", "m")) is None
    assert ctl.last_stable(s3, B, "m") == "m--v1"


def test_rollback_to_a_named_deployment_checks_and_loads_it(s3, served):
    state = ctl.promote(s3, B, ctl.apply_step(s3, B, start(s3), 0), client=served, gateway_metrics_urls=[])
    with pytest.raises(RolloutError, match=r"^refusing to roll back to m--v9: .* has no manifest.json"):
        ctl.rollback(s3, B, state, "by hand", client=served, gateway_metrics_urls=[], to="m--v9")
    assert read_routes(s3, B, "m").weights() == {"m--v2": 100}
    assert ("load", "m--v1") not in served.calls and "m--v1" not in served.ready  # promote unloaded it
    out = ctl.rollback(s3, B, state, "by hand", client=served, gateway_metrics_urls=[], to="m--v1")
    assert out.status == "rolled_back" and ("load", "m--v1") in served.calls
    assert read_routes(s3, B, "m").weights() == {"m--v1": 100} and served.calls[-1] == ("unload", "m--v2")


def test_last_stable_without_any_rollout_is_the_heaviest_route(s3):
    assert ctl.last_stable(s3, B, "m") is None
    set_routes(s3, {"m--v1-a": 30, "m--v1-b": 70})
    assert ctl.last_stable(s3, B, "m") == "m--v1-b"


def test_state_document_round_trips_and_stale_states_are_refused(s3, served):
    state = start(s3)
    doc = json.loads(s3.read_bytes(rollout_uri(B, "m")))
    assert RolloutState.from_json(doc).to_json() == state.to_json()
    assert doc["thresholds"]["min_success_rate"] == 0.99
    other = RolloutState.from_json({**doc, "run_id": "someone-else"})
    with pytest.raises(RolloutError, match="holds rollout r1, not rollout someone-else"):
        ctl.apply_step(s3, B, other, 0)


def test_an_operator_rollback_during_a_rollout_is_not_overwritten_by_the_rollouts_own_rollback(s3, served):
    publish(s3, "m--v0")
    running = ctl.apply_step(s3, B, start(s3), 0)
    ctl.rollback(s3, B, ctl.load_state(s3, B, "m"), "rolled back by hand to m--v0", client=served,
                 gateway_metrics_urls=[], to="m--v0")  # fmt: skip
    assert read_routes(s3, B, "m").weights() == {"m--v0": 100}
    with pytest.raises(RolloutError, match=r"^stopped: rollout r1 of m is already rolled_back: rolled back by hand"):
        ctl.apply_step(s3, B, running, 1)
    out = ctl.rollback(s3, B, running, "step 1 failed", client=served, gateway_metrics_urls=[])
    assert out.error == "rolled back by hand to m--v0" and read_routes(s3, B, "m").weights() == {"m--v0": 100}
