"""Registry -> Open WebUI: which models to create, update or delete, group tags, the stack's side of it.

The Open WebUI calls themselves run against the real Open WebUI in tests/integration/test_openwebui_on_stack.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelops.contracts.naming import TAG_OPENWEBUI_GROUPS, TAG_TASK
from modelops.local.stack.endpoints import airflow_connections, build_status
from modelops.local.stack.openwebui_service import GATEWAY_KEY_NAME, ensure_gateway_key, gateway_key_file
from modelops.local.stack.state import DEFAULT_PORTS, StackState, allocate_ports
from modelops.serving.gateway.keys import KeyStore, split_key
from modelops.serving.openwebui import (
    ModelEntry,
    desired_model,
    entry_from_registry,
    missing_groups,
    parse_groups,
    plan_models,
    registry_models,
)
from modelops.serving.routes import Routes, write_routes
from modelops.settings import Settings

GROUPS = {"demo-users": "g-demo", "ops": "g-ops"}


def _existing(entry: ModelEntry, **changes: object) -> dict:
    """An Open WebUI model as ``GET /api/v1/models/all`` returns it after refresh wrote ``entry``."""
    body = desired_model(entry, GROUPS)
    grants = [{"id": f"grant-{i}", "resource_type": "model", "resource_id": entry.name, **g, "created_at": 1}
              for i, g in enumerate(body["access_grants"])]
    return {**body, "user_id": "admin-id", "updated_at": 1, "created_at": 1, "access_grants": grants, **changes}


# -- group tags -------------------------------------------------------------------------------------
def test_parse_groups_splits_trims_and_dedupes() -> None:
    assert parse_groups("demo-users, ops ,demo-users,,") == ("demo-users", "ops")
    assert parse_groups("") == () and parse_groups(None) == () and parse_groups(" , ") == ()
    assert parse_groups("Data Science") == ("Data Science",)
    with pytest.raises(ValueError, match="invalid Open WebUI group name"):
        parse_groups("ok,bad\tname")
    with pytest.raises(ValueError, match="openwebui.groups"):
        parse_groups("x" * 101)


def test_entry_from_registry_reads_task_groups_and_description() -> None:
    entry = entry_from_registry("smollm2_chat", " SmolLM2 135M chat \n",
                                {TAG_TASK: "Chat", TAG_OPENWEBUI_GROUPS: "demo-users,ops", "other": "x"})
    assert entry == ModelEntry("smollm2_chat", "SmolLM2 135M chat", ("demo-users", "ops"), "chat")
    assert entry_from_registry("digits_cnn", None, {}) == ModelEntry("digits_cnn", "", (), None)


def test_missing_groups_only_for_chat_models() -> None:
    entries = [ModelEntry("a", groups=("demo-users", "new"), task="chat"),
               ModelEntry("e", groups=("embedders",), task="embedding"), ModelEntry("b", groups=("ops",), task="chat")]
    assert missing_groups(entries, ["demo-users"]) == ["new", "ops"]
    assert missing_groups(entries, ["demo-users", "new", "ops"]) == []


# -- the model plan ---------------------------------------------------------------------------------
def test_desired_model_grants_read_to_its_groups_only_for_chat() -> None:
    chat = desired_model(ModelEntry("smollm2_chat", "tiny", ("demo-users",), "chat"), GROUPS)
    assert chat["id"] == chat["name"] == "smollm2_chat" and chat["base_model_id"] is None
    assert chat["is_active"] is True and chat["meta"]["description"] == "tiny"
    assert chat["access_grants"] == [{"principal_type": "group", "principal_id": "g-demo", "permission": "read"}]
    assert "access_control" not in chat  # ignored by Open WebUI 0.12.4
    admins_only = desired_model(ModelEntry("private_chat", task="chat"), GROUPS)
    assert admins_only["access_grants"] == [] and admins_only["is_active"] is True
    hidden = desired_model(ModelEntry("minilm_embedder", groups=("demo-users",), task="embedding"), GROUPS)
    assert hidden["is_active"] is False and hidden["access_grants"] == []
    with pytest.raises(KeyError):
        desired_model(ModelEntry("x", groups=("unknown",), task="chat"), GROUPS)


def test_plan_creates_missing_and_leaves_identical_models() -> None:
    chat = ModelEntry("smollm2_chat", "tiny", ("demo-users",), "chat")
    embed = ModelEntry("minilm_embedder", "MiniLM", (), "embedding")
    plan = plan_models([chat, embed], [], GROUPS)
    assert [b["id"] for b in plan.create] == ["minilm_embedder", "smollm2_chat"]
    assert plan.update == [] and plan.delete == []

    again = plan_models([chat, embed], [_existing(chat), _existing(embed)], GROUPS)
    assert again.create == [] and again.update == [] and again.delete == []
    assert again.unchanged == ["minilm_embedder", "smollm2_chat"]


@pytest.mark.parametrize("change", [
    {"name": "Renamed by hand"},
    {"meta": {"description": "old text", "modelops": {"managed": True, "task": "chat", "groups": ["demo-users"]}}},
    {"access_grants": []},
    {"access_grants": [{"principal_type": "user", "principal_id": "*", "permission": "read"}]},
    {"is_active": False},
    {"base_model_id": "some-base"},
])
def test_plan_updates_a_model_that_drifted(change: dict) -> None:
    chat = ModelEntry("smollm2_chat", "tiny", ("demo-users",), "chat")
    plan = plan_models([chat], [_existing(chat, **change)], GROUPS)
    assert [b["id"] for b in plan.update] == ["smollm2_chat"] and plan.create == [] and plan.delete == []


def test_plan_follows_group_changes() -> None:
    before = ModelEntry("smollm2_chat", "tiny", ("demo-users",), "chat")
    after = before._replace(groups=("demo-users", "ops"))
    plan = plan_models([after], [_existing(before)], GROUPS)
    assert [b["id"] for b in plan.update] == ["smollm2_chat"]
    assert {g["principal_id"] for g in plan.update[0]["access_grants"]} == {"g-demo", "g-ops"}


def test_plan_deletes_only_managed_models_no_longer_routed() -> None:
    gone = ModelEntry("old_chat", "", ("demo-users",), "chat")
    by_hand = {"id": "admin_preset", "name": "Preset", "meta": {"description": "an admin's"}, "access_grants": [],
               "is_active": True, "base_model_id": "smollm2_chat"}
    chat = ModelEntry("smollm2_chat", "tiny", (), "chat")
    plan = plan_models([chat], [_existing(gone), by_hand], GROUPS)
    assert plan.delete == ["old_chat"]
    assert [b["id"] for b in plan.create] == ["smollm2_chat"]
    assert "admin_preset" not in plan.unchanged + [b["id"] for b in plan.update]


def test_plan_takes_over_an_admin_entry_with_the_routed_id() -> None:
    chat = ModelEntry("smollm2_chat", "tiny", ("demo-users",), "chat")
    by_hand = {"id": "smollm2_chat", "name": "SmolLM", "meta": {}, "access_grants": [], "is_active": True,
               "base_model_id": None}
    plan = plan_models([chat], [by_hand], GROUPS)
    assert [b["id"] for b in plan.update] == ["smollm2_chat"] and plan.create == []


# -- where the entries come from: routes files + a real MLflow registry (SQLite) ---------------------
def test_registry_models_joins_routes_and_registered_models(s3: object, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("smollm2_chat", tags={TAG_TASK: "chat", TAG_OPENWEBUI_GROUPS: "demo-users"},
                                   description="SmolLM2 135M instruct")
    client.create_registered_model("minilm_embedder", tags={TAG_TASK: "embedding"})
    client.create_registered_model("not_routed", tags={TAG_TASK: "chat"})
    for model in ("smollm2_chat", "minilm_embedder", "unregistered"):
        write_routes(s3, "triton", Routes(model=model), {f"{model}--v1-ort": 100}, by="test")  # type: ignore[arg-type]
    write_routes(s3, "triton", Routes(model="drained"), {"drained--v1-ort": 100}, by="test")  # type: ignore[arg-type]
    s3.objects["s3://triton/routes/drained.json"] = json.dumps(  # type: ignore[attr-defined]
        {"model": "drained", "revision": 2, "routes": [{"deployment": "drained--v1-ort", "weight": 0}]}).encode()

    entries = registry_models(s3, "triton", client)
    assert entries == [
        ModelEntry("minilm_embedder", "", (), "embedding"),
        ModelEntry("smollm2_chat", "SmolLM2 135M instruct", ("demo-users",), "chat"),
        ModelEntry("unregistered", "", (), None),
    ]


# -- the stack's side: status, Airflow connection, Open WebUI's gateway key --------------------------
@pytest.fixture()
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("MODELOPS_STACK_DIR", str(tmp_path / "stack"))
    monkeypatch.delenv("MODELOPS_PORT_OFFSET", raising=False)
    monkeypatch.delenv("MODELOPS_GATEWAY_KEYS_DB", raising=False)
    return Settings.from_env()


def test_openwebui_port_does_not_clash_with_other_stacks() -> None:
    ports = {offset: set(allocate_ports(offset).values()) for offset in range(0, 1000, 100)}
    for offset in ports:
        webui = allocate_ports(offset)["openwebui"]
        for other, theirs in ports.items():
            if other != offset:
                assert webui not in theirs, f"openwebui of offset {offset} = a port of offset {other}"
    assert DEFAULT_PORTS["openwebui"] == 3000


def test_status_and_connection_carry_openwebui_and_its_admin(settings: Settings, tmp_path: Path) -> None:
    state = StackState.new(settings.stack_dir, 600)
    status = build_status(state, settings.model_copy(update={"repo_root": tmp_path}), running={})
    webui = status["openwebui"]
    assert webui["url"] == "http://127.0.0.1:3600" and webui["port"] == 3600
    assert webui["admin_email"] == state.credentials.openwebui_admin_email
    assert webui["admin_password"] == state.credentials.openwebui_admin_password
    assert len(webui["admin_password"]) >= 20 and webui["installed"] is False  # no .venv-openwebui in tmp_path
    assert webui["state"] == "stopped" and webui["log"].endswith("logs/openwebui.log")
    conn = json.loads(airflow_connections(status)["AIRFLOW_CONN_OPENWEBUI_DEFAULT"])
    assert conn == {"conn_type": "modelops_openwebui", "host": "127.0.0.1", "port": 3600, "schema": "http",
                    "login": webui["admin_email"], "password": webui["admin_password"],
                    # no key file yet (Open WebUI never started): the refresh task says so in one line
                    "extra": {"gateway_url": status["gateway"]["url"], "gateway_key": ""}}
    (tmp_path / ".venv-openwebui" / "bin").mkdir(parents=True)
    (tmp_path / ".venv-openwebui" / "bin" / "open-webui").touch()
    assert build_status(state, settings.model_copy(update={"repo_root": tmp_path}), {})["openwebui"]["installed"]


def test_credentials_of_an_older_stack_file_gain_openwebui_secrets(settings: Settings) -> None:
    state = StackState.new(settings.stack_dir, 0)
    state.save()
    doc = json.loads(state.path.read_text())
    for key in ("openwebui_secret_key", "openwebui_admin_email", "openwebui_admin_password"):
        del doc["credentials"][key]
    state.path.write_text(json.dumps(doc))
    loaded = StackState.load(settings.stack_dir)
    assert loaded is not None and loaded.credentials.openwebui_admin_password
    assert loaded.credentials.openwebui_secret_key != state.credentials.openwebui_secret_key


def test_gateway_key_is_created_once_and_replaced_when_revoked(settings: Settings) -> None:
    state = StackState.new(settings.stack_dir, 0)
    store = KeyStore(settings.stack_dir / "gateway" / "keys.db")
    key = ensure_gateway_key(state, settings)
    path = gateway_key_file(state)
    assert path.read_text().strip() == key and path.stat().st_mode & 0o777 == 0o600
    parts = split_key(key)
    assert parts is not None
    stored = store.lookup(parts[0])
    assert stored is not None and stored.key.name == GATEWAY_KEY_NAME and stored.key.models == ("*",)
    assert store.verify(stored, parts[1])

    assert ensure_gateway_key(state, settings) == key, "a valid stored key is reused"
    store.revoke(GATEWAY_KEY_NAME)
    fresh = ensure_gateway_key(state, settings)
    assert fresh != key and path.read_text().strip() == fresh
    path.write_text("mo_000000000000_garbage-garbage-garbage\n")
    third = ensure_gateway_key(state, settings)
    assert third not in (key, fresh)
    assert [k.name for k in store.list() if k.active] == [GATEWAY_KEY_NAME], "one active openwebui key"
