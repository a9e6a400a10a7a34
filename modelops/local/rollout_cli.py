"""``modelops rollout status MODEL [--json]``: where a model's serving and its latest rollout stand.

Reads ``s3://<triton bucket>/routes/<model>.json`` (revision, weights, who wrote them) and
``s3://<triton bucket>/rollouts/<model>.json`` (deployment, stable, step k/n and its weight, status, each judged
step's numbers and reasons, error) from the local stack's S3 with its credentials (``stack.json``), or with
``--repo s3://BUCKET`` from any deployment's repository through the S3 the ``AWS_*`` variables name.
Exit 1 with one line for a model that has neither.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelops.storage import Storage


class UnknownModel(Exception):
    """Neither routes nor a rollout for this model."""


def collect(storage: Storage, bucket: str, model: str) -> dict[str, Any]:
    """The status document: ``{"model", "routes": {...} | None, "rollout": {...} | None}``.

    Raises:
        UnknownModel: the model has neither a routes file nor a rollout state.
    """
    from modelops.rollout.state import read
    from modelops.serving.routes import read_routes

    routes = read_routes(storage, bucket, model)
    state = read(storage, bucket, model)[0]
    if routes.etag is None and state is None:
        raise UnknownModel(f"no routes and no rollout for model {model!r} in s3://{bucket}")
    doc: dict[str, Any] = {"model": model, "routes": None, "rollout": None}
    if routes.etag is not None:
        doc["routes"] = {"revision": routes.revision, "weights": routes.weights(), "updated_at": routes.updated_at,
                         "updated_by": routes.updated_by}
    if state is not None:
        rollout = state.to_json()
        rollout.pop("history", None)
        rollout["step"] = state.step_index + 1  # 1-based; 0 = not started
        rollout["step_count"] = len(state.steps)
        rollout["weight"] = state.weight
        rollout["history"] = [dict(h) for h in state.history[:5]]
        doc["rollout"] = rollout
    return doc


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def render(doc: dict[str, Any]) -> str:
    """The status document as a few readable lines."""
    lines = [f"model {doc['model']}"]
    routes = doc["routes"]
    if routes:
        weights = ", ".join(f"{d} {w}%" for d, w in routes["weights"].items()) or "(none)"
        lines.append(f"routes: revision {routes['revision']}: {weights} (by {routes['updated_by'] or '?'} at "
                     f"{routes['updated_at'] or '?'})")
    else:
        lines.append("routes: none")
    r = doc["rollout"]
    if not r:
        lines.append("rollout: none")
        return "\n".join(lines)
    weight = f" at {r['weight']}%" if r["weight"] is not None else ""
    lines.append(f"rollout {r['run_id']} ({r['mode']}): {r['deployment']} over {', '.join(r['stable']) or '(none)'}")
    lines.append(f"  status {r['status']}, step {r['step']}/{r['step_count']}{weight}; steps {r['steps']}, "
                 f"interval {r['interval_s']:g} s; started {r['started_at']}, updated {r['updated_at']}")
    for entry in r["analysis"]:
        canary, stable = entry.get("canary") or {}, entry.get("stable") or {}
        verdict = {True: "passed", False: "FAILED", None: "no verdict"}[entry.get("passed")]
        lines.append(
            f"  step {int(entry['step_index']) + 1} ({entry.get('weight')}%) {verdict}: canary "
            f"{_num(canary.get('requests'), '.0f')} req, success {_num(canary.get('success_rate'), '.4f')}, "
            f"p99 {_num(canary.get('p99_ms'), '.1f')} ms; stable p99 {_num(stable.get('p99_ms'), '.1f')} ms"
            + (f"; {'; '.join(entry['reasons'])}" if entry.get("reasons") else "")
        )
    if r.get("error"):
        lines.append(f"  error: {r['error']}")
    return "\n".join(lines)


def run(storage: Storage, bucket: str, model: str, as_json: bool) -> int:
    """Print the status of ``model``; 1 with one line on stderr when it is unknown."""
    try:
        doc = collect(storage, bucket, model)
    except UnknownModel as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(doc, indent=2, sort_keys=True) if as_json else render(doc))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from modelops.local import stack
    from modelops.local.stack.state import StackError
    from modelops.storage import Storage

    if args.repo:  # any deployment: the repository's bucket, with the S3 the AWS_* variables name
        bucket = args.repo.removeprefix("s3://").strip("/").split("/")[0] if args.repo.startswith("s3://") else ""
        if not bucket:
            raise StackError(f"--repo must be s3://<bucket> (the Triton repository), got {args.repo!r}")
        return run(Storage(), bucket, args.model, args.json)
    info = stack.status()
    if not info.get("s3", {}).get("running"):
        raise StackError("the stack's S3 is not running; run `modelops stack up`")
    s3 = info["s3"]
    storage = Storage(stack.s3_config(info))
    return run(storage, s3["triton_bucket"], args.model, args.json)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``rollout status`` to the ``modelops`` command line."""
    parser = subparsers.add_parser("rollout", help="progressive rollouts: routes, steps and their analysis")
    actions = parser.add_subparsers(dest="rollout_command", required=True, metavar="ACTION")
    status = actions.add_parser("status", help="routes and the latest rollout of a model (the stack's S3, or --repo)")
    status.add_argument("model", help="public (registered) model name")
    status.add_argument("--repo", default=None, metavar="s3://BUCKET",
                        help="the Triton repository of another deployment (S3 from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, "
                        "AWS_SECRET_ACCESS_KEY); default: the embedded stack's")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=_cmd_status)
    return parser
