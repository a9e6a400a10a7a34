"""The MLflow webhook receiver: a FastAPI app the ModelOps plugin mounts on Airflow's API server.

``POST /modelops/mlflow/webhook`` is not behind Airflow's login (MLflow cannot log in): each delivery is
authenticated by its HMAC signature instead (``modelops.triggers.signature``), must be fresh (5 min) and
its delivery id must be new (a SQLite table under AIRFLOW_HOME).

Hostile input is refused before it costs anything: a body over ``MODELOPS_WEBHOOK_MAX_BODY_KB`` gets 413
before it is read (the ``Content-Length`` is checked first, then the stream is cut past the limit), a
body that is not UTF-8 or not a JSON object gets 400, never 500. Everything blocking (secret file, HMAC,
SQLite, registry and Airflow API calls) runs in a worker thread (a pool of :data:`WORKER_THREADS`, apart
from the default one that the API server's own sync endpoints use), never on the event loop.

The run exists before the answer: 202 with the deterministic run id once Airflow's public REST API
(``POST /api/v2/dags/<dag>/dagRuns`` with the run id, by ``AirflowApiHook`` on the ``airflow_api_default``
connection: API URL, login, password) created it or said it exists (409, the idempotent no-op), or 200
"ignored". When the registry read or the run creation fails, the delivery is noted as failed and the
answer is 503: MLflow retries it (same delivery id) and the retry is processed again, not refused as a
replay; the registry reconcile starts whatever the retries could not. A replay of a delivery that
succeeded, or a duplicate of one in progress, gets 409.

The secret is read per request (cached by file mtime) from ``MODELOPS_WEBHOOK_SECRET``,
``MODELOPS_WEBHOOK_SECRET_FILE`` or ``<MODELOPS_STACK_DIR>/webhook/secret`` (``modelops webhook register``
writes that file): rotating it needs no restart.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from anyio import CapacityLimiter
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from modelops.settings import Settings
from modelops.triggers.events import (
    MappedEvent,
    RunRequest,
    TriggerConfig,
    admit,
    event_name,
    map_webhook_event,
    with_model_tags,
)
from modelops.triggers.signature import ReplayGuard, WebhookRejected, load_secret, verify

if TYPE_CHECKING:
    from modelops_airflow.hooks import AirflowApiHook

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/mlflow/webhook"
URL_PREFIX = "/modelops"
AIRFLOW_API_CONN_ID = "airflow_api_default"  # the REST API user the receiver creates runs as
# Kept under MLflow's 30 s delivery timeout (login + create + registry read), so a failure is answered (503)
# and retried by MLflow instead of timing out while the claim is still held.
API_TIMEOUT_S = 10.0
REGISTRY_TIMEOUT_S = 5.0
# Deliveries are processed in threads of their own pool: the run creation calls this same API server, whose
# sync endpoints need threads of the default pool (40); a burst of deliveries must not take them all.
WORKER_THREADS = 8
_WORKERS = CapacityLimiter(WORKER_THREADS)
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the registry is reached directly

app = FastAPI(title="ModelOps MLflow webhook", description="MLflow registry events -> optimize_model runs")
_guard_lock = threading.Lock()
_guard: ReplayGuard | None = None
_api: AirflowApiHook | None = None
_slots: threading.BoundedSemaphore | None = None


def deliveries_db() -> Path:
    """The replay-guard database: ``MODELOPS_WEBHOOK_DB`` or ``$AIRFLOW_HOME/modelops/webhook_deliveries.db``."""
    explicit = Settings.from_env().webhook.db
    if explicit is not None:
        return explicit
    home = os.environ.get("AIRFLOW_HOME", "").strip() or str(Path.home() / "airflow")
    return Path(home) / "modelops" / "webhook_deliveries.db"


def guard() -> ReplayGuard:
    """The process-wide replay guard (created on first use)."""
    global _guard
    with _guard_lock:
        if _guard is None:
            _guard = ReplayGuard(deliveries_db())
        return _guard


def _reply(code: int, **body: Any) -> JSONResponse:
    return JSONResponse(body, status_code=code)


@app.get("/health")
def health() -> dict[str, Any]:
    """Liveness of the receiver; says whether a secret is configured (never the secret)."""
    return {"status": "ok", "secret_configured": load_secret() is not None, "path": URL_PREFIX + WEBHOOK_PATH}


class BodyRefused(Exception):
    """The body was refused before (or while) it was read: ``status`` and a one-line ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


async def read_limited_body(request: Request, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes: a larger ``Content-Length`` is refused unread, a stream
    that grows past the limit is cut there (chunked bodies, lying lengths).

    Raises:
        BodyRefused: 413 past the limit, 400 for a malformed ``Content-Length``.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise BodyRefused(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise BodyRefused(413, f"body of {int(declared)} bytes is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyRefused(413, f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Authentic delivery of an event that starts no run (ignored, with the reason)."},
    202: {"description": "The run exists (created now, or by an earlier delivery or the reconcile)."},
    400: {"description": "Malformed: bad length, not UTF-8, not a JSON object, missing or stale headers."},
    401: {"description": "Missing or wrong signature."},
    409: {"description": "Delivery id already received (a replay), or in progress."},
    413: {"description": "Body over MODELOPS_WEBHOOK_MAX_BODY_KB."},
    503: {"description": "No secret configured, or the registry / Airflow failed: retry the same delivery."},
}


@app.post(WEBHOOK_PATH, status_code=202, responses=_RESPONSES, openapi_extra={"requestBody": {
    "required": True, "content": {"application/json": {"schema": {"type": "object"}}}}})
async def mlflow_webhook(request: Request) -> JSONResponse:
    """Verify one MLflow delivery and create its ``optimize_model`` run before answering."""
    limit = Settings.from_env().webhook.max_body_kb * 1024
    try:
        body = await read_limited_body(request, limit)
    except BodyRefused as exc:
        log.warning("MLflow webhook refused (%s) from %s", exc.reason, _peer(request))
        return _reply(exc.status, error=exc.reason)
    try:
        return await anyio.to_thread.run_sync(handle_delivery, body, request.headers, _peer(request),
                                              limiter=_WORKERS)
    except sqlite3.Error as exc:  # the delivery table is locked or unwritable: MLflow retries a 503
        log.error("MLflow webhook: delivery table %s unusable: %s", deliveries_db(), _first_line(exc))
        return _reply(503, error="delivery table unavailable, retry this delivery")


def _peer(request: Request) -> str:
    return request.client.host if request.client else "?"


def handle_delivery(body: bytes, headers: Mapping[str, str], peer: str = "?") -> JSONResponse:
    """Everything after the body is read (blocking: runs in a worker thread): check, claim, create the run."""
    received_at = time.time()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return _reply(400, error="body is not UTF-8")
    secret = load_secret()
    if secret is None:
        log.error("MLflow webhook refused: no secret configured (run `modelops webhook register`)")
        return _reply(503, error="webhook secret not configured")
    try:
        delivery_id, _ = verify(secret, headers, body)
    except WebhookRejected as exc:
        log.warning("MLflow webhook rejected (%s) from %s", exc.reason, peer)
        return _reply(exc.status, error=exc.reason)
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError):
        return _reply(400, error="body is not JSON")
    if not isinstance(payload, dict):
        return _reply(400, error="body is not a JSON object")
    store = guard()
    if not store.claim(delivery_id, event_name(payload)):
        in_progress = store.outcome(delivery_id) is None
        log.warning("MLflow webhook delivery %s %s: refused", delivery_id, "in progress" if in_progress else "replayed")
        return _reply(409, error="delivery in progress" if in_progress else "delivery already received",
                      delivery_id=delivery_id)
    try:
        config = TriggerConfig.from_env()
        mapped = map_webhook_event(payload, config)
    except Exception as exc:  # a bug: MLflow's retry (it retries 5xx) is processed again
        store.fail(delivery_id, None, _first_line(exc))
        log.exception("MLflow webhook delivery %s could not be mapped", delivery_id)
        return _reply(500, error="internal error", delivery_id=delivery_id)
    if mapped.request is None:
        store.finish(delivery_id, None, f"ignored: {mapped.ignored}")
        return _reply(200, status="ignored", reason=mapped.ignored, delivery_id=delivery_id)
    status, outcome, run_id = start_mapped_run(mapped, delivery_id, config, received_at)
    if status == "ignored":
        return _reply(200, status="ignored", reason=outcome.removeprefix("ignored: "), delivery_id=delivery_id)
    if status == "failed":
        return _reply(503, error="run not created, retry this delivery", run_id=run_id, delivery_id=delivery_id)
    return _reply(202, status="accepted", run=outcome, run_id=run_id, delivery_id=delivery_id)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


# -- the registry and Airflow ------------------------------------------------------------------------
def _tracking_uri() -> str:
    try:
        from modelops_airflow.hooks import MlflowHook

        return MlflowHook().tracking_uri()
    except Exception:  # noqa: BLE001 - no connection in this process: the stack's env names the server too
        return os.environ["MLFLOW_TRACKING_URI"]


def _registry_headers() -> dict[str, str]:
    """MLflow basic auth: the ``mlflow_default`` connection's login, else ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``."""
    from modelops_airflow.hooks import MlflowHook

    try:
        headers = MlflowHook().auth_headers()
    except Exception:  # noqa: BLE001 - no connection in this process: the environment may hold the login
        headers = {}
    if headers:
        return headers
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
    if not user:
        return {}
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def registered_model_tags(name: str, timeout: float = REGISTRY_TIMEOUT_S) -> dict[str, str] | None:
    """Tags of a registered model through MLflow's REST API (no mlflow import in the API server); None if absent."""
    url = f"{_tracking_uri().rstrip('/')}/api/2.0/mlflow/registered-models/get?{urllib.parse.urlencode({'name': name})}"
    try:
        with _OPENER.open(urllib.request.Request(url, headers=_registry_headers()), timeout=timeout) as resp:
            data = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise
    tags = (data.get("registered_model") or {}).get("tags") or []
    return {t["key"]: t.get("value", "") for t in tags}


def set_model_tag(name: str, key: str, value: str, timeout: float = REGISTRY_TIMEOUT_S) -> None:
    """Set a tag on a registered model through MLflow's REST API."""
    url = f"{_tracking_uri().rstrip('/')}/api/2.0/mlflow/registered-models/set-tag"
    body = json.dumps({"name": name, "key": key, "value": value}).encode()
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json", **_registry_headers()})
    with _OPENER.open(req, timeout=timeout) as resp:
        resp.read()


def _creation_slots() -> threading.BoundedSemaphore:
    """How many run creations may be in flight at once: one when Airflow's metadata DB is SQLite (the embedded
    stack), else :data:`WORKER_THREADS`.

    On SQLite, concurrent dag-run inserts through the REST API fail with "database is locked" after SQLite's busy
    wait (tests/chaos found 8 at a time failing 3 in 4, each after 5 to 35 s), while one at a time takes ~50 ms.
    """
    global _slots
    with _guard_lock:
        if _slots is None:
            try:
                from airflow.configuration import conf

                sqlite = conf.get("database", "sql_alchemy_conn", fallback="").startswith("sqlite")
            except Exception:  # noqa: BLE001 - no Airflow config in this process: assume the safe choice
                sqlite = True
            _slots = threading.BoundedSemaphore(1 if sqlite else WORKER_THREADS)
        return _slots


def create_run(request: RunRequest, dag_id: str) -> str:
    """Queue the run through the REST API unless a run with that id exists: ``created`` or ``exists``."""
    global _api
    from modelops_airflow.hooks import AirflowApiHook

    with _guard_lock:
        if _api is None:  # one hook per process: it keeps its API token between deliveries
            _api = AirflowApiHook(AIRFLOW_API_CONN_ID, timeout=API_TIMEOUT_S)
        api = _api
    slots = _creation_slots()
    if not slots.acquire(timeout=API_TIMEOUT_S):  # answered 503 in time for MLflow's retry
        raise TimeoutError(f"no run-creation slot free within {API_TIMEOUT_S:g} s")
    try:
        return api.create_dag_run(dag_id, request.run_id, request.conf, request.note)
    finally:
        slots.release()


def start_mapped_run(mapped: MappedEvent, delivery_id: str, config: TriggerConfig,
                     received_at: float) -> tuple[str, str, str]:
    """Check the model's opt-in if needed, then create the run; the outcome is noted in the delivery table.

    An alias move's run id depends on the alias's last recorded move (the model's ``modelops.alias_run.<alias>``
    tag, :func:`modelops.triggers.events.alias_run_id`); the tag is written before the run is created.

    Returns:
        ``(status, outcome, run id)``: status ``accepted`` (outcome ``created`` / ``exists``), ``ignored``
        (outcome ``ignored: <why>``) or ``failed`` (outcome ``error: <one line>``; the delivery may be retried).
    """
    request = mapped.request
    assert request is not None
    store = guard()
    try:
        needs_tags = mapped.needs_opt_in_check or request.tag is not None
        tags = registered_model_tags(request.model_name) if needs_tags else None
        why_not = admit(mapped, tags, config)
        if why_not:
            outcome = f"ignored: {why_not}"
            store.finish(delivery_id, None, outcome)
            log.info("MLflow webhook %s: %s", delivery_id, outcome)
            return "ignored", outcome, request.run_id
        request = with_model_tags(request, tags)
        if request.tag is not None and tags is not None and tags.get(request.tag[0]) != request.tag[1]:
            set_model_tag(request.model_name, *request.tag)  # before the run: the next move is told apart
        outcome = create_run(request, config.dag_id)
    except Exception as exc:  # noqa: BLE001 - answered 503: MLflow retries, the reconcile picks the event up
        outcome = store.fail(delivery_id, request.run_id, _first_line(exc))
        log.warning("MLflow webhook %s: creating run %s failed (%s); answered 503 for a retry", delivery_id,
                    request.run_id, outcome)
        return "failed", outcome, request.run_id
    store.finish(delivery_id, request.run_id, outcome)
    log.info("MLflow webhook %s (%s): run %s %s in %.0f ms", delivery_id, request.reason, request.run_id, outcome,
             (time.time() - received_at) * 1000)
    return "accepted", outcome, request.run_id
