"""Open WebUI on the real stack (issue 11): healthy, fed from the registry, per-group model access, removal.

A public chat model ``it_chat_<hex>`` (MLflow tags ``modelops.task=chat``, ``openwebui.groups=demo-users``) is
routed to a loaded plus-k deployment: enough for the model lists (chatting needs a real LLM deployment).
Skipped when Open WebUI is not installed (``make openwebui``).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import REPO

pytestmark = pytest.mark.skipif(not (REPO / ".venv-openwebui" / "bin" / "open-webui").exists(),
                                reason="Open WebUI is not installed (.venv-openwebui missing; run `make openwebui`)")

GROUP = "demo-users"


def _client(url: str, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url, headers=headers, timeout=60.0, trust_env=False)


def _signin(url: str, email: str, password: str) -> str:
    with _client(url) as client:
        resp = client.post("/api/v1/auths/signin", json={"email": email, "password": password})
        resp.raise_for_status()
        return resp.json()["token"]


def _model_ids(url: str, token: str) -> set[str]:
    with _client(url, token) as client:
        resp = client.get("/api/models")
        resp.raise_for_status()
        return {m["id"] for m in resp.json()["data"]}


@pytest.fixture(scope="module")
def webui(stack, settings, storage, triton, mlflow_client, publish_plus_k):
    from modelops.serving.deploy import deploy
    from modelops.serving.routes import Routes, write_routes

    info = stack["openwebui"]
    assert info["running"], f"openwebui is installed but not running; see {info['log']}"
    base = f"it_owui_{uuid.uuid4().hex[:6]}"
    chat = f"it_chat_{uuid.uuid4().hex[:6]}"
    pub = publish_plus_k(base, f"{base}--v1-ort_fp32", 1.0)
    deploy(triton, storage, settings.triton_bucket, base, pub["deployment"], **pub["deploy_kwargs"])
    mlflow_client.create_registered_model(
        chat, tags={"modelops.task": "chat", "openwebui.groups": GROUP}, description="integration-test chat model")
    write_routes(storage, settings.triton_bucket, Routes(model=chat), {pub["deployment"]: 100}, by="test-openwebui")

    admin = _signin(info["url"], info["admin_email"], info["admin_password"])
    users = {}
    with _client(info["url"], admin) as client:
        for who in ("member", "outsider"):
            email, password = f"{who}-{uuid.uuid4().hex[:6]}@modelops.example", uuid.uuid4().hex
            resp = client.post("/api/v1/auths/add",
                               json={"name": who, "email": email, "password": password, "role": "user"})
            resp.raise_for_status()
            users[who] = {"id": resp.json()["id"], "email": email, "password": password}
    yield {"url": info["url"], "admin": admin, "chat": chat, "base": base, "users": users,
           "admin_email": info["admin_email"], "admin_password": info["admin_password"]}
    storage.delete(f"s3://{settings.triton_bucket}/routes/{chat}.json")


def _refresh_cli(capsys) -> dict:
    from modelops.local.cli import main

    capsys.readouterr()
    assert main(["openwebui", "refresh", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_openwebui_is_healthy_bound_to_loopback_and_in_status(stack):
    info = stack["openwebui"]
    assert info["url"].startswith("http://127.0.0.1:") and info["admin_email"] and info["admin_password"]
    assert httpx.get(f"{info['url']}/health", timeout=10, trust_env=False).json() == {"status": True}
    conn = json.loads(os.environ["AIRFLOW_CONN_OPENWEBUI_DEFAULT"])  # set by the stack fixture (client_env)
    assert (conn["login"], conn["password"]) == (info["admin_email"], info["admin_password"])


def test_refresh_publishes_the_routed_chat_model_to_its_group(webui, capsys):
    result = _refresh_cli(capsys)
    assert webui["chat"] in result["models"]
    assert webui["chat"] in result["created"] + result["updated"]
    assert webui["base"] not in result["models"], "an untagged routed model is not a chat model"

    with _client(webui["url"], webui["admin"]) as client:
        groups = {g["name"]: g["id"] for g in client.get("/api/v1/groups/").json()}
        assert GROUP in groups
        models = {m["id"]: m for m in client.get("/api/v1/models/all").json()}
        grants = {(g["principal_type"], g["principal_id"], g["permission"])
                  for g in models[webui["chat"]]["access_grants"]}
        assert grants == {("group", groups[GROUP], "read")}
        assert models[webui["chat"]]["meta"]["description"] == "integration-test chat model"
        connection = client.get("/openai/config").json()
        assert connection["ENABLE_OPENAI_API"] is True
        assert connection["OPENAI_API_BASE_URLS"] == [result["connection"]]
        embedding = client.get("/api/v1/retrieval/embedding").json()
        assert (embedding["RAG_EMBEDDING_ENGINE"], embedding["RAG_EMBEDDING_MODEL"]) == ("openai", "minilm_embedder")
        assert embedding["openai_config"]["url"] == result["connection"]
    # the member joins the group the registry tag names (ensure_user, as the demo does; twice: idempotent)
    from modelops.serving.openwebui import ensure_user

    member = webui["users"]["member"]
    for _ in range(2):
        assert ensure_user(webui["url"], webui["admin_email"], webui["admin_password"], name="member",
                           email=member["email"], password="not-used-for-an-existing-user",
                           groups=[GROUP]) == member["id"]
    with _client(webui["url"], webui["admin"]) as client:
        members = client.post(f"/api/v1/groups/id/{groups[GROUP]}/users", json={}).json()
        assert member["id"] in {u["id"] for u in members}

    again = _refresh_cli(capsys)
    assert webui["chat"] in again["unchanged"] and not again["created"] and not again["groups_created"], again


def test_refresh_of_a_deployment_named_by_flags_and_environment(webui, stack, settings, monkeypatch, capsys,
                                                                tmp_path):
    """The operator command against any deployment: Open WebUI, its admin, the gateway key, MLflow and S3 from the
    environment and flags, no stack state read (MODELOPS_STACK_DIR points at an empty directory)."""
    from modelops.local import stack as stack_mod
    from modelops.local.cli import main
    from modelops.local.stack.openwebui_service import gateway_key_file
    from modelops.local.stack.state import StackState

    _refresh_cli(capsys)  # the stack's key exists and is what Open WebUI holds
    key = gateway_key_file(StackState.load(settings.stack_dir)).read_text().strip()
    for name, value in stack_mod.client_env(stack).items():  # what `modelops stack env` exports: MLflow, S3
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MODELOPS_STACK_DIR", str(tmp_path / "no-stack"))
    monkeypatch.setenv("MODELOPS_OPENWEBUI_ADMIN_EMAIL", webui["admin_email"])
    monkeypatch.setenv("MODELOPS_OPENWEBUI_ADMIN_PASSWORD", webui["admin_password"])
    monkeypatch.setenv("MODELOPS_OPENWEBUI_GATEWAY_KEY", key)
    monkeypatch.setenv("MODELOPS_TRITON_BUCKET", settings.triton_bucket)
    capsys.readouterr()
    argv = ["openwebui", "refresh", "--openwebui-url", webui["url"], "--gateway-url", stack["gateway"]["url"]]
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert webui["chat"] in result["models"] and webui["chat"] in result["unchanged"], result
    assert result["connection"].startswith(stack["gateway"]["url"].rstrip("/"))
    monkeypatch.delenv("MODELOPS_OPENWEBUI_GATEWAY_KEY")
    assert main(argv) == 1  # a missing secret is named, in one line, and nothing is changed
    err = capsys.readouterr().err.strip()
    assert "MODELOPS_OPENWEBUI_GATEWAY_KEY" in err and "\n" not in err and "ADMIN_EMAIL" not in err


def test_a_revoked_gateway_key_is_replaced_everywhere_on_refresh(webui, stack, capsys):
    from modelops.serving.gateway.keys import KeyStore

    key_file = Path(stack["stack_dir"]) / "config" / "openwebui-gateway.key"
    old = key_file.read_text().strip()
    KeyStore(Path(stack["gateway"]["keys_db"])).revoke("openwebui")
    _refresh_cli(capsys)
    new = key_file.read_text().strip()
    assert new != old
    with _client(webui["url"], webui["admin"]) as client:
        assert client.get("/openai/config").json()["OPENAI_API_KEYS"] == [new]
        assert client.get("/api/v1/retrieval/embedding").json()["openai_config"]["key"] == new


def test_a_member_of_the_group_sees_the_model_and_an_outsider_does_not(webui):
    member, outsider = webui["users"]["member"], webui["users"]["outsider"]
    assert webui["chat"] in _model_ids(webui["url"], _signin(webui["url"], member["email"], member["password"]))
    seen = _model_ids(webui["url"], _signin(webui["url"], outsider["email"], outsider["password"]))
    assert webui["chat"] not in seen
    assert webui["base"] not in seen, "models without a refresh entry are admin-only"
    assert webui["chat"] in _model_ids(webui["url"], webui["admin"])


def test_refresh_after_the_routes_are_removed_hides_the_model(webui, settings, storage, capsys):
    storage.delete(f"s3://{settings.triton_bucket}/routes/{webui['chat']}.json")
    result = _refresh_cli(capsys)
    assert webui["chat"] in result["deleted"] and webui["chat"] not in result["models"]
    member = webui["users"]["member"]
    assert webui["chat"] not in _model_ids(webui["url"], _signin(webui["url"], member["email"], member["password"]))
    with _client(webui["url"], webui["admin"]) as client:
        assert webui["chat"] not in {m["id"] for m in client.get("/api/v1/models/all").json()}
