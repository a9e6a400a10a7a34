"""``modelops serving reconcile``: load every routed deployment Triton does not serve (the desired state).

Against the local stack by default (endpoints and the admin token from ``stack.json``). With ``--triton``
it reconciles any Triton: the Kubernetes sidecar form, one per Triton replica (see
:mod:`modelops.serving.reconcile`), with the admin token read from ``--admin-token-file`` and S3 from the
``AWS_*`` environment. ``--watch SECONDS`` repeats it until interrupted (the stack's ``reconciler`` service);
it then reports only what it changed or could not do, not the deployments already ready.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from modelops.serving.reconcile import FAILED, READY, Action


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _say_changes(line: str) -> None:
    """``_say`` without the ``<deployment> (<models>): ready`` lines (a watch would log them every pass)."""
    if not line.endswith(f": {READY}"):
        _say(line)


def _runner(args: argparse.Namespace) -> Any:
    """A no-argument function doing one reconcile pass against the chosen Triton."""
    from modelops.local.stack.state import StackError

    say = _say_changes if args.watch else _say

    if args.triton:
        from modelops.serving.reconcile import admin_client, reconcile
        from modelops.settings import Settings
        from modelops.storage import Storage

        if not args.admin_token_file:
            raise StackError("--triton needs --admin-token-file (the file holding Triton's admin token)")
        try:
            token = Path(args.admin_token_file).read_text().strip()
        except OSError as exc:
            raise StackError(f"cannot read the admin token file {args.admin_token_file}: {exc.strerror}") from None
        bucket = Settings.from_env().triton_bucket

        def run() -> list[Action]:
            client = admin_client(args.triton.removeprefix("http://"), args.admin_header, token)
            try:
                return reconcile(client, Storage(), bucket, say=say)
            finally:
                client.close()

        return run

    from modelops.local import stack
    from modelops.serving.reconcile import reconcile_stack

    def run_stack() -> list[Action]:
        info = stack.status()
        if not info["triton"]["running"]:
            raise StackError("the stack's Triton is not running; run `modelops stack up`")
        return reconcile_stack(info, say=say)

    return run_stack


def _cmd(args: argparse.Namespace) -> int:
    run = _runner(args)
    if args.watch:
        from modelops.serving.reconcile import watch

        _say(f"reconciling every {args.watch:g} s; Ctrl-C stops")
        if args.ready_file:
            Path(args.ready_file).write_text(f"{os.getpid()}\n")
        watch(run, args.watch)
        return 0
    actions = run()
    if args.json:
        print(json.dumps([a.to_dict() for a in actions], indent=2))
    return 1 if any(a.action == FAILED for a in actions) else 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``serving reconcile`` to the ``modelops`` command line."""
    parser = subparsers.add_parser("serving", help="the serving Triton: desired state from the routes files")
    actions = parser.add_subparsers(dest="serving_command", required=True, metavar="ACTION")
    rec = actions.add_parser("reconcile", help="load every routed deployment that Triton does not report ready")
    rec.add_argument("--json", action="store_true", help="print the actions as JSON")
    rec.add_argument("--watch", type=float, default=0.0, metavar="SECONDS", help="repeat every SECONDS (sidecar)")
    rec.add_argument("--triton", help="host:port of a Triton's HTTP endpoint (default: the local stack's)")
    rec.add_argument("--admin-token-file", help="file holding that Triton's admin token (with --triton)")
    rec.add_argument("--admin-header", default="X-ModelOps-Admin", help="the admin header name (with --triton)")
    rec.add_argument("--ready-file", metavar="PATH",
                     help="with --watch: write this process's pid to PATH once watching (a supervisor's check)")
    rec.set_defaults(func=_cmd)
    return parser
