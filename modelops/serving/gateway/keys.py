"""API keys of the gateway: a SQLite store of hashed keys, each granted a list of model patterns.

A key reads ``mo_<id>_<secret>``: ``<id>`` (12 hex characters) is stored in clear and finds the row,
``<secret>`` is never stored. The row keeps ``HMAC-SHA256(pepper, salt || secret)``, where ``salt`` is
per key and ``pepper`` a per-store secret kept in a separate file beside the database (mode 600), so a
copy of the database alone cannot check guesses. Secrets are 32 random bytes, so a fast keyed hash is
enough (no password stretching); the comparison is constant-time.

Names are unique among active keys; a revoked key stays listed (with ``revoked_at``) and its name may be
reused. Patterns are model names or shell globs (``minilm*``, ``*``), comma-separated.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

PREFIX = "mo"
ID_HEX = 12
_KEY_RE = re.compile(rf"^{PREFIX}_([0-9a-f]{{{ID_HEX}}})_([A-Za-z0-9_-]{{20,}})$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_PATTERN_RE = re.compile(r"^[A-Za-z0-9._*?\[\]-]+$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    models TEXT NOT NULL,
    salt BLOB NOT NULL,
    digest BLOB NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS api_keys_active_name ON api_keys(name) WHERE revoked_at IS NULL;
"""


class KeyStoreError(ValueError):
    """A key-store request that cannot be done (duplicate or unknown name, bad patterns); one line."""


@dataclass(frozen=True)
class ApiKey:
    """One stored key (never its secret)."""

    id: str
    name: str
    models: tuple[str, ...]
    created_at: str
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def grants(self, model: str) -> bool:
        """Whether ``model`` matches one of the key's patterns."""
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)

    @property
    def grants_all(self) -> bool:
        """A ``*`` key may learn which models exist (404); narrower keys get 403 for unknown models."""
        return "*" in self.models


@dataclass(frozen=True)
class StoredKey:
    """A row as the gateway checks it: the key and its salted digest."""

    key: ApiKey
    salt: bytes
    digest: bytes


def parse_patterns(text: str) -> tuple[str, ...]:
    """``"a, minilm*"`` -> ``("a", "minilm*")``.

    Raises:
        KeyStoreError: no pattern, or a pattern with characters a model name cannot have.
    """
    patterns = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    if not patterns:
        raise KeyStoreError("--models needs at least one model name or glob (e.g. 'digits_cnn,minilm*' or '*')")
    bad = [p for p in patterns if not _PATTERN_RE.match(p)]
    if bad:
        raise KeyStoreError(f"invalid model pattern(s) {bad}: use model names, '*', '?' and '[...]' only")
    return patterns


def split_key(key: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed key, else ``None``."""
    match = _KEY_RE.match(key)
    return (match.group(1), match.group(2)) if match else None


def _digest(pepper: bytes, salt: bytes, secret: str) -> bytes:
    return hmac.new(pepper, salt + secret.encode(), hashlib.sha256).digest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class KeyStore:
    """The key database at ``path`` (created on first use) and its pepper file ``<path>.pepper``.

    Every method opens its own short-lived connection, so the store may be used from any thread (the
    gateway calls :meth:`lookup` through ``asyncio.to_thread``) and from other processes (the CLI).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._pepper: bytes | None = None

    @property
    def pepper_path(self) -> Path:
        return self.path.with_name(self.path.name + ".pepper")

    def _load_pepper(self) -> bytes:
        if self._pepper is None:
            if not self.pepper_path.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.pepper_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(secrets.token_hex(32) + "\n")
            self._pepper = bytes.fromhex(self.pepper_path.read_text().strip())
        return self._pepper

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))  # digests only, still nobody else's
        conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
        try:
            conn.executescript(_SCHEMA)
            yield conn
        finally:
            conn.close()

    # -- administration (the CLI) -----------------------------------------------------------------
    def create(self, name: str, models: Sequence[str] | str) -> tuple[ApiKey, str]:
        """A new key named ``name`` granted ``models``; returns the record and the key (shown once).

        Raises:
            KeyStoreError: bad or duplicate name, or no valid pattern.
        """
        if not _NAME_RE.match(name):
            raise KeyStoreError(f"invalid key name {name!r}: letters, digits, '.', '_' and '-' (at most 64)")
        patterns = parse_patterns(models if isinstance(models, str) else ",".join(models))
        pepper = self._load_pepper()
        key_id, secret, salt = secrets.token_hex(ID_HEX // 2), secrets.token_urlsafe(32), secrets.token_bytes(16)
        record = ApiKey(id=key_id, name=name, models=patterns, created_at=_now())
        with self._connect() as conn:
            try:
                conn.execute(
                    "INSERT INTO api_keys (id, name, models, salt, digest, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (key_id, name, ",".join(patterns), salt, _digest(pepper, salt, secret), record.created_at),
                )
            except sqlite3.IntegrityError:
                raise KeyStoreError(f"a key named {name!r} already exists; revoke it first or pick another name") from None
        return record, f"{PREFIX}_{key_id}_{secret}"

    def list(self) -> list[ApiKey]:
        """Every key, active and revoked, oldest first (no secrets)."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT id, name, models, created_at, revoked_at FROM api_keys ORDER BY created_at, rowid"
            ).fetchall()
        return [ApiKey(r[0], r[1], tuple(r[2].split(",")), r[3], r[4]) for r in rows]

    def revoke(self, name: str) -> ApiKey:
        """Revoke the active key named ``name``; the gateway refuses it within its cache TTL.

        Raises:
            KeyStoreError: no active key has that name.
        """
        revoked_at = _now()
        with self._connect() as conn:
            row = conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL "
                "RETURNING id, name, models, created_at, revoked_at",
                (revoked_at, name),
            ).fetchone()
        if row is None:
            raise KeyStoreError(f"no active key named {name!r} (see `modelops keys list`)")
        return ApiKey(row[0], row[1], tuple(row[2].split(",")), row[3], row[4])

    # -- the gateway's side -----------------------------------------------------------------------
    def lookup(self, key_id: str) -> StoredKey | None:
        """The active key with ``key_id`` and its digest, or ``None`` (unknown or revoked)."""
        self._load_pepper()  # here, in the caller's worker thread, not later on the event loop
        with self._connect() as conn:
            row = conn.execute(
                "SELECT id, name, models, created_at, salt, digest FROM api_keys WHERE id = ? AND revoked_at IS NULL",
                (key_id,),
            ).fetchone()
        if row is None:
            return None
        return StoredKey(ApiKey(row[0], row[1], tuple(row[2].split(",")), row[3]), bytes(row[4]), bytes(row[5]))

    def verify(self, stored: StoredKey, secret: str) -> bool:
        """Constant-time comparison of ``secret`` with the stored digest."""
        return hmac.compare_digest(_digest(self._load_pepper(), stored.salt, secret), stored.digest)


class KeyCache:
    """Per-id cache of :meth:`KeyStore.lookup` results for ``ttl_s`` seconds (revocation seen within it).

    Not thread-safe by design: the gateway uses it from its event loop only, and does the lookups in a
    thread. Bounded: when ``max_entries`` is reached the whole cache is dropped (probing with random ids
    cannot grow it without limit).
    """

    def __init__(self, ttl_s: float = 1.0, max_entries: int = 10_000):
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, StoredKey | None]] = {}

    def get(self, key_id: str) -> tuple[bool, StoredKey | None]:
        """``(hit, value)``: a hit is a lookup younger than the TTL (its value may be ``None``)."""
        entry = self._entries.get(key_id)
        if entry is None or time.monotonic() - entry[0] > self.ttl_s:
            return False, None
        return True, entry[1]

    def put(self, key_id: str, value: StoredKey | None) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key_id] = (time.monotonic(), value)
