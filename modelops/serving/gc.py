"""``modelops gc``: remove the partial deployments that publishers left behind in the Triton repository.

A deployment folder without ``manifest.json`` is never loaded (:func:`~modelops.serving.publish.verify_deployment`);
it is what a publisher that died (or lost S3) mid-upload leaves. The next publish of the same content completes
it; any other is garbage. :func:`collect` removes such a folder when all of this holds:

- it has no ``manifest.json``;
- its newest object is older than the grace period (a publisher still uploading keeps writing objects);
- no routes file (``routes/<model>.json``) and no rollout state (``rollouts/<model>.json``: its deployment, its
  stable ones and those in its history) names it.

An unreadable routes file or rollout state stops the collection: what it protects cannot be known.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from modelops.contracts.naming import is_deployment_name
from modelops.storage import Storage, StorageError

MANIFEST = "manifest.json"
DEFAULT_GRACE_S = 3600.0


class GcError(RuntimeError):
    """The collection cannot run safely; the message is one line."""


@dataclass
class Partial:
    """A deployment folder without a manifest, and what gc did with it."""

    deployment: str
    objects: int
    age_s: float
    action: str  # "removed" | "would remove" | "kept: routed" | "kept: younger than the grace period"


def _names_in(doc: Any) -> set[str]:
    """Deployment names a routes file or a rollout state refers to."""
    names: set[str] = set()
    if not isinstance(doc, dict):
        return names
    for route in doc.get("routes") or []:
        if isinstance(route, dict) and route.get("deployment"):
            names.add(str(route["deployment"]))
    for entry in [doc, *(doc.get("history") or [])]:
        if isinstance(entry, dict):
            if entry.get("deployment"):
                names.add(str(entry["deployment"]))
            names.update(str(d) for d in entry.get("stable") or [])
    return names


def protected(storage: Storage, repo: str) -> set[str]:
    """Every deployment named by a routes file or a rollout state under ``repo``.

    Raises:
        GcError: one of those files cannot be read or parsed.
    """
    names: set[str] = set()
    for folder in ("routes", "rollouts"):
        for uri in storage.list(f"{repo.rstrip('/')}/{folder}"):
            if not uri.endswith(".json"):
                continue
            try:
                names |= _names_in(json.loads(storage.read_bytes(uri)))
            except (ValueError, FileNotFoundError) as exc:
                raise GcError(f"{uri} is unreadable ({exc}); refusing to collect anything") from None
    return names


def collect(storage: Storage, repo: str, *, grace_s: float = DEFAULT_GRACE_S, dry_run: bool = False,
            now: float | None = None) -> list[Partial]:
    """Find (and unless ``dry_run`` remove) the unmanifested deployments of the repository ``repo``.

    Args:
        storage: S3 (or local) storage.
        repo: the Triton repository: ``s3://<triton bucket>`` or a local folder.
        grace_s: a partial deployment whose newest object is younger than this is kept (may still be uploading).
        dry_run: report what would be removed, remove nothing.
        now: the current epoch time (tests).

    Returns:
        Every partial deployment found, with its action, sorted by name.
    """
    if grace_s < 0:
        raise GcError(f"--grace-s must be >= 0, got {grace_s:g}")
    now = time.time() if now is None else now
    root = repo.rstrip("/") + "/"
    folders: dict[str, list[tuple[str, float]]] = {}
    for uri, mtime in storage.list_entries(repo):
        top, sep, _rest = uri[len(root):].partition("/")
        if sep and is_deployment_name(top):
            folders.setdefault(top, []).append((uri, mtime))
    partial = {name: objs for name, objs in folders.items() if f"{root}{name}/{MANIFEST}" not in {u for u, _ in objs}}
    if not partial:
        return []
    keep = protected(storage, repo)
    out: list[Partial] = []
    for name, objs in sorted(partial.items()):
        age = now - max(mtime for _, mtime in objs)
        if name in keep:
            action = "kept: routed"
        elif age < grace_s:
            action = "kept: younger than the grace period"
        elif dry_run:
            action = "would remove"
        else:
            for uri, _ in objs:
                storage.delete(uri)
            action = "removed"
        out.append(Partial(name, len(objs), round(age, 1), action))
    return out


def _cmd(args: argparse.Namespace) -> int:
    from modelops.settings import Settings

    settings = Settings.from_env()
    if args.repo:
        storage, repo = Storage(), args.repo
    else:
        from modelops.local import stack
        from modelops.local.stack.state import StackError

        info = stack.status()
        if not info.get("s3", {}).get("running"):
            raise StackError("the stack's S3 is not running; run `modelops stack up` or give --repo")
        storage, repo = Storage(stack.s3_config(info)), f"s3://{info['s3'].get('triton_bucket') or settings.triton_bucket}"
    try:
        found = collect(storage, repo, grace_s=args.grace_s, dry_run=args.dry_run)
    except (GcError, StorageError) as exc:
        print(f"gc: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"repo": repo, "dry_run": args.dry_run, "grace_s": args.grace_s,
                          "partial": [asdict(p) for p in found]}, indent=2))
    else:
        for p in found:
            print(f"{p.action}\t{p.deployment}\t{p.objects} object(s)\tlast written {p.age_s:.0f} s ago")
        gone = sum(p.action in ("removed", "would remove") for p in found)
        verb = "would remove" if args.dry_run else "removed"
        print(f"gc: {verb} {gone} partial deployment(s) in {repo} (grace {args.grace_s:g} s)", file=sys.stderr)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``gc`` to the ``modelops`` command line."""
    parser = subparsers.add_parser("gc", help="remove deployments without a manifest (dead publishers' leftovers)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be removed, remove nothing")
    parser.add_argument("--grace-s", type=float, default=DEFAULT_GRACE_S,
                        help=f"keep partial deployments written less than this ago (default {DEFAULT_GRACE_S:g})")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--repo", help="the Triton repository, s3://<bucket> or a folder (default: the stack's "
                        "Triton bucket, with AWS_* credentials from the stack)")
    parser.set_defaults(func=_cmd)
    return parser
