"""``modelops keys create | list | revoke``: API keys of the serving gateway.

The store is ``MODELOPS_GATEWAY_KEYS_DB`` (default ``<stack dir>/gateway/keys.db``); a running gateway
sees a new or revoked key within a second, without a restart. ``create`` takes limits: ``--expires 30d``
(s, m, h, d, w), ``--rate-limit 10/s`` (per s, m or h) and ``--max-concurrency 4``; ``list`` shows them with each
key's ``last_used`` and ``requests`` (written by the gateways every few seconds).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from modelops.serving.gateway.keys import KeyStore, KeyStoreError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*([smh]))?\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """``"90s"``, ``"15m"``, ``"12h"``, ``"30d"``, ``"2w"`` -> a timedelta.

    Raises:
        KeyStoreError: not a positive number with one of those units.
    """
    match = _DURATION.match(text)
    if not match or float(match.group(1)) <= 0:
        raise KeyStoreError(f"--expires must be a positive duration such as 90s, 15m, 12h, 30d or 2w, got {text!r}")
    return timedelta(seconds=float(match.group(1)) * _SECONDS[match.group(2)])


def parse_rate(text: str) -> float:
    """``"10/s"``, ``"600/m"``, ``"5"`` (per second) -> requests per second.

    Raises:
        KeyStoreError: not a positive number, optionally per s, m or h.
    """
    match = _RATE.match(text)
    if not match or float(match.group(1)) <= 0:
        raise KeyStoreError(f"--rate-limit must be a positive rate such as 10/s, 600/m or 1000/h, got {text!r}")
    return float(match.group(1)) / _SECONDS[match.group(2) or "s"]


def _store(args: argparse.Namespace) -> KeyStore:
    if args.db:
        return KeyStore(Path(args.db))
    from modelops.settings import Settings

    return KeyStore(Settings.from_env().gateway_keys_db)


def _create(store: KeyStore, args: argparse.Namespace) -> None:
    expires = datetime.now(UTC) + parse_duration(args.expires) if args.expires else None
    rate = parse_rate(args.rate_limit) if args.rate_limit else None
    record, key = store.create(args.name, args.models, expires_at=expires, rate_limit=rate,
                               max_concurrency=args.max_concurrency)
    if args.json:
        print(json.dumps({**record.to_json(), "key": key}))
    else:
        print(key)
        limits = [f"expires {record.expires_at}"] if record.expires_at else []
        limits += [f"{rate:g} requests/s"] if rate else []
        limits += [f"{args.max_concurrency} in flight"] if args.max_concurrency else []
        print(f"key {record.name!r} for models {','.join(record.models)}"
              f"{' (' + ', '.join(limits) + ')' if limits else ''}: shown once, store it now", file=sys.stderr)


def _list(store: KeyStore, args: argparse.Namespace) -> None:
    keys = store.list()
    if args.json:
        print(json.dumps([k.to_json() for k in keys], indent=2))
        return
    now = datetime.now(UTC)
    for k in keys:
        state = (f"revoked {k.revoked_at}" if k.revoked_at else f"expired {k.expires_at}" if k.expired(now)
                 else "active")
        limits = ",".join(filter(None, [f"{k.rate_limit:g}/s" if k.rate_limit else "",
                                        f"{k.max_concurrency} in flight" if k.max_concurrency else "",
                                        f"until {k.expires_at}" if k.expires_at and not k.expired(now) else ""]))
        print(f"{k.name}\tmo_{k.id}_…\t{','.join(k.models)}\tcreated {k.created_at}\t{state}\t{limits or '-'}\t"
              f"{k.requests} requests, last {k.last_used_at or 'never'}")
    if not keys:
        print(f"no keys in {store.path}", file=sys.stderr)


def _cmd(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        if args.keys_command == "create":
            _create(store, args)
        elif args.keys_command == "list":
            _list(store, args)
        else:
            record = store.revoke(args.name)
            if args.json:
                print(json.dumps(record.to_json()))
            print(f"revoked key {record.name!r} (gateways refuse it within a second)", file=sys.stderr)
    except KeyStoreError as exc:
        print(f"keys: error: {exc}", file=sys.stderr)
        return 1
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``keys create|list|revoke`` to the ``modelops`` command line."""
    parser = subparsers.add_parser("keys", help="API keys of the serving gateway")
    parser.add_argument("--db", help="key store (default: MODELOPS_GATEWAY_KEYS_DB or <stack dir>/gateway/keys.db)")
    actions = parser.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True, help="unique name of the key (who or what uses it)")
    create.add_argument("--models", required=True, help="comma-separated model names or globs: 'digits_cnn,minilm*' "
                        "or '*'")
    create.add_argument("--expires", metavar="DURATION", help="the key stops working after this long: 90s, 15m, "
                        "12h, 30d, 2w (default: never)")
    create.add_argument("--rate-limit", metavar="N/s", help="requests per second (or N/m, N/h) one gateway accepts "
                        "from the key; more get 429 with Retry-After (default: no limit)")
    create.add_argument("--max-concurrency", type=int, metavar="N", help="requests of the key in flight at once on "
                        "one gateway; more get 429 (default: no limit)")
    create.add_argument("--json", action="store_true", help="print the key's record with the key as JSON")
    listing = actions.add_parser("list", help="the keys, active and revoked (never their secrets)")
    listing.add_argument("--json", action="store_true", help="print JSON (last_used, requests, limits)")
    revoke = actions.add_parser("revoke", help="revoke the active key of that name")
    revoke.add_argument("name", help="the key's name")
    revoke.add_argument("--json", action="store_true", help="print the revoked key's record as JSON")
    parser.set_defaults(func=_cmd)
    return parser
