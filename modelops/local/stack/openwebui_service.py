"""Open WebUI, the chat UI of the embedded stack (optional: skipped with a hint without ``make openwebui``).

It runs from its own virtualenv (``.venv-openwebui``: it pins fastapi/pydantic versions of its own), bound to
127.0.0.1, its data (SQLite, uploads) in ``<stack dir>/openwebui``, fully offline. Chat models and retrieval
embeddings both come from the serving gateway's OpenAI-compatible ``/v1`` with a gateway key of its own
(``openwebui``, granted ``*``), created by the stack and kept in ``<stack dir>/config/openwebui-gateway.key``
(mode 600). Its admin account and ``WEBUI_SECRET_KEY`` are generated once and kept in ``stack.json`` (mode 600).
After it is healthy, every ``stack up`` refreshes its models from the registry (:mod:`modelops.serving.openwebui`).
"""

from __future__ import annotations

from pathlib import Path

from modelops.local.stack import process
from modelops.local.stack.endpoints import (
    gateway_keys_db,
    gateway_url,
    openwebui_key_file,
    openwebui_url,
    openwebui_venv,
)
from modelops.local.stack.service_spec import Context, _path_with, http
from modelops.local.stack.state import HOST, StackError, StackState, write_private
from modelops.settings import Settings

GATEWAY_KEY_NAME = "openwebui"
EMBEDDING_MODEL = "minilm_embedder"  # the gateway's text embedder (RAG over /v1/embeddings)


def gateway_key_file(state: StackState) -> Path:
    """``<stack dir>/config/openwebui-gateway.key``: Open WebUI's gateway key (mode 600)."""
    return openwebui_key_file(state.stack_dir)


def ensure_gateway_key(state: StackState, settings: Settings) -> str:
    """Open WebUI's gateway key: the stored one while the gateway's key store accepts it, else a new one.

    A new key (name ``openwebui``, models ``*``) replaces a revoked, unknown or unreadable one; the previous
    active key of that name is revoked first. The key is written to :func:`gateway_key_file` only.
    """
    from modelops.serving.gateway.keys import KeyStore, KeyStoreError, split_key

    store = KeyStore(gateway_keys_db(state, settings))
    path = gateway_key_file(state)
    try:
        key = path.read_text().strip()
    except OSError:
        key = ""
    parts = split_key(key)
    if parts is not None:
        stored = store.lookup(parts[0])
        if stored is not None and stored.key.name == GATEWAY_KEY_NAME and store.verify(stored, parts[1]):
            return key
    try:
        store.revoke(GATEWAY_KEY_NAME)
    except KeyStoreError:
        pass  # none active
    _record, key = store.create(GATEWAY_KEY_NAME, "*")
    write_private(path, key + "\n")
    return key


def _binary(ctx: Context) -> Path:
    path = openwebui_venv(ctx.settings) / "bin" / "open-webui"
    if not path.exists():
        raise StackError(f"open-webui not found at {path}; run `make openwebui`")
    return path


def _openwebui_prepare(ctx: Context) -> None:
    _binary(ctx)
    data = ctx.state.stack_dir / "openwebui"
    data.mkdir(parents=True, exist_ok=True)
    data.chmod(0o700)  # its database holds the users and the gateway key
    ensure_gateway_key(ctx.state, ctx.settings)


def _openwebui_command(ctx: Context) -> list[str]:
    return [str(_binary(ctx)), "serve", "--host", HOST, "--port", str(ctx.state.ports["openwebui"])]


def _openwebui_env(ctx: Context) -> dict[str, str]:
    state, creds = ctx.state, ctx.state.credentials
    key = gateway_key_file(state).read_text().strip()
    v1 = f"{gateway_url(state)}/v1"
    venv = openwebui_venv(ctx.settings)
    return {
        **{k: v for k, v in ctx.base_env().items() if not k.startswith("MODELOPS_")},
        "PATH": _path_with(venv / "bin"),
        "VIRTUAL_ENV": str(venv),
        "DATA_DIR": str(state.stack_dir / "openwebui"),
        "HOST": HOST,
        "PORT": str(state.ports["openwebui"]),
        "WEBUI_SECRET_KEY": creds.openwebui_secret_key,
        "WEBUI_ADMIN_EMAIL": creds.openwebui_admin_email,
        "WEBUI_ADMIN_PASSWORD": creds.openwebui_admin_password,
        "WEBUI_ADMIN_NAME": "ModelOps admin",
        "ENABLE_SIGNUP": "false",
        "ENABLE_API_KEYS": "true",
        "CORS_ALLOW_ORIGIN": openwebui_url(state),  # its own pages only (the default is '*')
        # offline: no model downloads, no update checks, no telemetry
        "OFFLINE_MODE": "true",
        "HF_HUB_OFFLINE": "1",
        "ENABLE_VERSION_UPDATE_CHECK": "false",
        "ANONYMIZED_TELEMETRY": "false",
        "DO_NOT_TRACK": "true",
        "SCARF_NO_ANALYTICS": "true",
        # models: only the gateway (the refresh sets the same connection and the per-model access)
        "ENABLE_OLLAMA_API": "false",
        "ENABLE_OPENAI_API": "true",
        "OPENAI_API_BASE_URL": v1,
        "OPENAI_API_KEY": key,
        # retrieval embeddings through the gateway too
        "RAG_EMBEDDING_ENGINE": "openai",
        "RAG_OPENAI_API_BASE_URL": v1,
        "RAG_OPENAI_API_KEY": key,
        "RAG_EMBEDDING_MODEL": EMBEDDING_MODEL,
    }


def _openwebui_health(ctx: Context) -> bool:
    return http("GET", f"{openwebui_url(ctx.state)}/health")[0] == 200


def _openwebui_configure(ctx: Context) -> None:
    """Refresh its connection, groups and models from the registry (a failure is said, not raised)."""
    from modelops.local.openwebui_cli import refresh_stack

    try:
        result = refresh_stack(ctx.status, ctx.settings, check_running=False)
        process.say(f"openwebui: {len(result['models'])} chat model(s) published "
                    f"({', '.join(result['models']) or 'none routed'})")
    except Exception as exc:  # noqa: BLE001 - the UI is up; say why its model list may be stale
        process.say(f"openwebui refresh failed: {str(exc).splitlines()[0] if str(exc) else exc!r}")
