"""``modelops openwebui refresh [--json]``: the stack's Open WebUI lists exactly the routed chat models.

It reads the routed public models (the stack's S3) and their MLflow registered models (description, tags
``modelops.task`` and ``openwebui.groups``), makes sure Open WebUI's gateway key exists (``openwebui``,
granted ``*``) and runs :func:`modelops.serving.openwebui.refresh` as the stack's Open WebUI admin.
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


def _cmd(args: argparse.Namespace) -> int:
    from modelops.local import stack

    result = refresh_stack(stack.status())
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
    parser = subparsers.add_parser("openwebui", help="the stack's Open WebUI (chat UI)")
    actions = parser.add_subparsers(dest="openwebui_command", required=True, metavar="ACTION")
    ref = actions.add_parser("refresh", help="publish the routed chat models (registry tags: groups, description)")
    ref.add_argument("--json", action="store_true", help="print what changed as JSON")
    ref.set_defaults(func=_cmd)
    return parser
