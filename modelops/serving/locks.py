"""Leases in S3: at most one holder of a named lock at a time, taken and handed over with conditional writes.

``s3://<triton bucket>/locks/<kind>/<name>.json`` (:func:`lock_uri`) holds the current lease::

    {"owner": "<airflow run id>", "what": "the optimization of digits_cnn v3", "token": "<random>",
     "acquired_at": "...", "renewed_at": "...", "expires_at": "...", "expires_at_epoch": 1767225600.0,
     "released_at": null}

- :func:`acquire` creates the object with If-None-Match. If it exists, the lease is taken over with If-Match
  on the ETag just read, but only when it is free: released, expired, or held by the same ``owner`` (a retried
  task of the same run). Otherwise :class:`LockHeld` says, in one line, who holds it since when. Two takers
  racing for the same free lease: one conditional write wins, the other gets :class:`LockHeld`.
- :meth:`Lease.renew` pushes the expiry forward, :meth:`Lease.release` marks the lease released; both are
  conditional on the ETag of our own last write, so neither ever touches a lease someone else took over.
  A released lease stays as a small tombstone object (never deleted: deleting it could not be made
  conditional, and would race with a new holder).
- **Expiry is the crash safety net**: a holder that dies (worker killed, run marked failed by hand, callback
  never run) releases nothing; its lease simply stops counting once ``expires_at`` passes. Pick ``ttl_s``
  longer than the guarded work can take (or renew), and keep holders' clocks in sync (NTP): expiry is
  compared with the taker's wall clock.

Every write carries a fresh random ``token``, so two writes never have the same ETag (S3 ETags are MD5s of
the body) and a stale ETag can never match a newer lease.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from modelops.storage import PreconditionFailed, Storage

log = logging.getLogger(__name__)

class LockHeld(Exception):
    """The lock is held by another owner and has not expired. ``str()`` is one line naming holder and times."""


class LockLost(Exception):
    """Our lease was taken over (it had expired) or changed behind our back; the guarded work must stop."""


def lock_uri(triton_bucket: str, kind: str, name: str) -> str:
    """``s3://<triton bucket>/locks/<kind>/<name>.json``.

    Args:
        triton_bucket: the Triton bucket (``Settings.triton_bucket``).
        kind: ``"optimize"`` (name ``<model>--v<version>``) or ``"rollout"`` (name ``<model>``).
        name: what is locked.

    Raises:
        ValueError: an empty kind or name, or one with a ``/``.
    """
    for label, value in (("kind", kind), ("name", name)):
        if not value or "/" in value:
            raise ValueError(f"invalid lock {label} {value!r}: must be non-empty and without '/'")
    return f"s3://{triton_bucket}/locks/{kind}/{name}.json"


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def _document(owner: str, what: str, acquired_at: float, now: float, ttl_s: float, released: bool = False) -> bytes:
    expires = now if released else now + ttl_s
    doc = {
        "owner": owner,
        "what": what,
        "token": secrets.token_hex(8),
        "acquired_at": _iso(acquired_at),
        "acquired_at_epoch": acquired_at,
        "renewed_at": _iso(now),
        "expires_at": _iso(expires),
        "expires_at_epoch": expires,
        "ttl_s": ttl_s,
        "released_at": _iso(now) if released else None,
    }
    return json.dumps(doc, indent=2, sort_keys=True).encode()


def _parse(data: bytes, uri: str) -> dict[str, Any] | None:
    """The lease document, or None when it is unreadable (then it is treated as free)."""
    try:
        doc = json.loads(data)
        float(doc["expires_at_epoch"])
        str(doc["owner"])
        return doc
    except (ValueError, KeyError, TypeError):
        log.warning("lease %s is unreadable; treating it as free", uri)
        return None


@dataclass
class Lease:
    """A held lease. ``etag`` is the ETag of our last write: renew and release are conditional on it."""

    storage: Storage
    uri: str
    owner: str
    what: str
    ttl_s: float
    etag: str
    acquired_at: float
    expires_at: float
    released: bool = False

    def renew(self, ttl_s: float | None = None) -> Lease:
        """Push the expiry to now + ``ttl_s`` (default: the TTL it was acquired with).

        Raises:
            LockLost: the lease was released or someone else took it over.
        """
        if self.released:
            raise LockLost(f"{self.what}: lease {self.uri} was already released")
        ttl = self.ttl_s if ttl_s is None else float(ttl_s)
        now = time.time()
        body = _document(self.owner, self.what, self.acquired_at, now, ttl)
        try:
            self.etag = self.storage.write_bytes(self.uri, body, if_match=self.etag)
        except PreconditionFailed:
            raise LockLost(f"{self.what}: lease {self.uri} is no longer held by {self.owner}") from None
        self.ttl_s, self.expires_at = ttl, now + ttl
        return self

    def release(self) -> bool:
        """Mark the lease released, only if it is still ours; never raises on a lost lease.

        Returns:
            True if it was ours and is now released, False if it had been taken over (or released) already.
        """
        if self.released:
            return False
        body = _document(self.owner, self.what, self.acquired_at, time.time(), self.ttl_s, released=True)
        try:
            self.etag = self.storage.write_bytes(self.uri, body, if_match=self.etag)
        except PreconditionFailed:
            log.warning("lease %s was no longer held by %s; nothing to release", self.uri, self.owner)
            return False
        self.released = True
        log.info("released %s (%s)", self.uri, self.what)
        return True

    def __repr__(self) -> str:
        return f"Lease(uri={self.uri!r}, owner={self.owner!r}, expires_at={_iso(self.expires_at)!r})"


def acquire(storage: Storage, uri: str, *, owner: str, ttl_s: float, what: str) -> Lease:
    """Take the lease at ``uri`` for ``ttl_s`` seconds.

    Args:
        storage: S3 storage (conditional writes).
        uri: from :func:`lock_uri`.
        owner: who holds it (the Airflow run id); the same owner may take its own lease again (a retry).
        ttl_s: seconds until the lease expires unless renewed: the crash safety net.
        what: what the lease guards, for the error line (``"the optimization of digits_cnn v3"``).

    Raises:
        LockHeld: ``"<what> is already held by <owner> since <time> (expires <time>)"``.
        ValueError: a non-positive TTL or an empty owner.
    """
    if ttl_s <= 0:
        raise ValueError(f"lease ttl_s must be > 0, got {ttl_s}")
    if not owner:
        raise ValueError("a lease needs an owner")
    for _ in range(3):
        now = time.time()
        data, etag = storage.read_with_etag(uri)
        held = _parse(data, uri) if etag is not None else None
        acquired_at = now
        if held is not None and etag is not None:
            free = held.get("released_at") or float(held["expires_at_epoch"]) <= now
            if not free and held["owner"] != owner:
                raise LockHeld(
                    f"{what} is already held by {held['owner']} since {held.get('acquired_at', '?')} "
                    f"(expires {held.get('expires_at', '?')})"
                )
            if held["owner"] == owner and not held.get("released_at"):
                acquired_at = float(held.get("acquired_at_epoch") or now)  # a retry keeps its first acquisition
        body = _document(owner, what, acquired_at, now, float(ttl_s))
        try:
            if etag is None:
                new_etag = storage.write_bytes(uri, body, if_none_match=True)
            else:
                new_etag = storage.write_bytes(uri, body, if_match=etag)
        except PreconditionFailed:
            continue  # someone wrote in between: read again and judge the fresh lease
        log.info("acquired %s for %s (%s, ttl %.0f s)", uri, owner, what, ttl_s)
        return Lease(storage, uri, owner, what, float(ttl_s), new_etag, acquired_at, now + float(ttl_s))
    data, _ = storage.read_with_etag(uri)
    held = _parse(data, uri) or {}
    raise LockHeld(
        f"{what} is already held by {held.get('owner', 'another owner')} since {held.get('acquired_at', '?')} "
        f"(expires {held.get('expires_at', '?')})"
    )


def release(storage: Storage, uri: str, *, owner: str) -> bool:
    """Release the lease at ``uri`` if ``owner`` holds it (for callbacks that did not keep the :class:`Lease`).

    Returns:
        True if it was released, False if it is absent, released, or someone else's. Never raises on a race.
    """
    data, etag = storage.read_with_etag(uri)
    held = _parse(data, uri) if etag is not None else None
    if held is None or held["owner"] != owner or held.get("released_at"):
        return False
    acquired = float(held.get("acquired_at_epoch") or time.time())
    lease = Lease(storage, uri, owner, str(held.get("what", uri)), float(held.get("ttl_s") or 1.0), etag, acquired,
                  float(held["expires_at_epoch"]))  # fmt: skip
    return lease.release()


def renew_held(storage: Storage, uri: str, *, owner: str, ttl_s: float, what: str) -> Lease:
    """Renew the lease at ``uri`` if ``owner`` still holds it (not released, not expired, not taken over): the fence
    a holder passes before each step of the guarded work (conditional on the ETag just read).

    Raises:
        LockLost: ``"<what>: the lease was lost (...)"`` naming who holds it now or when it expired.
    """
    data, etag = storage.read_with_etag(uri)
    held = _parse(data, uri) if etag is not None else None
    if held is None or etag is None:
        raise LockLost(f"{what}: the lease was lost (no lease at {uri})")
    if held["owner"] != owner:
        raise LockLost(f"{what}: the lease was lost to {held['owner']} (since {held.get('acquired_at', '?')})")
    if held.get("released_at"):
        raise LockLost(f"{what}: the lease was released at {held['released_at']}")
    if float(held["expires_at_epoch"]) <= time.time():
        raise LockLost(f"{what}: the lease expired at {held.get('expires_at', '?')}")
    acquired = float(held.get("acquired_at_epoch") or time.time())
    lease = Lease(storage, uri, owner, what, float(ttl_s), etag, acquired, float(held["expires_at_epoch"]))
    return lease.renew()


def holder(storage: Storage, uri: str) -> dict[str, Any] | None:
    """The current lease document if it is held (not released, not expired), else None."""
    data, etag = storage.read_with_etag(uri)
    held = _parse(data, uri) if etag is not None else None
    if held is None or held.get("released_at") or float(held["expires_at_epoch"]) <= time.time():
        return None
    return held
