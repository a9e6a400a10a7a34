"""``modelops webhook register | unregister | status``: the MLflow webhook that starts optimize_model runs.

``register`` creates (or updates) one MLflow webhook named ``modelops-airflow`` that posts the registry
events ModelOps reacts to to the receiver on Airflow's API server (``<airflow>/modelops/mlflow/webhook``), signed
with a secret generated once and kept in a file (mode 600). The receiver reads the same file at request time, so
``--rotate`` takes effect at once.

Against the embedded stack (the default): its MLflow (as its admin), its Airflow, ``<stack dir>/webhook/secret``.
Against any deployment: ``--mlflow-url`` (or ``MLFLOW_TRACKING_URI``, with ``MLFLOW_TRACKING_USERNAME`` /
``_PASSWORD`` of an MLflow admin), ``--airflow-url`` (or ``MODELOPS_AIRFLOW_URL``) or ``--url`` for the receiver,
and ``--secret-file`` (or ``MODELOPS_WEBHOOK_SECRET_FILE``: the file the receiver is configured with). Giving
``--mlflow-url``, ``--airflow-url``, ``--secret-file`` or ``MODELOPS_AIRFLOW_URL`` selects that mode.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelops.triggers.signature import new_secret, secret_path

WEBHOOK_NAME = "modelops-airflow"
RECEIVER_PATH = "/modelops/mlflow/webhook"
EVENTS = ("model_version_alias.created", "model_version_tag.set", "model_version.created")


@dataclass
class Target:
    """Where the webhook is managed: an MLflow client, the secret's file and the receiver's URL (None: unknown)."""

    client: Any
    secret_file: Path
    receiver_url: str | None


def _stack() -> tuple[Path, dict[str, Any]]:
    from modelops.local.stack.endpoints import build_status
    from modelops.local.stack.state import StackError, StackState
    from modelops.settings import Settings

    settings = Settings.from_env()
    state = StackState.load(settings.stack_dir)
    if state is None:
        raise StackError(f"no stack in {settings.stack_dir}; run `modelops stack up` first, or name a deployment "
                         "(--mlflow-url, --airflow-url, --secret-file)")
    return settings.stack_dir, build_status(state, settings, running={})


def target(mlflow_url: str | None = None, airflow_url: str | None = None, secret_file: str | None = None) -> Target:
    """The deployment the flags (else ``MLFLOW_TRACKING_URI``, ``MODELOPS_AIRFLOW_URL``,
    ``MODELOPS_WEBHOOK_SECRET_FILE``) name, or the embedded stack when no flag and no ``MODELOPS_AIRFLOW_URL`` is given.

    Raises:
        StackError: a deployment without its MLflow URL or secret file; no stack (one line).
    """
    from modelops.local.stack.state import StackError
    from modelops.settings import Settings

    settings = Settings.from_env()
    airflow = (airflow_url or settings.clients.airflow_url).rstrip("/")
    if mlflow_url or airflow or secret_file:
        from mlflow import MlflowClient

        url = settings.clients.mlflow(mlflow_url)
        if not url:
            raise StackError("webhook: the deployment's MLflow is unknown: give --mlflow-url, MODELOPS_MLFLOW_URL or "
                             "MLFLOW_TRACKING_URI")
        path = secret_file or settings.webhook.secret_file
        if not path:
            raise StackError("webhook: the secret's file is unknown: give --secret-file or MODELOPS_WEBHOOK_SECRET_FILE "
                             "(the file the receiver reads)")
        return Target(MlflowClient(tracking_uri=url, registry_uri=url), Path(path),
                      f"{airflow}{RECEIVER_PATH}" if airflow else None)
    stack_dir, status = _stack()
    return Target(_client(status), secret_path(stack_dir), receiver_url(status))


def receiver_url(status: dict[str, Any]) -> str:
    """The receiver's URL on the stack's Airflow API server."""
    return f"{status['airflow']['url'].rstrip('/')}{RECEIVER_PATH}"


def ensure_secret(stack_dir: Path, rotate: bool = False) -> str:
    """The stack's webhook secret, generated (mode 600) on first use or when ``rotate``."""
    return ensure_secret_file(secret_path(stack_dir), rotate)


def ensure_secret_file(path: Path, rotate: bool = False) -> str:
    """The secret in ``path``, generated there (mode 600) when the file is missing or empty, or when ``rotate``."""
    from modelops.local.stack.state import write_private

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


def register(url: str | None = None, rotate: bool = False, events: tuple[str, ...] = EVENTS,
             where: Target | None = None) -> dict[str, Any]:
    """Create or update the MLflow webhook of ``where`` (default: the stack); returns its description (never the
    secret).

    Raises:
        StackError: the receiver's URL is unknown (a deployment without ``--url`` or ``--airflow-url``).
    """
    from modelops.local.stack.state import StackError

    where = where or target()
    receiver = url or where.receiver_url
    if not receiver:
        raise StackError("webhook: the receiver is unknown: give --url or --airflow-url (or MODELOPS_AIRFLOW_URL)")
    secret = ensure_secret_file(where.secret_file, rotate)
    client = where.client
    existing = find_webhook(client)
    description = "ModelOps: registry events -> Airflow optimize_model runs"
    if existing is None:
        hook = client.create_webhook(WEBHOOK_NAME, receiver, list(events), description=description, secret=secret,
                                     status="ACTIVE")
        action = "created"
    else:
        hook = client.update_webhook(existing.webhook_id, url=receiver, events=list(events), description=description,
                                     secret=secret, status="ACTIVE")
        action = "updated"
    return {"action": action, "webhook_id": hook.webhook_id, "name": hook.name, "url": hook.url,
            "events": [str(e) for e in hook.events], "secret_file": str(where.secret_file),
            "note": "MLflow caches webhooks for up to 60 s: events right after a registration may be missed "
                    "(the registry_reconcile DAG starts their runs)"}


def unregister(where: Target | None = None) -> dict[str, Any]:
    """Delete the MLflow webhook of ``where`` (default: the stack); the secret file stays."""
    client = (where or target()).client
    hook = find_webhook(client)
    if hook is None:
        return {"action": "none", "name": WEBHOOK_NAME}
    client.delete_webhook(hook.webhook_id)
    return {"action": "deleted", "webhook_id": hook.webhook_id, "name": WEBHOOK_NAME}


def webhook_status(where: Target | None = None) -> dict[str, Any]:
    """The registered webhook (if any) and whether the secret file exists."""
    where = where or target()
    hook = find_webhook(where.client)
    out: dict[str, Any] = {"name": WEBHOOK_NAME, "registered": hook is not None,
                           "secret_file": str(where.secret_file), "secret_present": where.secret_file.exists(),
                           "expected_url": where.receiver_url}
    if hook is not None:
        out.update(webhook_id=hook.webhook_id, url=hook.url, status=str(hook.status),
                   events=[str(e) for e in hook.events])
    return out


def _cmd(args: argparse.Namespace) -> int:
    where = target(args.mlflow_url, args.airflow_url, args.secret_file)
    if args.webhook_command == "register":
        out = register(url=args.url, rotate=args.rotate, where=where)
        if args.test:
            result = where.client.test_webhook(out["webhook_id"], event="model_version_alias.created")
            out["test"] = {"success": result.success, "status": result.response_status,
                           "error": result.error_message}
    elif args.webhook_command == "unregister":
        out = unregister(where)
    else:
        out = webhook_status(where)
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0 if out.get("test", {}).get("success", True) else 1


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``webhook register|unregister|status`` to the ``modelops`` command line."""
    parser = subparsers.add_parser("webhook", help="the MLflow webhook that starts optimize_model runs")
    parser.add_argument("--mlflow-url", help="MLflow of a deployment (default: MLFLOW_TRACKING_URI when a deployment "
                        "is named, else the stack's)")
    parser.add_argument("--airflow-url", help="Airflow API server of a deployment (default: MODELOPS_AIRFLOW_URL)")
    parser.add_argument("--secret-file", help="the webhook secret's file the receiver reads (default: "
                        "MODELOPS_WEBHOOK_SECRET_FILE; the stack's: <stack dir>/webhook/secret)")
    actions = parser.add_subparsers(dest="webhook_command", required=True, metavar="ACTION")
    reg = actions.add_parser("register", help="create or update the MLflow webhook (prints JSON)")
    reg.add_argument("--url", help=f"receiver URL (default: the Airflow URL + {RECEIVER_PATH})")
    reg.add_argument("--rotate", action="store_true", help="generate a new secret")
    reg.add_argument("--test", action="store_true", help="ask MLflow to send a test delivery")
    actions.add_parser("unregister", help="delete the MLflow webhook (prints JSON)")
    actions.add_parser("status", help="show the registered webhook, never the secret (prints JSON)")
    parser.set_defaults(func=_cmd)
    return parser


if __name__ == "__main__":  # python -m modelops.local.webhook_cli register
    top = argparse.ArgumentParser(prog="modelops")
    add_parser(top.add_subparsers(dest="command", required=True))
    ns = top.parse_args(["webhook", *sys.argv[1:]])
    sys.exit(ns.func(ns))
