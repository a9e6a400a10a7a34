"""``modelops openwebui refresh [--json]``: an Open WebUI lists exactly the routed chat models.

It reads the routed public models (S3) and their MLflow registered models (description, tags ``modelops.task``
and ``openwebui.groups``) and runs :func:`modelops.serving.openwebui.refresh` as Open WebUI's admin.

Against the embedded stack (the default) it also makes sure Open WebUI's gateway key exists (``openwebui``,
granted ``*``). Against any deployment (``--openwebui-url`` or ``MODELOPS_OPENWEBUI_URL``): the admin's login from
``MODELOPS_OPENWEBUI_ADMIN_EMAIL`` / ``_PASSWORD``, the gateway as Open WebUI reaches it from ``--gateway-url`` or
``MODELOPS_GATEWAY_URL``, Open WebUI's gateway key from ``MODELOPS_OPENWEBUI_GATEWAY_KEY``, MLflow from
``--mlflow-url`` or ``MLFLOW_TRACKING_URI``, the routes from ``--repo s3://BUCKET`` (default
``MODELOPS_TRITON_BUCKET``) through the S3 the ``AWS_*`` variables name. Secrets are read from the environment
only, never from flags (which other users see in the process list).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

from modelops.settings import Settings


def refresh_stack(status: Mapping[str, Any], settings: Settings | None = None, *,
                  check_running: bool = True) -> dict[str, Any]:
    """:func:`~modelops.serving.openwebui.refresh` against the stack that ``status`` describes.

    ``check_running=False`` skips the check that Open WebUI, MLflow and S3 run (``stack up`` knows they do).

    Raises:
        StackError: Open WebUI or MLflow is not running, or a refresh call failed (one line).
    """
    from mlflow import MlflowClient

    from modelops.local.stack.auth import use_mlflow_credentials
    from modelops.local.stack.endpoints import s3_config
    from modelops.local.stack.openwebui_service import ensure_gateway_key
    from modelops.local.stack.state import StackError, StackState
    from modelops.serving.openwebui import OpenWebUIError, refresh, registry_models
    from modelops.storage import Storage

    settings = settings or Settings.from_env()
    for name in ("openwebui", "mlflow", "s3") if check_running else ():
        if not status[name]["running"]:
            raise StackError(f"the stack's {name} is not running; run `modelops stack up`")
    state = StackState.load(settings.stack_dir)
    if state is None:
        raise StackError(f"no stack in {settings.stack_dir}; run `modelops stack up`")
    key = ensure_gateway_key(state, settings)
    s3, mlflow, webui = status["s3"], status["mlflow"], status["openwebui"]
    storage = Storage(s3_config(status))
    use_mlflow_credentials(status)  # the stack's (operator's) MLflow login
    entries = registry_models(storage, s3["triton_bucket"], MlflowClient(mlflow["url"], mlflow["url"]))
    try:
        return refresh(webui["url"], webui["admin_email"], webui["admin_password"], status["gateway"]["url"], key,
                       entries)
    except OpenWebUIError as exc:
        raise StackError(str(exc)) from None


def refresh_deployment(settings: Settings, *, openwebui_url: str, gateway_url: str | None = None,
                       mlflow_url: str | None = None, repo: str | None = None) -> dict[str, Any]:
    """:func:`~modelops.serving.openwebui.refresh` against the deployment the arguments and
    :class:`~modelops.settings.ClientSettings` name.

    Raises:
        StackError: a setting is missing (all of them named, in one line), or a refresh call failed.
    """
    from mlflow import MlflowClient

    from modelops.local.stack.state import StackError
    from modelops.serving.openwebui import OpenWebUIError, refresh, registry_models
    from modelops.storage import Storage

    c = settings.clients
    gateway, mlflow = gateway_url or c.gateway_url, c.mlflow(mlflow_url)
    password = c.openwebui_admin_password.get_secret_value() if c.openwebui_admin_password else ""
    key = c.openwebui_gateway_key.get_secret_value() if c.openwebui_gateway_key else ""
    needed = {"MODELOPS_OPENWEBUI_ADMIN_EMAIL": c.openwebui_admin_email, "MODELOPS_OPENWEBUI_ADMIN_PASSWORD": password,
              "MODELOPS_GATEWAY_URL (or --gateway-url)": gateway, "MODELOPS_OPENWEBUI_GATEWAY_KEY": key,
              "MODELOPS_MLFLOW_URL (or MLFLOW_TRACKING_URI, --mlflow-url)": mlflow}  # fmt: skip
    missing = [name for name, value in needed.items() if not value]
    if missing:
        raise StackError(f"openwebui refresh of {openwebui_url}: set {', '.join(missing)}")
    bucket = settings.triton_bucket
    if repo:
        bucket = repo.removeprefix("s3://").strip("/").split("/")[0] if repo.startswith("s3://") else ""
        if not bucket:
            raise StackError(f"--repo must be s3://<bucket> (the Triton repository), got {repo!r}")
    entries = registry_models(Storage(), bucket, MlflowClient(mlflow, mlflow))
    try:
        return refresh(openwebui_url.rstrip("/"), c.openwebui_admin_email, password, gateway.rstrip("/"), key, entries)
    except OpenWebUIError as exc:
        raise StackError(str(exc)) from None


def _cmd(args: argparse.Namespace) -> int:
    from modelops.local import stack

    settings = Settings.from_env()
    openwebui_url = args.openwebui_url or settings.clients.openwebui_url
    if openwebui_url:
        result = refresh_deployment(settings, openwebui_url=openwebui_url, gateway_url=args.gateway_url,
                                    mlflow_url=args.mlflow_url, repo=args.repo)
    else:
        result = refresh_stack(stack.status(), settings)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        for what in ("groups_created", "created", "updated", "deleted"):
            if result[what]:
                print(f"{what.replace('_', ' ')}: {', '.join(result[what])}", file=sys.stderr)
        print(f"Open WebUI offers {len(result['models'])} chat model(s): {', '.join(result['models']) or '-'}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``openwebui refresh`` to the ``modelops`` command line."""
    parser = subparsers.add_parser("openwebui", help="Open WebUI (chat UI): the stack's or a deployment's")
    actions = parser.add_subparsers(dest="openwebui_command", required=True, metavar="ACTION")
    ref = actions.add_parser("refresh", help="publish the routed chat models (registry tags: groups, description)")
    ref.add_argument("--openwebui-url", help="a deployment's Open WebUI (default: MODELOPS_OPENWEBUI_URL, else the "
                     "stack's); its admin login and gateway key come from the environment")
    ref.add_argument("--gateway-url", help="the gateway as Open WebUI reaches it (default: MODELOPS_GATEWAY_URL)")
    ref.add_argument("--mlflow-url", help="the deployment's MLflow (default: MLFLOW_TRACKING_URI)")
    ref.add_argument("--repo", metavar="s3://BUCKET", help="the Triton repository (default: MODELOPS_TRITON_BUCKET, "
                     "S3 from the AWS_* variables)")
    ref.add_argument("--json", action="store_true", help="print what changed as JSON")
    ref.set_defaults(func=_cmd)
    return parser
