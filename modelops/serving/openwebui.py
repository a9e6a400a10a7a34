"""Registry -> Open WebUI: the chat UI lists exactly the routed chat models, each visible to its groups.

:func:`refresh` is idempotent. Signed in as the Open WebUI admin it

1. points Open WebUI's OpenAI connection and its retrieval embeddings (``minilm_embedder``) at the gateway's
   ``/v1`` with a gateway key of its own;
2. creates the groups named by the models' ``openwebui.groups`` tags that do not exist yet;
3. creates or updates one Open WebUI model per routed chat model (same id as the gateway's public model,
   so it overrides that base model: name, description, read access for its groups; no groups = admins only),
   and a hidden one (``is_active: false``) per routed model of another task, so that embedders and
   classifiers listed by ``/v1/models`` are not offered as chat models;
4. deletes the Open WebUI models it manages whose public model is no longer routed;
5. reloads Open WebUI's model list (``GET /api/models?refresh=true``: chat only finds a model after it).

The models come from :func:`registry_models`: the routed public names (the routes files) with the
description and tags of their MLflow registered model. Which Open WebUI calls to make is decided by the pure
:func:`plan_models`. API paths and bodies are Open WebUI 0.12.4's (``open_webui/routers``): per-model access
is ``access_grants`` (the older ``access_control`` body is silently ignored there).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import httpx

from modelops.contracts.naming import TAG_OPENWEBUI_GROUPS, TAG_TASK, TASKS

log = logging.getLogger(__name__)

TASK_CHAT, TASK_EMBEDDING = TASKS
MANAGED = "modelops"  # key in an Open WebUI model's meta marking the models this module manages


class OpenWebUIError(RuntimeError):
    """An Open WebUI call failed; the message is one line (never a secret)."""


class ModelEntry(NamedTuple):
    """A routed public model as Open WebUI should show it."""

    name: str
    description: str = ""
    groups: tuple[str, ...] = ()
    task: str | None = None  # "chat" | "embedding" | None (untagged: not a chat model)


# -- pure: the model list ---------------------------------------------------------------------------
def parse_groups(value: str | None) -> tuple[str, ...]:
    """``"demo-users, ops,demo-users"`` -> ``("demo-users", "ops")``: comma-separated names, first occurrence kept.

    Raises:
        ValueError: a name with a control character or longer than 100 characters.
    """
    names = tuple(dict.fromkeys(part.strip() for part in (value or "").split(",") if part.strip()))
    bad = [n for n in names if len(n) > 100 or any(ord(c) < 32 for c in n)]
    if bad:
        raise ValueError(f"invalid Open WebUI group name(s) {bad!r} in tag {TAG_OPENWEBUI_GROUPS}")
    return names


def entry_from_registry(name: str, description: str | None, tags: Mapping[str, str]) -> ModelEntry:
    """The entry of public model ``name`` from its registered model's description and tags.

    A ``modelops.task`` outside chat/embedding is kept as given (the model is then not offered as a chat model).
    """
    task = (tags.get(TAG_TASK) or "").strip().lower() or None
    return ModelEntry(name, (description or "").strip(), parse_groups(tags.get(TAG_OPENWEBUI_GROUPS)), task)


def missing_groups(entries: Iterable[ModelEntry], existing: Iterable[str]) -> list[str]:
    """Group names the chat entries need that are not among ``existing``, sorted."""
    have = set(existing)
    return sorted({g for e in entries if e.task == TASK_CHAT for g in e.groups} - have)


def desired_model(entry: ModelEntry, group_ids: Mapping[str, str]) -> dict[str, Any]:
    """The Open WebUI ``ModelForm`` body for ``entry`` (``group_ids``: group name -> Open WebUI group id).

    Raises:
        KeyError: a group of a chat entry has no id in ``group_ids``.
    """
    chat = entry.task == TASK_CHAT
    grants = [{"principal_type": "group", "principal_id": group_ids[g], "permission": "read"}
              for g in entry.groups] if chat else []
    return {
        "id": entry.name,
        "base_model_id": None,  # an override of the gateway's model with the same id
        "name": entry.name,
        "meta": {"description": entry.description or None,
                 MANAGED: {"managed": True, "task": entry.task, "groups": list(entry.groups) if chat else []}},
        "params": {},
        "access_grants": grants,
        "is_active": chat,
    }


def _grant_set(grants: Iterable[Mapping[str, Any]] | None) -> set[tuple[str, str, str]]:
    return {(str(g.get("principal_type")), str(g.get("principal_id")), str(g.get("permission"))) for g in grants or ()}


def _differs(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    meta = current.get("meta") or {}
    return (
        current.get("name") != wanted["name"]
        or (meta.get("description") or None) != wanted["meta"]["description"]
        or meta.get(MANAGED) != wanted["meta"][MANAGED]
        or bool(current.get("is_active")) != wanted["is_active"]
        or current.get("base_model_id") is not None
        or _grant_set(current.get("access_grants")) != _grant_set(wanted["access_grants"])
    )


def is_managed(model: Mapping[str, Any]) -> bool:
    """Whether an Open WebUI model was written by :func:`refresh` (its meta carries the marker)."""
    marker = (model.get("meta") or {}).get(MANAGED)
    return isinstance(marker, Mapping) and bool(marker.get("managed"))


@dataclass
class ModelPlan:
    """What :func:`refresh` does to Open WebUI's models."""

    create: list[dict[str, Any]] = field(default_factory=list)
    update: list[dict[str, Any]] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def plan_models(entries: Sequence[ModelEntry], existing: Sequence[Mapping[str, Any]],
                group_ids: Mapping[str, str]) -> ModelPlan:
    """Create/update/delete to go from Open WebUI's ``existing`` models to one per routed entry.

    ``existing`` is ``GET /api/v1/models/all`` (every workspace model). An existing model with an entry's id
    is taken over (updated) even when an admin wrote it; a managed model without an entry is deleted; models
    an admin wrote for other ids are left alone.
    """
    by_id = {str(m["id"]): m for m in existing}
    plan = ModelPlan()
    wanted_ids = set()
    for entry in sorted(entries, key=lambda e: e.name):
        wanted_ids.add(entry.name)
        body = desired_model(entry, group_ids)
        current = by_id.get(entry.name)
        if current is None:
            plan.create.append(body)
        elif _differs(current, body):
            plan.update.append(body)
        else:
            plan.unchanged.append(entry.name)
    plan.delete = sorted(i for i, m in by_id.items() if i not in wanted_ids and is_managed(m))
    return plan


# -- where the entries come from -------------------------------------------------------------------
def routed_models(storage: Any, triton_bucket: str) -> list[str]:
    """Public model names with at least one deployment at a positive weight in ``routes/*.json``."""
    from modelops.serving.reconcile import routed_deployments

    return sorted({m for models in routed_deployments(storage, triton_bucket).values() for m in models})


def registry_models(storage: Any, triton_bucket: str, mlflow_client: Any) -> list[ModelEntry]:
    """One entry per routed public model, with its MLflow registered model's description and tags.

    A routed name with no registered model gets an entry without task (not offered as a chat model).
    """
    entries = []
    for name in routed_models(storage, triton_bucket):
        try:
            registered = mlflow_client.get_registered_model(name)
        except Exception as exc:  # MLflow raises RestException (an MlflowException) with error_code
            if "RESOURCE_DOES_NOT_EXIST" not in str(getattr(exc, "error_code", "")) + str(exc):
                raise
            log.info("openwebui: routed model %s has no registered model in MLflow", name)
            entries.append(ModelEntry(name))
            continue
        entries.append(entry_from_registry(name, registered.description, dict(registered.tags or {})))
    return entries


# -- Open WebUI calls ------------------------------------------------------------------------------
def _check(resp: httpx.Response, what: str) -> Any:
    if resp.status_code >= 400:
        try:
            detail = resp.json().get("detail", "")
        except (ValueError, AttributeError):
            detail = resp.text[:200]
        raise OpenWebUIError(f"Open WebUI {what} failed: HTTP {resp.status_code} {detail}".strip())
    return resp.json() if resp.content else None


def signin(client: httpx.Client, email: str, password: str) -> str:
    """The session token of ``email`` (``POST /api/v1/auths/signin``)."""
    doc = _check(client.post("/api/v1/auths/signin", json={"email": email, "password": password}), "sign-in")
    token = (doc or {}).get("token")
    if not token:
        raise OpenWebUIError(f"Open WebUI sign-in of {email} returned no token (pending user or MFA?)")
    return str(token)


def set_connection(client: httpx.Client, gateway_v1: str, gateway_key: str) -> None:
    """The only OpenAI connection: the gateway's ``/v1`` with ``gateway_key`` (``POST /openai/config/update``)."""
    body = {"ENABLE_OPENAI_API": True, "OPENAI_API_BASE_URLS": [gateway_v1], "OPENAI_API_KEYS": [gateway_key],
            "OPENAI_API_CONFIGS": {"0": {"enable": True}}}
    _check(client.post("/openai/config/update", json=body), "connection update")


def set_embeddings(client: httpx.Client, gateway_v1: str, gateway_key: str, model: str) -> None:
    """Retrieval embeddings from ``model`` through the gateway (``POST /api/v1/retrieval/embedding/update``).

    Open WebUI keeps its settings in its database after the first start (the environment is read once), so a
    replaced gateway key must be set here too.
    """
    body = {"RAG_EMBEDDING_ENGINE": "openai", "RAG_EMBEDDING_MODEL": model, "RAG_EMBEDDING_BATCH_SIZE": 16,
            "ENABLE_ASYNC_EMBEDDING": True, "openai_config": {"url": gateway_v1, "key": gateway_key}}
    _check(client.post("/api/v1/retrieval/embedding/update", json=body), "embedding settings update")


def ensure_groups(client: httpx.Client, entries: Sequence[ModelEntry]) -> tuple[dict[str, str], list[str]]:
    """Group name -> id after creating the missing ones (``/api/v1/groups``); also returns the created names."""
    groups = _check(client.get("/api/v1/groups/"), "group list") or []
    ids = {str(g["name"]): str(g["id"]) for g in groups}
    created = missing_groups(entries, ids)
    for name in created:
        body = {"name": name, "description": "created by modelops openwebui refresh (registry tag openwebui.groups)"}
        doc = _check(client.post("/api/v1/groups/create", json=body), f"creation of group {name!r}")
        ids[name] = str(doc["id"])
    return ids, created


def refresh(openwebui_url: str, admin_email: str, admin_password: str, gateway_url: str, gateway_key: str,
            models: Sequence[ModelEntry], *, embedding_model: str | None = "minilm_embedder",
            timeout_s: float = 60.0) -> dict[str, Any]:
    """Make Open WebUI show exactly ``models`` (see the module docstring); idempotent.

    Args:
        openwebui_url: Open WebUI's base URL.
        admin_email: an Open WebUI admin's email.
        admin_password: that admin's password.
        gateway_url: the gateway's base URL (the connection is ``<gateway_url>/v1``).
        gateway_key: the gateway key Open WebUI calls it with (granted every model it should list).
        models: the routed public models (:func:`registry_models`).
        embedding_model: the gateway model for Open WebUI's retrieval embeddings (None: leave them alone).
        timeout_s: per-request timeout.

    Returns:
        ``{"connection", "embedding_model", "groups_created", "created", "updated", "deleted", "unchanged",
        "models"}``: names;
        ``models`` are the chat models Open WebUI now offers.

    Raises:
        OpenWebUIError: a call failed (one line).
    """
    v1 = gateway_url.rstrip("/") + "/v1"
    try:
        with httpx.Client(base_url=openwebui_url.rstrip("/"), timeout=timeout_s, trust_env=False) as client:
            client.headers["Authorization"] = f"Bearer {signin(client, admin_email, admin_password)}"
            set_connection(client, v1, gateway_key)
            if embedding_model:
                set_embeddings(client, v1, gateway_key, embedding_model)
            group_ids, groups_created = ensure_groups(client, models)
            existing = _check(client.get("/api/v1/models/all"), "model list") or []
            plan = plan_models(models, existing, group_ids)
            for body in plan.create:
                _check(client.post("/api/v1/models/create", json=body), f"creation of model {body['id']!r}")
            for body in plan.update:
                _check(client.post("/api/v1/models/model/update", json=body), f"update of model {body['id']!r}")
            for model_id in plan.delete:
                _check(client.post("/api/v1/models/model/delete", json={"id": model_id}),
                       f"deletion of model {model_id!r}")
            _check(client.get("/api/models", params={"refresh": "true"}), "model list reload")
    except httpx.HTTPError as exc:
        raise OpenWebUIError(f"Open WebUI at {openwebui_url} unreachable: {type(exc).__name__}: {exc}") from None
    return {
        "connection": v1,
        "embedding_model": embedding_model,
        "groups_created": groups_created,
        "created": [b["id"] for b in plan.create],
        "updated": [b["id"] for b in plan.update],
        "deleted": plan.delete,
        "unchanged": plan.unchanged,
        "models": sorted(e.name for e in models if e.task == TASK_CHAT),
    }


def ensure_user(openwebui_url: str, admin_email: str, admin_password: str, *, name: str, email: str, password: str,
                groups: Sequence[str], timeout_s: float = 60.0) -> str:
    """Create the Open WebUI user ``email`` (role user) if missing and put it in ``groups``; returns its id.

    Idempotent: an existing user keeps its password and is only added to the groups it is missing from.

    Raises:
        OpenWebUIError: a call failed (one line), or a group does not exist (run :func:`refresh` first).
    """
    try:
        with httpx.Client(base_url=openwebui_url.rstrip("/"), timeout=timeout_s, trust_env=False) as client:
            client.headers["Authorization"] = f"Bearer {signin(client, admin_email, admin_password)}"
            users = _check(client.get("/api/v1/users/all"), "user list") or {}
            found = next((u for u in users.get("users", []) if str(u.get("email", "")).lower() == email.lower()),
                         None)  # fmt: skip
            if found is None:
                body = {"name": name, "email": email, "password": password, "role": "user"}
                found = _check(client.post("/api/v1/auths/add", json=body), f"creation of user {email}")
            user_id = str(found["id"])
            ids = {str(g["name"]): str(g["id"]) for g in _check(client.get("/api/v1/groups/"), "group list") or []}
            for group in groups:
                if group not in ids:
                    raise OpenWebUIError(f"Open WebUI has no group {group!r}; run `modelops openwebui refresh` first")
                _check(client.post(f"/api/v1/groups/id/{ids[group]}/users/add", json={"user_ids": [user_id]}),
                       f"adding {email} to group {group!r}")
            return user_id
    except httpx.HTTPError as exc:
        raise OpenWebUIError(f"Open WebUI at {openwebui_url} is unreachable: {type(exc).__name__}") from None
