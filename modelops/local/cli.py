"""The ``modelops`` command line.

modelops stack up [SERVICE ...]      start the embedded stack (SeaweedFS, MLflow, Triton, gateway, Airflow)
modelops stack down [--purge]        stop it (data kept unless --purge)
modelops stack status [--json]       endpoints and processes; --json also prints the credentials
modelops stack env [--json]          shell exports of the stack's client settings (eval "$(modelops stack env)")
modelops --version                   the installed version
modelops demo                        the end-to-end demo (modelops/local/demo.py)
modelops keys create|list|revoke     API keys of the serving gateway (modelops/serving/gateway/keys_cli.py)
modelops serving reconcile [--watch S] load every routed deployment Triton does not serve (modelops/local/serving_cli.py)
modelops rollout status MODEL [--json] routes and the latest rollout of a model (modelops/local/rollout_cli.py)
modelops openwebui refresh [--json]  Open WebUI lists the routed chat models (modelops/local/openwebui_cli.py)
modelops gc [--dry-run] [--grace-s N] remove deployments without a manifest, never a routed one (modelops/serving/gc.py)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from modelops.local.stack.endpoints import LABELS, SERVICES


def _stack_services(args: argparse.Namespace) -> list[str] | None:
    return list(args.services) or None


def _cmd_stack_up(args: argparse.Namespace) -> int:
    from modelops.local import stack

    info = stack.up(services=_stack_services(args))
    _print_table(info)
    return 0


def _cmd_stack_down(args: argparse.Namespace) -> int:
    from modelops.local import stack

    stack.down(services=_stack_services(args), purge=args.purge)
    return 0


def _cmd_stack_status(args: argparse.Namespace) -> int:
    from modelops.local import stack

    info = stack.status()
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        _print_table(info)
        if not info.get("initialized"):
            print(f"no stack in {info['stack_dir']} yet; run `modelops stack up`", file=sys.stderr)
    if args.check and not all(info[name]["running"] for name in SERVICES if info[name].get("installed", True)):
        return 3
    return 0


def _cmd_stack_env(args: argparse.Namespace) -> int:
    """``export NAME=value`` lines (shell-quoted) of what a client of the running stack needs."""
    import shlex

    from modelops.local import stack
    from modelops.local.stack.state import StackError

    info = stack.status()
    if not info.get("initialized"):
        raise StackError(f"no stack in {info['stack_dir']} yet: start it with `modelops stack up` (its credentials "
                         "are made then)")
    env = stack.client_env(info)
    if args.json:
        print(json.dumps(env, indent=2, sort_keys=True))
    else:
        print("\n".join(f"export {name}={shlex.quote(value)}" for name, value in sorted(env.items())))
    return 0


def _url(info: dict[str, Any], name: str) -> str:
    svc = info[name]
    if name == "s3":
        return svc["endpoint"]
    if name == "triton":
        return f"{svc['http']} (grpc {svc['grpc']})"
    if name == "reconciler":
        return f"(no port) every {svc['interval_s']:g} s"
    return svc["url"]


def _print_table(info: dict[str, Any]) -> None:
    """A rich table of the services (no secrets) on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"modelops stack: {info['stack_dir']} (port offset {info['port_offset']})")
    for column in ("service", "pid", "state", "url", "log"):
        table.add_column(column, overflow="fold")
    colors = {"running": "green", "stopped": "dim", "exited": "red"}
    for name in SERVICES:
        svc = info[name]
        state = svc.get("state", "running" if svc["running"] else "stopped")
        table.add_row(
            LABELS[name],
            str(svc["pid"] or "-"),
            f"[{colors.get(state, 'white')}]{state}[/]",
            _url(info, name),
            svc["log"],
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # piped: do not fold paths at 80 columns
    console.print(table)


def _cmd_demo(args: argparse.Namespace) -> int:
    from modelops.local.demo import main as demo_main

    return demo_main(args)


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of ``modelops``."""
    parser = argparse.ArgumentParser(
        prog="modelops", description="MLflow -> ONNX/ORT -> Triton, orchestrated by Airflow"
    )
    from modelops import __version__

    parser.add_argument("--version", action="version", version=f"modelops {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    stack = commands.add_parser("stack", help="the embedded local stack (SeaweedFS, MLflow, Triton, gateway, Airflow)")
    stack_cmds = stack.add_subparsers(dest="stack_command", required=True, metavar="ACTION")
    names = f"services (default: all): {', '.join(SERVICES)}; dependencies are included"

    up = stack_cmds.add_parser("up", help="start the stack; running healthy services are left alone")
    up.add_argument("services", nargs="*", metavar="SERVICE", help=names)
    up.set_defaults(func=_cmd_stack_up)

    down = stack_cmds.add_parser("down", help="stop the stack's processes (data is kept)")
    down.add_argument("services", nargs="*", metavar="SERVICE", help="services to stop (and what needs them)")
    down.add_argument("--purge", action="store_true", help="also delete the stack directory (data, credentials)")
    down.set_defaults(func=_cmd_stack_down)

    status = stack_cmds.add_parser("status", help="endpoints and processes")
    status.add_argument("--json", action="store_true", help="print JSON, credentials included")
    status.add_argument("--check", action="store_true", help="exit with 3 unless every service is running")
    status.set_defaults(func=_cmd_stack_status)

    env = stack_cmds.add_parser("env", help="shell exports of the stack's client settings (MLflow, S3, Airflow "
                                "connections; credentials included): eval \"$(modelops stack env)\"")
    env.add_argument("--json", action="store_true", help="print one JSON object instead of export lines")
    env.set_defaults(func=_cmd_stack_env)

    demo = commands.add_parser("demo", help="run the end-to-end demo against the local stack")
    demo.add_argument(
        "--models",
        default=None,
        help="comma-separated demo models to register and optimize (default: digits,tabular,minilm,mobilenet)",
    )
    demo.add_argument("--no-chat", action="store_true",
                      help="skip the chat part: smollm2_chat served through the gateway and Open WebUI")
    demo.add_argument("--no-rollout", action="store_true",
                      help="skip the last part: a new digits_cnn version promoted step by step under traffic")
    demo.set_defaults(func=_cmd_demo)
    from modelops.local import optimize_cli, webhook_cli

    optimize_cli.add_parser(commands)
    webhook_cli.add_parser(commands)
    from modelops.serving.gateway import keys_cli

    keys_cli.add_parser(commands)
    from modelops.local import serving_cli

    serving_cli.add_parser(commands)
    from modelops.local import rollout_cli

    rollout_cli.add_parser(commands)
    from modelops.local import openwebui_cli

    openwebui_cli.add_parser(commands)
    from modelops.serving import gc

    gc.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``modelops`` console script."""
    args = build_parser().parse_args(argv)
    from modelops.local.stack.state import StackError
    from modelops.storage import StorageError

    try:
        return int(args.func(args) or 0)
    except (StackError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
