"""Triggers without servers: run ids, event mapping, signatures, replay guard, fingerprint, planner, receiver."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from modelops.contracts import naming
from modelops.triggers import events as ev
from modelops.triggers.fingerprint import (
    FingerprintContext,
    changed_parts,
    fingerprint_inputs,
    parse_pins,
    recipe_versions,
    worker_library_versions,
)
from modelops.triggers.planner import CountingClient, OptimizeDefaults, plan_nightly
from modelops.triggers.signature import ReplayGuard, WebhookRejected, load_secret, secret_path, sign, verify

REPO = Path(__file__).resolve().parents[2]
CONFIG = ev.TriggerConfig()


# -- run ids and event mapping ---------------------------------------------------------------------
def test_run_ids_are_deterministic_and_safe():
    assert ev.run_id_for("digits", 3, "alias", "champion") == "mlflow__digits__v3__alias-champion"
    assert ev.run_id_for("digits", "3", "stage", "production") == ev.run_id_for("digits", 3, "stage", "production")
    odd = ev.run_id_for("team/model name", 1, "alias", "champion")
    assert odd.startswith("mlflow__team_model_name-") and " " not in odd and "/" not in odd
    assert odd != ev.run_id_for("team_model_name", 1, "alias", "champion")  # sanitising cannot collide
    assert len(ev.run_id_for("m" * 400, 1, "alias", "champion")) <= ev.MAX_RUN_ID


def _body(kind: str, **data) -> dict:
    entity, action = kind.rsplit(".", 1)
    return {"entity": entity, "action": action, "timestamp": "2026-01-01T00:00:00+00:00", "data": data}


def test_alias_event_maps_to_a_pinned_version_run():
    mapped = ev.map_webhook_event(_body("model_version_alias.created", name="m", alias="champion", version="4"), CONFIG)
    assert mapped.request.run_id == "mlflow__m__v4__alias-champion"
    assert mapped.request.conf == {"model_name": "m", "model_version": "4", "model_alias": None}
    assert mapped.needs_opt_in_check
    assert ev.admit(mapped, {naming.TAG_OPT_IN: "true"}, CONFIG) == ""
    assert "not opted in" in ev.admit(mapped, {}, CONFIG)
    assert "not opted in" in ev.admit(mapped, None, CONFIG)  # model unknown to the registry


def test_unwatched_alias_is_ignored_without_a_registry_read():
    mapped = ev.map_webhook_event(_body("model_version_alias.created", name="m", alias="blue", version="2"), CONFIG)
    assert mapped.request is None and "not watched" in mapped.ignored


def test_scope_all_needs_no_registry_read_for_configured_aliases():
    config = ev.TriggerConfig(scope="all")
    mapped = ev.map_webhook_event(_body("model_version_alias.created", name="m", alias="production", version="2"),
                                  config)
    assert not mapped.needs_opt_in_check and ev.admit(mapped, None, config) == ""


def test_opt_in_tag_on_a_version_is_an_explicit_request():
    mapped = ev.map_webhook_event(_body("model_version_tag.set", name="m", version="5", key=naming.TAG_OPT_IN,
                                        value="True"), CONFIG)
    assert mapped.request.run_id == "mlflow__m__v5__tag-optimize" and not mapped.needs_opt_in_check
    other = ev.map_webhook_event(_body("model_version_tag.set", name="m", version="5", key="x", value="true"), CONFIG)
    assert other.request is None and "not the opt-in tag" in other.ignored


def test_version_created_only_when_configured_and_other_events_ignored():
    body = _body("model_version.created", name="m", version="1", source="s3://x")
    assert ev.map_webhook_event(body, CONFIG).request is None
    config = ev.TriggerConfig.from_env({"MODELOPS_TRIGGER_ON_VERSION_CREATED": "1"})
    assert ev.map_webhook_event(body, config).request.run_id == "mlflow__m__v1__created"
    assert ev.map_webhook_event(_body("registered_model.created", name="m"), CONFIG).request is None
    assert ev.map_webhook_event(_body("model_version_alias.created", name="m", alias="champion"), CONFIG).request is None


def test_config_from_env():
    config = ev.TriggerConfig.from_env({"MODELOPS_TRIGGER_ALIASES": "gold, champion,gold",
                                        "MODELOPS_RECONCILE_INTERVAL_S": "5", "MODELOPS_TRIGGER_STAGES": "Production"})
    assert config.aliases == ("gold", "champion") and config.poll_interval_s == 5 and config.stages == ("Production",)
    with pytest.raises(ValueError):
        ev.TriggerConfig.from_env({"MODELOPS_TRIGGER_SCOPE": "some"})


def _rm(name, tags=None, aliases=None, stages=None):
    versions = [SimpleNamespace(version=v, current_stage=s) for v, s in (stages or {}).items()]
    return SimpleNamespace(name=name, tags=tags or {}, aliases=aliases or {}, latest_versions=versions)


def test_wanted_runs_from_a_registry_snapshot():
    opted = {naming.TAG_OPT_IN: "true"}
    models = [
        _rm("a", opted, {"champion": "3", "other": "1"}, {"2": "Production", "1": "Archived"}),
        _rm("b", {}, {"champion": "9"}, {"9": "Production"}),  # not opted in
        _rm("c", {**opted, naming.TAG_ALIAS: "blue"}, {"blue": "7", "production": "5"}, {"6": "Staging"}),
    ]
    ids = [r.run_id for r in ev.wanted_runs(models, CONFIG)]
    assert ids == ["mlflow__a__v2__stage-production", "mlflow__a__v3__alias-champion",
                   "mlflow__c__v5__alias-production", "mlflow__c__v6__stage-staging"]
    assert len(ev.wanted_runs(models, ev.TriggerConfig(scope="all"))) == 6
    req = ev.wanted_runs(models, CONFIG)[0]
    assert ev.RunRequest.from_json(json.loads(json.dumps(req.to_json()))) == req


def test_odd_payload_shapes_are_ignored():
    for data in ([1], "x", {"name": "m", "version": "٣"}, {"name": "m", "version": None}):
        body = {"entity": "model_version_tag", "action": "set", "data": data}
        assert ev.map_webhook_event(body, CONFIG).request is None


def test_version_created_is_reconciled_for_the_newest_unhandled_version():
    config = ev.TriggerConfig(on_version_created=True)
    opted = {naming.TAG_OPT_IN: "true"}
    fresh = _rm("fresh", opted, stages={"2": "None", "1": "Production"})
    done = _rm("done", opted, stages={"4": "None"})
    done.latest_versions[0].tags = {naming.TAG_STATUS: "deployed"}
    ids = [r.run_id for r in ev.wanted_runs([fresh, done], config)]
    assert ids == ["mlflow__fresh__v1__stage-production", "mlflow__fresh__v2__created"]
    assert "mlflow__fresh__v2__created" not in [r.run_id for r in ev.wanted_runs([fresh], CONFIG)]


def test_reconcile_recovers_tag_requests_from_a_real_registry(tmp_path):
    """A version tagged modelops.optimize=true while the receiver was down gets its tag run from the reconcile,
    unless its status says it was optimized or is in progress; read from a real (SQLite) MLflow registry."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'registry.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for name in ("plain", "opted"):
        client.create_registered_model(name, tags={naming.TAG_OPT_IN: "true"} if name == "opted" else {})
        for i in range(3):
            client.create_model_version(name, f"s3://nowhere/{name}/{i}")
    client.set_model_version_tag("plain", "2", naming.TAG_OPT_IN, "true")  # outside the scope: still honoured
    client.set_model_version_tag("plain", "3", naming.TAG_OPT_IN, "false")
    client.set_model_version_tag("opted", "1", naming.TAG_OPT_IN, "true")
    client.set_model_version_tag("opted", "1", naming.TAG_STATUS, "deployed")  # optimized by an alias run
    client.set_model_version_tag("opted", "2", naming.TAG_OPT_IN, "true")
    client.set_model_version_tag("opted", "2", naming.TAG_STATUS, "failed")  # its run failed: ask again
    client.set_registered_model_alias("opted", "champion", "3")
    tagged = list(ev.search_tagged_versions(client, page_size=1))  # paged
    assert sorted((v.name, str(v.version)) for v in tagged) == [("opted", "1"), ("opted", "2"), ("plain", "2")]
    requests = ev.registry_requests(client, CONFIG)
    assert [r.run_id for r in requests] == ["mlflow__opted__v2__tag-optimize", "mlflow__opted__v3__alias-champion",
                                            "mlflow__plain__v2__tag-optimize"]
    webhook = ev.map_webhook_event(_body(ev.EVENT_TAG_SET, name="plain", version="2", key=naming.TAG_OPT_IN,
                                         value="true"), CONFIG)
    assert webhook.request.run_id == requests[-1].run_id  # the same fact, the same run id: one run at most
    assert requests[-1].note == "reconcile: tag modelops.optimize=true on v2"


def test_alias_moved_back_gets_a_new_run_id_and_the_same_move_keeps_its_own():
    tags: dict[str, str] = {}

    def move(version: str) -> str:  # what a creator does: derive the id from the model's tags, record the move
        req = ev.alias_request("m", version, "champion", "webhook", tags)
        tags[req.tag[0]] = req.tag[1]
        return req.run_id

    first = move("1")
    assert first == "mlflow__m__v1__alias-champion"  # a first move keeps the plain id
    assert move("1") == first  # the same move seen again (duplicate delivery, poll): the same run
    second = move("2")
    back = move("1")  # moved back to v1: a new fact, a new run
    assert second.startswith("mlflow__m__v2__alias-champion") and back.startswith("mlflow__m__v1__alias-champion__after-")
    assert back not in (first, second) and move("1") == back
    again = [move("2"), move("1")]  # each further move is unique along the alias's history
    assert len({first, second, back, *again}) == 5
    assert tags == {"modelops.alias_run.champion": f"1|{again[1]}"}
    long = ev.alias_run_id("m" * 300, 1, "champion", "2|x")
    assert len(long) <= ev.MAX_RUN_ID and long != ev.alias_run_id("m" * 300, 1, "champion", "2|y")


def test_reconcile_sees_an_alias_moved_back_on_a_real_registry(tmp_path):
    """The reconcile's alias facts read the move history from the registered model's tag (real SQLite MLflow)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'registry.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("m", tags={naming.TAG_OPT_IN: "true"})
    for i in range(2):
        client.create_model_version("m", f"s3://nowhere/m/{i}")

    def reconcile(version: str) -> list[str]:
        client.set_registered_model_alias("m", "champion", version)
        requests = [r for r in ev.registry_requests(client, CONFIG) if "alias" in r.run_id]
        ev.record_alias_moves(client, requests)  # registry_reconcile's plan, before it creates the runs
        return [r.run_id for r in requests]

    first = reconcile("1")
    assert first == ["mlflow__m__v1__alias-champion"] and reconcile("1") == first  # polled again: same run
    reconcile("2")
    back = reconcile("1")
    assert back[0].startswith("mlflow__m__v1__alias-champion__after-") and reconcile("1") == back
    webhook = ev.map_webhook_event(_body(ev.EVENT_ALIAS_CREATED, name="m", alias="champion", version="1"), CONFIG)
    tags = client.get_registered_model("m").tags
    assert ev.with_model_tags(webhook.request, tags).run_id == back[0]  # push and pull agree on the move


# -- signatures and replays ------------------------------------------------------------------------
def _signed(secret: str, body: bytes, ts: int | None = None, delivery: str = "d-1") -> dict[str, str]:
    ts_text = str(int(time.time()) if ts is None else ts)
    return {"X-MLflow-Delivery-Id": delivery, "X-MLflow-Timestamp": ts_text,
            "X-MLflow-Signature": sign(secret, delivery, ts_text, body)}


def test_signature_matches_mlflows_own_signer():
    from mlflow.webhooks.delivery import _generate_hmac_signature

    assert sign("s3cret", "id", "123", '{"a": 1}') == _generate_hmac_signature("s3cret", "id", "123", '{"a": 1}')


def test_verify_accepts_authentic_and_rejects_forged_stale_or_incomplete():
    body = b'{"entity": "model_version_alias", "action": "created", "data": {}}'
    headers = _signed("s3cret", body)
    assert verify("s3cret", {k.lower(): v for k, v in headers.items()}, body)[0] == "d-1"
    cases = [
        ("wrong", headers, body, 401),
        ("s3cret", headers, body + b" ", 401),  # body altered
        ("s3cret", _signed("s3cret", body, ts=int(time.time()) - 301), body, 400),
        ("s3cret", _signed("s3cret", body, ts=int(time.time()) + 400), body, 400),
        ("s3cret", {k: v for k, v in headers.items() if k != "X-MLflow-Signature"}, body, 401),
        ("s3cret", {**headers, "X-MLflow-Timestamp": "soon"}, body, 400),
    ]
    for secret, hdrs, payload, code in cases:
        with pytest.raises(WebhookRejected) as info:
            verify(secret, hdrs, payload)
        assert info.value.status == code
    rotated = {**headers, "X-MLflow-Signature": "v1,AAAA " + headers["X-MLflow-Signature"]}
    assert verify("s3cret", rotated, body)[0] == "d-1"


def test_replay_guard_claims_once_and_survives_reopen(tmp_path):
    db = tmp_path / "d.db"
    guard = ReplayGuard(db)
    assert guard.claim("x") and not guard.claim("x")
    assert not ReplayGuard(db).claim("x")  # persisted
    guard.release("x")
    assert guard.claim("x")
    guard.finish("x", "run", "created")
    assert guard.outcomes() == {"x": "created"}
    assert oct(db.stat().st_mode & 0o777) == "0o600"


def test_replay_guard_lets_a_failed_or_abandoned_delivery_be_retried(tmp_path):
    guard = ReplayGuard(tmp_path / "d.db", lease_s=60)
    assert guard.claim("f", now=1000.0)
    assert not guard.claim("f", now=1001.0) and guard.outcome("f") is None  # in progress: a duplicate
    assert guard.fail("f", "run-1", "RuntimeError: HTTP 500") == "error: RuntimeError: HTTP 500"
    assert guard.claim("f", now=1002.0) and guard.outcome("f") is None  # MLflow's retry is processed again
    guard.finish("f", "run-1", "created")
    assert not guard.claim("f", now=1003.0)  # succeeded: a replay now
    assert guard.claim("abandoned", now=1000.0)
    assert not guard.claim("abandoned", now=1059.0) and guard.claim("abandoned", now=1061.0)  # lease ran out
    assert not guard.claim("abandoned", now=1062.0)


def test_signature_of_a_non_utf8_body_is_a_mismatch_not_an_error():
    body = b'{"x": "\xff"}'
    headers = _signed("s3cret", body)
    assert verify("s3cret", headers, body)[0] == "d-1"  # raw-byte HMAC: no decoding
    with pytest.raises(WebhookRejected) as info:
        verify("s3cret", headers, body + b"\xfe")
    assert info.value.status == 401


def test_secret_lookup_order(tmp_path):
    assert load_secret({}, None) is None
    path = secret_path(tmp_path)
    path.parent.mkdir()
    path.write_text("from-file\n")
    assert load_secret({"MODELOPS_STACK_DIR": str(tmp_path)}) == "from-file"
    assert load_secret({"MODELOPS_STACK_DIR": str(tmp_path), "MODELOPS_WEBHOOK_SECRET": "env"}) == "env"


# -- fingerprint and planner -----------------------------------------------------------------------
def test_worker_pins_and_recipe_hashes():
    pins = parse_pins(["torch==2.13.0", "onnxruntime-gpu==1.24.0 ; platform_system=='Linux'", "numpy==1.26.4", "# x"])
    assert pins == {"onnxruntime-gpu": "1.24.0", "torch": "2.13.0"}
    assert {"torch", "onnx", "onnxruntime"} <= set(worker_library_versions({}))
    from modelops.recipes import recipe_infos

    versions = recipe_versions()  # every recipe installed through the modelops.recipes entry points
    assert set(versions) == {*recipe_infos(), "auto"} and all(len(v) == 12 for v in versions.values())
    assert {"digits_cnn", "text_embedding", "pytorch_generic"} <= set(versions)


CTX = FingerprintContext({"torch": "2.13.0", "onnxruntime": "1.32.0"}, {"auto": "r1", "digits_cnn": "r2"}, "cpu")
DEFAULTS = OptimizeDefaults(("ort_fp32", "ort_int8_dynamic"))


def test_fingerprint_moves_with_each_input():
    base = fingerprint_inputs("m", "3", DEFAULTS.for_model({}), CTX)
    assert base.digest == fingerprint_inputs("m", "3", DEFAULTS.for_model({}), CTX).digest
    newer = FingerprintContext({**CTX.libraries, "onnxruntime": "1.33.0"}, CTX.recipes, CTX.device)
    variations = [
        fingerprint_inputs("m", "4", DEFAULTS.for_model({}), CTX),
        fingerprint_inputs("m", "3", DEFAULTS.for_model({}), newer),
        fingerprint_inputs("m", "3", DEFAULTS.for_model({"modelops.latency_slo_ms": "50"}), CTX),
        fingerprint_inputs("m", "3", DEFAULTS.for_model({}), CTX, recipe="digits_cnn"),
        fingerprint_inputs("m", "3", DEFAULTS.for_model({}), FingerprintContext(CTX.libraries, CTX.recipes, "H100")),
    ]
    assert len({v.digest for v in variations} | {base.digest}) == 6
    assert changed_parts(base.to_json(), variations[1]) == ["libraries.onnxruntime"]


class FakeRegistry:
    """search_registered_models (filter on the opt-in tag, paged) + get_model_version_by_alias, as MlflowClient."""

    def __init__(self, models: list[SimpleNamespace], versions: dict[tuple[str, str], SimpleNamespace]):
        self.models, self.versions = models, versions

    def search_registered_models(self, filter_string=None, max_results=100, page_token=None):
        assert filter_string == ev.OPT_IN_FILTER
        matching = [m for m in self.models if ev.is_true(m.tags.get(naming.TAG_OPT_IN))]
        start = int(page_token or 0)
        page = matching[start:start + max_results]
        token = str(start + max_results) if start + max_results < len(matching) else None
        return _Page(page, token)

    def get_model_version_by_alias(self, name, alias):
        model = next(m for m in self.models if m.name == name)
        if alias not in model.aliases:
            raise RuntimeError(f"RESOURCE_DOES_NOT_EXIST: alias {alias} not found")
        return self.versions[(name, model.aliases[alias])]


class _Page(list):
    def __init__(self, items, token):
        super().__init__(items)
        self.token = token


def test_planner_skips_unchanged_starts_changed_and_counts_calls():
    opted = {naming.TAG_OPT_IN: "true"}
    same = fingerprint_inputs("same", "1", DEFAULTS.for_model({}), CTX).digest
    models = [_rm("same", opted, {"champion": "1"}), _rm("changed", opted, {"champion": "2"}),
              _rm("new", opted, {"champion": "1"}), _rm("noalias", opted), _rm("failed", opted, {"champion": "1"}),
              _rm("manual", opted, {"champion": "1"}), _rm("off", {}, {"champion": "1"})]
    versions = {
        ("same", "1"): SimpleNamespace(version="1", tags={naming.TAG_FINGERPRINT: same, "modelops.status": "deployed"}),
        ("changed", "2"): SimpleNamespace(version="2", tags={naming.TAG_FINGERPRINT: "old", "modelops.status": "deployed"}),
        ("new", "1"): SimpleNamespace(version="1", tags={}),
        ("failed", "1"): SimpleNamespace(version="1", tags={
            naming.TAG_FINGERPRINT: fingerprint_inputs("failed", "1", DEFAULTS.for_model({}), CTX).digest,
            "modelops.status": "failed"}),
        ("manual", "1"): SimpleNamespace(version="1", tags={"modelops.status": "deployed"}),
    }
    # "inline": the search result already holds the aliased (newest) version with its tags: no lookup.
    inline = _rm("inline", opted, {"champion": "4"})
    inline.latest_versions = [SimpleNamespace(version="4", current_stage="None", tags={})]
    models.append(inline)
    plan = plan_nightly(FakeRegistry(models, versions), CTX, DEFAULTS, page_size=2)
    actions = {i.model: (i.action, i.reason) for i in plan.items}
    assert set(actions) == {"same", "changed", "new", "noalias", "failed", "manual", "inline"}
    assert actions["inline"][0] == "start"
    assert actions["same"][0] == "skip" and "unchanged" in actions["same"][1]
    assert actions["changed"][0] == "start" and "changed" in actions["changed"][1]
    assert actions["new"][0] == "start" and actions["failed"][0] == "start"
    assert actions["noalias"] == ("skip", "alias champion is not set")
    assert actions["manual"][0] == "adopt"
    started = {i.model: i.request for i in plan.to_start}
    assert started["changed"].run_id.startswith("nightly__changed__v2__fp-")
    assert started["changed"].conf["variants"] == ["ort_fp32", "ort_int8_dynamic"]
    # 7 opted-in models, 2 per page -> 4 searches; lookups only where the search result lacks the version
    assert plan.registry_calls == {"search_registered_models": 4, "get_model_version_by_alias": 5}
    assert plan.summary()["registry_calls_per_model"] == round(9 / 7, 3)


def test_counting_client_passes_attributes_through():
    client = CountingClient(SimpleNamespace(x=1, f=lambda a: a + 1))
    assert client.x == 1 and client.f(1) == 2 and client.calls == {"f": 1}


# -- the receiver (FastAPI app) with the Airflow side faked -------------------------------------------
@pytest.fixture()
def receiver(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    import modelops_airflow.webhook as hook

    monkeypatch.setenv("MODELOPS_WEBHOOK_SECRET", "s3cret")
    monkeypatch.setenv("MODELOPS_WEBHOOK_DB", str(tmp_path / "deliveries.db"))
    monkeypatch.setattr(hook, "_guard", None)
    created: list[tuple[str, dict]] = []
    monkeypatch.setattr(hook, "create_run", lambda req, dag_id: created.append((req.run_id, req.conf)) or "created")
    tags: dict[str, dict[str, str]] = {"m": {naming.TAG_OPT_IN: "true"}}  # the registry's model tags
    monkeypatch.setattr(hook, "registered_model_tags", lambda name: dict(tags.get(name, {})))
    monkeypatch.setattr(hook, "set_model_tag", lambda name, key, value: tags.setdefault(name, {}).update({key: value}))
    return TestClient(hook.app), created


def _post(client, body: dict, secret: str = "s3cret", delivery: str = "d-1", ts: int | None = None):
    raw = json.dumps(body).encode()
    return client.post("/mlflow/webhook", content=raw, headers=_signed(secret, raw, ts, delivery))


def test_receiver_accepts_then_creates_the_run(receiver):
    client, created = receiver
    resp = _post(client, _body("model_version_alias.created", name="m", alias="champion", version="2"))
    assert resp.status_code == 202 and resp.json()["run_id"] == "mlflow__m__v2__alias-champion"
    assert created == [("mlflow__m__v2__alias-champion", {"model_name": "m", "model_version": "2",
                                                          "model_alias": None})]


def test_receiver_alias_moved_back_redeploys_and_a_second_delivery_of_a_move_maps_to_its_run(receiver):
    client, created = receiver

    def deliver(version: str, delivery: str) -> str:
        resp = _post(client, _body("model_version_alias.created", name="m", alias="champion", version=version),
                     delivery=delivery)
        assert resp.status_code == 202, resp.text
        return resp.json()["run_id"]

    first, second, back = deliver("1", "a"), deliver("2", "b"), deliver("1", "c")
    assert first == "mlflow__m__v1__alias-champion" and back.startswith(first + "__after-")
    assert len({first, second, back}) == 3
    assert deliver("1", "c-again") == back  # the same move delivered again (new delivery id): the same run id
    assert [run_id for run_id, _ in created] == [first, second, back, back]  # Airflow answers "exists" to the last


def test_receiver_rejects_forged_stale_and_replayed(receiver):
    client, created = receiver
    body = _body("model_version_alias.created", name="m", alias="champion", version="2")
    assert _post(client, body, secret="guess").status_code == 401
    assert _post(client, body, ts=int(time.time()) - 600).status_code == 400
    assert client.post("/mlflow/webhook", content=b"{}").status_code == 401
    assert created == []
    assert _post(client, body, delivery="once").status_code == 202
    assert _post(client, body, delivery="once").status_code == 409
    assert len(created) == 1


def test_receiver_ignores_models_not_opted_in_and_other_events(receiver):
    client, created = receiver
    # the opt-in is read before answering, so a model that is not opted in is answered "ignored" at once
    resp = _post(client, _body("model_version_alias.created", name="x", alias="champion", version="1"), delivery="a")
    assert resp.status_code == 200 and "not opted in" in resp.json()["reason"]
    assert _post(client, _body("registered_model.created", name="m"), delivery="b").json()["status"] == "ignored"
    assert created == []
    assert client.get("/health").json()["secret_configured"] is True


# -- DAG files -------------------------------------------------------------------------------------
@pytest.mark.parametrize("dag_file", ["registry_reconcile.py", "nightly_reoptimize.py"])
def test_trigger_dag_files_are_cheap_to_import(dag_file):
    """Parsing must not pull in mlflow, torch or the receiver's FastAPI app."""
    code = (
        "import sys; sys.path[:0] = [{!r}, {!r}];"
        "import runpy; runpy.run_path({!r});"
        "heavy = [m for m in ('torch', 'mlflow', 'onnx', 'great_expectations', 'boto3', 'modelops_airflow.webhook',"
        " 'requests') if m in sys.modules];"
        "print(heavy); sys.exit(1 if heavy else 0)"
    ).format(str(REPO), str(REPO), str(REPO / "dags" / dag_file))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_trigger_dags_load_and_are_wired():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not {k: v for k, v in bag.import_errors.items() if "reconcile" in k or "nightly" in k}
    reconcile, nightly = bag.dags["registry_reconcile"], bag.dags["nightly_reoptimize"]
    assert reconcile.task_ids == ["plan", "start"] and reconcile.max_active_runs == 1
    import runpy

    registry = runpy.run_path(str(REPO / "dags" / "registry_reconcile.py"))["REGISTRY"]
    assert [type(w.trigger).__name__ for w in registry.watchers] == ["RegistryPollTrigger"]
    assert registry.watchers[0].trigger.serialize()[0] == "modelops_airflow.triggers.RegistryPollTrigger"
    assert set(nightly.task_ids) == {"plan", "start", "summarize"}
    assert "summarize" in nightly.get_task("start").downstream_task_ids
