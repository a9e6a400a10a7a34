"""API keys of the gateway: a SQLite store of hashed keys, each granted a list of model patterns.

A key reads ``mo_<id>_<secret>``: ``<id>`` (12 hex characters) is stored in clear and finds the row,
``<secret>`` is never stored. The row keeps ``HMAC-SHA256(pepper, salt || secret)``, where ``salt`` is
per key and ``pepper`` a per-store secret kept in a separate file beside the database (mode 600), so a
copy of the database alone cannot check guesses. Secrets are 32 random bytes, so a fast keyed hash is
enough (no password stretching); the comparison is constant-time.

Names are unique among active keys; a revoked key stays listed (with ``revoked_at``) and its name may be
reused. Patterns are model names or shell globs (``minilm*``, ``*``), comma-separated.

A key may carry limits: ``expires_at`` (then 401 naming the expiry), ``rate_limit`` (requests per second, 429 with
``Retry-After`` above it) and ``max_concurrency`` (requests in flight, 429 above it); the gateways enforce them
(:mod:`.quotas`) and write back ``last_used_at`` and ``requests`` in batches (:meth:`KeyStore.record_usage`).
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
from collections import OrderedDict
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
# columns added after the first release: a store made before them gets them on first use
_LIMIT_COLUMNS = {"expires_at": "TEXT", "rate_limit": "REAL", "max_concurrency": "INTEGER", "last_used_at": "TEXT",
                  "requests": "INTEGER NOT NULL DEFAULT 0"}
_COLUMNS = "id, name, models, created_at, revoked_at, expires_at, rate_limit, max_concurrency, last_used_at, requests"


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
    expires_at: str | None = None
    rate_limit: float | None = None  # requests per second
    max_concurrency: int | None = None  # requests in flight
    last_used_at: str | None = None  # as of the gateways' last usage write (every few seconds)
    requests: int = 0

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def expired(self, now: datetime | None = None) -> bool:
        """Whether ``expires_at`` has passed."""
        return self.expires_at is not None and datetime.fromisoformat(self.expires_at) <= (now or datetime.now(UTC))

    def to_json(self) -> dict[str, object]:
        """What ``modelops keys list --json`` prints for the key (never its secret)."""
        return {"name": self.name, "id": self.id, "models": ",".join(self.models), "created_at": self.created_at,
                "revoked_at": self.revoked_at, "expires_at": self.expires_at, "rate_limit": self.rate_limit,
                "max_concurrency": self.max_concurrency, "last_used": self.last_used_at, "requests": self.requests}

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


def _row_key(row: Sequence[object]) -> ApiKey:
    """An :class:`ApiKey` from a row of :data:`_COLUMNS`."""
    return ApiKey(str(row[0]), str(row[1]), tuple(str(row[2]).split(",")), str(row[3]), row[4], row[5],  # type: ignore[arg-type]
                  None if row[6] is None else float(row[6]), None if row[7] is None else int(row[7]),  # type: ignore[arg-type]
                  row[8], int(row[9] or 0))  # type: ignore[arg-type]


def _check_limits(rate_limit: float | None, max_concurrency: int | None) -> None:
    if rate_limit is not None and not rate_limit > 0:
        raise KeyStoreError(f"--rate-limit must be above 0 requests per second, got {rate_limit}")
    if max_concurrency is not None and max_concurrency < 1:
        raise KeyStoreError(f"--max-concurrency must be at least 1, got {max_concurrency}")


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
            have = {row[1] for row in conn.execute("PRAGMA table_info(api_keys)")}
            for column, kind in _LIMIT_COLUMNS.items():
                if column not in have:
                    try:
                        conn.execute(f"ALTER TABLE api_keys ADD COLUMN {column} {kind}")
                    except sqlite3.OperationalError:  # another process added it meanwhile
                        pass
            yield conn
        finally:
            conn.close()

    # -- administration (the CLI) -----------------------------------------------------------------
    def create(self, name: str, models: Sequence[str] | str, *, expires_at: datetime | None = None,
               rate_limit: float | None = None, max_concurrency: int | None = None) -> tuple[ApiKey, str]:
        """A new key named ``name`` granted ``models``, with optional limits; returns the record and the key (shown
        once).

        Raises:
            KeyStoreError: bad or duplicate name, no valid pattern, an expiry in the past, a limit below 1.
        """
        if not _NAME_RE.match(name):
            raise KeyStoreError(f"invalid key name {name!r}: letters, digits, '.', '_' and '-' (at most 64)")
        patterns = parse_patterns(models if isinstance(models, str) else ",".join(models))
        _check_limits(rate_limit, max_concurrency)
        if expires_at is not None and expires_at <= datetime.now(UTC):
            raise KeyStoreError(f"--expires must be in the future, got {expires_at.isoformat(timespec='seconds')}")
        pepper = self._load_pepper()
        key_id, secret, salt = secrets.token_hex(ID_HEX // 2), secrets.token_urlsafe(32), secrets.token_bytes(16)
        expires = expires_at.astimezone(UTC).isoformat(timespec="seconds") if expires_at else None
        record = ApiKey(id=key_id, name=name, models=patterns, created_at=_now(), expires_at=expires,
                        rate_limit=rate_limit, max_concurrency=max_concurrency)
        with self._connect() as conn:
            try:
                conn.execute(
                    "INSERT INTO api_keys (id, name, models, salt, digest, created_at, expires_at, rate_limit, "
                    "max_concurrency) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (key_id, name, ",".join(patterns), salt, _digest(pepper, salt, secret), record.created_at,
                     expires, rate_limit, max_concurrency),
                )
            except sqlite3.IntegrityError:
                raise KeyStoreError(f"a key named {name!r} already exists; revoke it first or pick another name") from None
        return record, f"{PREFIX}_{key_id}_{secret}"

    def list(self) -> list[ApiKey]:
        """Every key, active and revoked, oldest first (no secrets)."""
        with self._connect() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, rowid").fetchall()
        return [_row_key(r) for r in rows]

    def revoke(self, name: str) -> ApiKey:
        """Revoke the active key named ``name``; the gateway refuses it within its cache TTL.

        Raises:
            KeyStoreError: no active key has that name.
        """
        revoked_at = _now()
        with self._connect() as conn:
            row = conn.execute(
                f"UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL RETURNING {_COLUMNS}",
                (revoked_at, name),
            ).fetchone()
        if row is None:
            raise KeyStoreError(f"no active key named {name!r} (see `modelops keys list`)")
        return _row_key(row)

    # -- the gateway's side -----------------------------------------------------------------------
    def lookup(self, key_id: str) -> StoredKey | None:
        """The unrevoked key with ``key_id`` (expired ones too: the gateway names the expiry) and its digest, or
        ``None`` (unknown or revoked)."""
        self._load_pepper()  # here, in the caller's worker thread, not later on the event loop
        with self._connect() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS}, salt, digest FROM api_keys WHERE id = ? AND revoked_at IS NULL", (key_id,),
            ).fetchone()
        if row is None:
            return None
        return StoredKey(_row_key(row[:10]), bytes(row[10]), bytes(row[11]))

    def record_usage(self, usage: dict[str, tuple[int, str]]) -> None:
        """Add each key id's request count and move its ``last_used_at`` forward (a gateway's batch; several
        gateways may write the same keys)."""
        if not usage:
            return
        with self._connect() as conn:
            conn.executemany(
                "UPDATE api_keys SET requests = requests + ?, last_used_at = max(coalesce(last_used_at, ''), ?) "
                "WHERE id = ?", [(count, last, key_id) for key_id, (count, last) in usage.items()])

    def verify(self, stored: StoredKey, secret: str) -> bool:
        """Constant-time comparison of ``secret`` with the stored digest."""
        return hmac.compare_digest(_digest(self._load_pepper(), stored.salt, secret), stored.digest)


class KeyCache:
    """Per-id cache of :meth:`KeyStore.lookup` results for ``ttl_s`` seconds (revocation seen within it).

    Not thread-safe by design: the gateway uses it from its event loop only, and does the lookups in a thread.
    Found keys and misses live in two bounded LRUs (``max_entries`` each): probing with random ids only pushes
    out older misses, never a valid key.
    """

    def __init__(self, ttl_s: float = 1.0, max_entries: int = 10_000):
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._found: OrderedDict[str, tuple[float, StoredKey]] = OrderedDict()
        self._missed: OrderedDict[str, float] = OrderedDict()

    def get(self, key_id: str) -> tuple[bool, StoredKey | None]:
        """``(hit, value)``: a hit is a lookup younger than the TTL (its value may be ``None``)."""
        now = time.monotonic()
        found = self._found.get(key_id)
        if found is not None and now - found[0] <= self.ttl_s:
            self._found.move_to_end(key_id)
            return True, found[1]
        missed = self._missed.get(key_id)
        if missed is not None and now - missed <= self.ttl_s:
            return True, None
        return False, None

    def known(self, key_id: str) -> bool:
        """Whether ``key_id`` was found valid before, however long ago (it is still in the found LRU)."""
        return key_id in self._found

    def put(self, key_id: str, value: StoredKey | None) -> None:
        table: OrderedDict = self._missed if value is None else self._found
        (self._found if value is None else self._missed).pop(key_id, None)
        table[key_id] = time.monotonic() if value is None else (time.monotonic(), value)
        table.move_to_end(key_id)
        while len(table) > self.max_entries:
            table.popitem(last=False)

    def __len__(self) -> int:
        return len(self._found) + len(self._missed)
