"""``modelops keys create | list | revoke``: API keys of the serving gateway.

The store is ``MODELOPS_GATEWAY_KEYS_DB`` (default ``<stack dir>/gateway/keys.db``); a running gateway
sees a new or revoked key within a second, without a restart.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from modelops.serving.gateway.keys import KeyStore, KeyStoreError


def _store(args: argparse.Namespace) -> KeyStore:
    if args.db:
        return KeyStore(Path(args.db))
    from modelops.settings import Settings

    return KeyStore(Settings.from_env().gateway_keys_db)


def _cmd(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        if args.keys_command == "create":
            record, key = store.create(args.name, args.models)
            if args.json:
                print(json.dumps({"name": record.name, "key": key, "models": ",".join(record.models)}))
            else:
                print(key)
                print(f"key {record.name!r} for models {','.join(record.models)}: shown once, store it now",
                      file=sys.stderr)
        elif args.keys_command == "list":
            keys = store.list()
            if args.json:
                print(json.dumps([{"name": k.name, "id": k.id, "models": ",".join(k.models),
                                   "created_at": k.created_at, "revoked_at": k.revoked_at} for k in keys], indent=2))
            else:
                for k in keys:
                    state = f"revoked {k.revoked_at}" if k.revoked_at else "active"
                    print(f"{k.name}\tmo_{k.id}_…\t{','.join(k.models)}\tcreated {k.created_at}\t{state}")
                if not keys:
                    print(f"no keys in {store.path}", file=sys.stderr)
        else:
            record = store.revoke(args.name)
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
    create.add_argument("--json", action="store_true", help='print {"name", "key", "models"}')
    listing = actions.add_parser("list", help="the keys, active and revoked (never their secrets)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    revoke = actions.add_parser("revoke", help="revoke the active key of that name")
    revoke.add_argument("name", help="the key's name")
    parser.set_defaults(func=_cmd)
    return parser
