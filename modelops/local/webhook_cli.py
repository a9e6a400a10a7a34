"""``modelops webhook register | unregister | status``: the MLflow webhook of the local stack.

``register`` creates (or updates) one MLflow webhook named ``modelops-airflow`` that posts the registry
events ModelOps reacts to to the receiver on Airflow's API server
(``http://127.0.0.1:<airflow port>/modelops/mlflow/webhook``), signed with a secret generated once and kept
in ``<stack dir>/webhook/secret`` (mode 600, beside ``stack.json``). The receiver reads the same file at
request time, so nothing in the stack's environment changes and ``--rotate`` takes effect at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from modelops.triggers.signature import new_secret, secret_path

WEBHOOK_NAME = "modelops-airflow"
RECEIVER_PATH = "/modelops/mlflow/webhook"
EVENTS = ("model_version_alias.created", "model_version_tag.set", "model_version.created")


def _stack() -> tuple[Path, dict[str, Any]]:
    from modelops.local.stack.endpoints import build_status
    from modelops.local.stack.state import StackError, StackState
    from modelops.settings import Settings

    settings = Settings.from_env()
    state = StackState.load(settings.stack_dir)
    if state is None:
        raise StackError(f"no stack in {settings.stack_dir}; run `modelops stack up` first")
    return settings.stack_dir, build_status(state, settings, running={})


def receiver_url(status: dict[str, Any]) -> str:
    """The receiver's URL on the stack's Airflow API server."""
    return f"{status['airflow']['url'].rstrip('/')}{RECEIVER_PATH}"


def ensure_secret(stack_dir: Path, rotate: bool = False) -> str:
    """The stack's webhook secret, generated (mode 600) on first use or when ``rotate``."""
    from modelops.local.stack.state import write_private

    path = secret_path(stack_dir)
    if path.exists() and not rotate:
        text = path.read_text().strip()
        if text:
            return text
    secret = new_secret()
    write_private(path, secret + "\n")
    return secret


def _client(status: dict[str, Any]):
    from mlflow import MlflowClient

    from modelops.local.stack.auth import use_mlflow_credentials

    use_mlflow_credentials(status)  # webhooks are managed by MLflow's admin
    url = status["mlflow"]["url"]
    return MlflowClient(tracking_uri=url, registry_uri=url)


def find_webhook(client: Any, name: str = WEBHOOK_NAME) -> Any | None:
    """The webhook called ``name``, or None."""
    token = None
    while True:
        page = client.list_webhooks(max_results=100, page_token=token)
        for hook in page:
            if hook.name == name:
                return hook
        token = page.token
        if not token:
            return None


def register(url: str | None = None, rotate: bool = False, events: tuple[str, ...] = EVENTS) -> dict[str, Any]:
    """Create or update the stack's MLflow webhook; returns its description (never the secret)."""
    stack_dir, status = _stack()
    secret = ensure_secret(stack_dir, rotate)
    client = _client(status)
    target = url or receiver_url(status)
    existing = find_webhook(client)
    description = "ModelOps: registry events -> Airflow optimize_model runs"
    if existing is None:
        hook = client.create_webhook(WEBHOOK_NAME, target, list(events), description=description, secret=secret,
                                     status="ACTIVE")
        action = "created"
    else:
        hook = client.update_webhook(existing.webhook_id, url=target, events=list(events), description=description,
                                     secret=secret, status="ACTIVE")
        action = "updated"
    return {"action": action, "webhook_id": hook.webhook_id, "name": hook.name, "url": hook.url,
            "events": [str(e) for e in hook.events], "secret_file": str(secret_path(stack_dir)),
            "note": "MLflow caches webhooks for up to 60 s: events right after a registration may be missed "
                    "(the registry_reconcile DAG starts their runs)"}


def unregister() -> dict[str, Any]:
    """Delete the stack's MLflow webhook (the secret file stays)."""
    _, status = _stack()
    client = _client(status)
    hook = find_webhook(client)
    if hook is None:
        return {"action": "none", "name": WEBHOOK_NAME}
    client.delete_webhook(hook.webhook_id)
    return {"action": "deleted", "webhook_id": hook.webhook_id, "name": WEBHOOK_NAME}


def webhook_status() -> dict[str, Any]:
    """The registered webhook (if any) and whether the secret file exists."""
    stack_dir, status = _stack()
    hook = find_webhook(_client(status))
    out: dict[str, Any] = {"name": WEBHOOK_NAME, "registered": hook is not None,
                           "secret_file": str(secret_path(stack_dir)), "secret_present": secret_path(stack_dir).exists(),
                           "expected_url": receiver_url(status)}
    if hook is not None:
        out.update(webhook_id=hook.webhook_id, url=hook.url, status=str(hook.status),
                   events=[str(e) for e in hook.events])
    return out


def _cmd(args: argparse.Namespace) -> int:
    if args.webhook_command == "register":
        out = register(url=args.url, rotate=args.rotate)
        if args.test:
            result = _client(_stack()[1]).test_webhook(out["webhook_id"], event="model_version_alias.created")
            out["test"] = {"success": result.success, "status": result.response_status,
                           "error": result.error_message}
    elif args.webhook_command == "unregister":
        out = unregister()
    else:
        out = webhook_status()
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0 if out.get("test", {}).get("success", True) else 1


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``webhook register|unregister|status`` to the ``modelops`` command line."""
    parser = subparsers.add_parser("webhook", help="the MLflow webhook that starts optimize_model runs")
    actions = parser.add_subparsers(dest="webhook_command", required=True, metavar="ACTION")
    reg = actions.add_parser("register", help="create or update the MLflow webhook of the local stack")
    reg.add_argument("--url", help=f"receiver URL (default: the stack's Airflow + {RECEIVER_PATH})")
    reg.add_argument("--rotate", action="store_true", help="generate a new secret")
    reg.add_argument("--test", action="store_true", help="ask MLflow to send a test delivery")
    actions.add_parser("unregister", help="delete the MLflow webhook")
    actions.add_parser("status", help="show the registered webhook (never the secret)")
    parser.set_defaults(func=_cmd)
    return parser


if __name__ == "__main__":  # python -m modelops.local.webhook_cli register
    top = argparse.ArgumentParser(prog="modelops")
    add_parser(top.add_subparsers(dest="command", required=True))
    ns = top.parse_args(["webhook", *sys.argv[1:]])
    sys.exit(ns.func(ns))
