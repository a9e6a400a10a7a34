"""API keys of the gateway: the SQLite store and ``modelops keys``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelops.local.cli import main as modelops_main
from modelops.serving.gateway.keys import KeyStore, KeyStoreError, split_key


def test_keys_are_stored_hashed_and_verified(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.db")
    record, key = store.create("alice", "digits_cnn, minilm*")
    key_id, secret = split_key(key)
    assert key_id == record.id and record.models == ("digits_cnn", "minilm*")
    assert secret.encode() not in (tmp_path / "keys.db").read_bytes()
    assert (tmp_path / "keys.db.pepper").stat().st_mode & 0o077 == 0
    stored = KeyStore(tmp_path / "keys.db").lookup(key_id)  # a second process reads the same store
    assert stored is not None and store.verify(stored, secret)
    assert not store.verify(stored, secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    assert stored.key.grants("minilm_embedder") and not stored.key.grants("digits_cnn2")
    assert not stored.key.grants_all


def test_revoked_keys_are_listed_and_their_name_can_be_reused(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.db")
    record, _ = store.create("ci", "*")
    store.revoke("ci")
    assert store.lookup(record.id) is None
    store.create("ci", "*")
    assert [(k.name, k.active) for k in store.list()] == [("ci", False), ("ci", True)]


@pytest.mark.parametrize(("name", "models", "message"), [
    ("dup", "*", "a key named 'dup' already exists"),
    ("x", " , ", "--models needs at least one model name"),
    ("x", "a b", "invalid model pattern"),
    ("bad name", "*", "invalid key name"),
])
def test_bad_requests_are_one_line_errors(tmp_path: Path, name: str, models: str, message: str) -> None:
    store = KeyStore(tmp_path / "keys.db")
    store.create("dup", "*")
    with pytest.raises(KeyStoreError, match=message):
        store.create(name, models)
    with pytest.raises(KeyStoreError, match="no active key named 'nobody'"):
        store.revoke("nobody")


def test_malformed_keys_do_not_parse() -> None:
    assert split_key("mo_0123456789ab_" + "x" * 43) is not None
    for bad in ("", "mo_", "sk-abc", "mo_XYZ_" + "x" * 43, "mo_0123456789ab_short"):
        assert split_key(bad) is None


def test_cli_create_list_revoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MODELOPS_STACK_DIR", str(tmp_path))  # default store: <stack dir>/gateway/keys.db
    monkeypatch.delenv("MODELOPS_GATEWAY_KEYS_DB", raising=False)
    assert modelops_main(["keys", "create", "--name", "demo", "--models", "digits_cnn,minilm*", "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["name"] == "demo" and created["models"] == "digits_cnn,minilm*"
    assert split_key(created["key"]) is not None
    assert (tmp_path / "gateway" / "keys.db").exists()

    assert modelops_main(["keys", "list"]) == 0
    listing = capsys.readouterr().out
    assert "demo" in listing and split_key(created["key"])[1] not in listing

    assert modelops_main(["keys", "create", "--name", "demo", "--models", "*"]) == 1
    assert capsys.readouterr().err.strip() == ("keys: error: a key named 'demo' already exists; revoke it first or "
                                               "pick another name")
    assert modelops_main(["keys", "revoke", "demo"]) == 0
    assert modelops_main(["keys", "revoke", "demo"]) == 1
    assert "no active key named 'demo'" in capsys.readouterr().err
