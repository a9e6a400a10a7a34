"""MLflow webhook authenticity: HMAC signature, timestamp window, replay guard and the secret file.

MLflow signs ``"<delivery id>.<timestamp>.<body>"`` with HMAC-SHA256 and sends
``X-MLflow-Signature: v1,<base64 digest>`` (Standard Webhooks style), ``X-MLflow-Delivery-Id`` and
``X-MLflow-Timestamp`` (unix seconds). A request is accepted only when the signature matches, the
timestamp is within :data:`MAX_SKEW_S` of now, and its delivery id was never accepted before.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path

from modelops.settings import Settings

SIGNATURE_HEADER = "X-MLflow-Signature"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
SIGNATURE_VERSION = "v1"
MAX_SKEW_S = 300.0  # 5 minutes, either way
SECRET_ENV = "MODELOPS_WEBHOOK_SECRET"
SECRET_FILE_ENV = "MODELOPS_WEBHOOK_SECRET_FILE"
FAILED_PREFIX = "error: "  # outcome of a delivery whose processing failed: a retry of it is processed again
LEASE_S = 120.0  # a claim with no outcome after this long was abandoned (the process died): claimable again


class WebhookRejected(Exception):
    """The request is not an authentic, fresh, first delivery. ``status`` is the HTTP answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes | str) -> str:
    """The ``X-MLflow-Signature`` value MLflow would send for this delivery.

    The HMAC runs over the raw bytes (MLflow's ``str`` payload, UTF-8 encoded, gives the same bytes), so a body
    that is not UTF-8 gets a signature mismatch, never a decoding error.
    """
    payload = body if isinstance(body, bytes) else body.encode("utf-8")
    digest = hmac.new(secret.encode("utf-8"), f"{delivery_id}.{timestamp}.".encode() + payload, hashlib.sha256)
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest.digest()).decode()}"


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    now: float | None = None,
    max_skew_s: float = MAX_SKEW_S,
) -> tuple[str, int]:
    """Check signature and timestamp of one delivery; returns ``(delivery_id, timestamp)``.

    Args:
        secret: the webhook's shared secret.
        headers: request headers (case-insensitive mapping, or a dict with MLflow's spelling).
        body: the raw request body, exactly as received.
        now: current unix time (tests).
        max_skew_s: largest accepted distance between the timestamp and now.

    Raises:
        WebhookRejected: 401 for a missing or wrong signature, 400 for missing or stale headers.
    """
    get = _getter(headers)
    delivery_id, raw_ts, signature = get(DELIVERY_ID_HEADER), get(TIMESTAMP_HEADER), get(SIGNATURE_HEADER)
    if not signature:
        raise WebhookRejected(401, "missing signature")
    if not delivery_id or not raw_ts:
        raise WebhookRejected(400, "missing delivery id or timestamp")
    try:
        timestamp = int(raw_ts)
    except ValueError:
        raise WebhookRejected(400, "timestamp is not an integer") from None
    expected = sign(secret, delivery_id, raw_ts, body).encode()
    # Several space-separated signatures are allowed (secret rotation); any valid v1 one will do.
    if not any(hmac.compare_digest(expected, candidate.encode()) for candidate in signature.split()):
        raise WebhookRejected(401, "signature mismatch")
    skew = abs((time.time() if now is None else now) - timestamp)
    if skew > max_skew_s:
        raise WebhookRejected(400, f"stale timestamp ({skew:.0f} s from now; at most {max_skew_s:.0f} s)")
    return delivery_id, timestamp


def _getter(headers: Mapping[str, str]):
    lowered = {k.lower(): v for k, v in headers.items()}
    return lambda name: (lowered.get(name.lower()) or "").strip()


class ReplayGuard:
    """Delivery ids already received, with what each led to, in a small SQLite table (survives restarts).

    :meth:`claim` is atomic (``INSERT OR IGNORE`` on the primary key, or a conditional ``UPDATE``), so two
    concurrent deliveries of the same id cannot both pass. A delivery whose processing failed (:meth:`fail`:
    outcome ``error: ...``) or was abandoned (no outcome ``lease_s`` after its claim: the process died) can be
    claimed again: MLflow retries a 5xx with the same delivery id, and that retry must start the run, not be
    refused as a replay. Entries older than ``keep_s`` are pruned; they are stale anyway.
    """

    def __init__(self, path: Path | str, keep_s: float = 86400.0, lease_s: float = LEASE_S) -> None:
        self.path = Path(path)
        self.keep_s = keep_s
        self.lease_s = lease_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS deliveries (delivery_id TEXT PRIMARY KEY, received_at REAL NOT NULL,"
                " event TEXT, run_id TEXT, outcome TEXT)"
            )
        os.chmod(self.path, 0o600)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10.0, isolation_level=None)

    def claim(self, delivery_id: str, event: str = "", now: float | None = None) -> bool:
        """Record ``delivery_id``; False when it was seen before and succeeded, was ignored or is in progress.

        True for a new delivery, and for a retry of one that failed or was abandoned (see the class doc).
        """
        now = time.time() if now is None else now
        with self._connect() as db:
            cur = db.execute("INSERT OR IGNORE INTO deliveries (delivery_id, received_at, event) VALUES (?, ?, ?)",
                             (delivery_id, now, event))
            claimed = cur.rowcount == 1
            if not claimed:
                cur = db.execute(
                    "UPDATE deliveries SET received_at = ?, outcome = NULL, run_id = NULL WHERE delivery_id = ?"
                    " AND (outcome LIKE ? OR (outcome IS NULL AND received_at < ?))",
                    (now, delivery_id, FAILED_PREFIX + "%", now - self.lease_s))
                return cur.rowcount == 1
            if int(now) % 64 == 0:  # prune now and then, not on every request
                db.execute("DELETE FROM deliveries WHERE received_at < ?", (now - self.keep_s,))
        return claimed

    def outcome(self, delivery_id: str) -> str | None:
        """What the delivery led to; None while it is in progress (or unknown)."""
        with self._connect() as db:
            row = db.execute("SELECT outcome FROM deliveries WHERE delivery_id = ?", (delivery_id,)).fetchone()
        return row[0] if row else None

    def fail(self, delivery_id: str, run_id: str | None, error: str) -> str:
        """Note a failed delivery, which a later delivery of the same id may retry; returns the outcome text."""
        outcome = f"{FAILED_PREFIX}{error}"
        self.finish(delivery_id, run_id, outcome)
        return outcome

    def finish(self, delivery_id: str, run_id: str | None, outcome: str) -> None:
        """Note what the delivery led to (for operators reading the table)."""
        with self._connect() as db:
            db.execute("UPDATE deliveries SET run_id = ?, outcome = ? WHERE delivery_id = ?",
                       (run_id, outcome, delivery_id))

    def release(self, delivery_id: str) -> None:
        """Forget a claim whose processing failed, so that MLflow's retry is accepted."""
        with self._connect() as db:
            db.execute("DELETE FROM deliveries WHERE delivery_id = ?", (delivery_id,))

    def outcomes(self) -> dict[str, str | None]:
        """delivery id -> outcome, for tests and operators."""
        with self._connect() as db:
            return dict(db.execute("SELECT delivery_id, outcome FROM deliveries").fetchall())


# -- the secret ------------------------------------------------------------------------------------
def secret_path(stack_dir: Path | str) -> Path:
    """Where the local stack keeps the webhook secret (mode 600): ``<stack dir>/webhook/secret``."""
    return Path(stack_dir) / "webhook" / "secret"


def new_secret() -> str:
    """A fresh random secret (256 bits, url-safe)."""
    return secrets.token_urlsafe(32)


def load_secret(environ: Mapping[str, str] | None = None, stack_dir: Path | str | None = None) -> str | None:
    """The webhook secret: ``MODELOPS_WEBHOOK_SECRET``, else the file named by ``MODELOPS_WEBHOOK_SECRET_FILE``,
    else ``<MODELOPS_STACK_DIR>/webhook/secret``; None when there is none (every delivery is then refused)."""
    settings = Settings.from_env(environ)
    if settings.webhook.secret is not None:
        return settings.webhook.secret.get_secret_value()
    if settings.webhook.secret_file is not None:
        path = settings.webhook.secret_file
    else:
        # only an explicit stack dir: the default one may hold another stack's secret
        base = stack_dir or (settings.stack_dir if settings.is_set("stack_dir") else None)
        if not base:
            return None
        path = secret_path(base)
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return text or None
