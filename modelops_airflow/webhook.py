"""The MLflow webhook receiver: a FastAPI app the ModelOps plugin mounts on Airflow's API server.

``POST /modelops/mlflow/webhook`` is not behind Airflow's login (MLflow cannot log in): each delivery is
authenticated by its HMAC signature instead (``modelops.triggers.signature``), must be fresh (5 min) and
its delivery id must be new (a SQLite table under AIRFLOW_HOME). The answer comes before any registry or
database work: 202 with the deterministic run id, or 200 "ignored"; the run is created right after, in
the background, through Airflow's public REST API (``POST /api/v2/dags/<dag>/dagRuns`` with the run id,
by ``AirflowApiHook`` on the ``airflow_api_default`` connection: API URL, login, password). A run id that
exists already answers 409, the idempotent no-op, so MLflow retries, replays that got past the guard and
the registry reconcile can never start a second run.

The secret is read per request (cached by file mtime) from ``MODELOPS_WEBHOOK_SECRET``,
``MODELOPS_WEBHOOK_SECRET_FILE`` or ``<MODELOPS_STACK_DIR>/webhook/secret`` (``modelops webhook register``
writes that file): rotating it needs no restart.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.responses import JSONResponse

from modelops.settings import Settings
from modelops.triggers.events import MappedEvent, RunRequest, TriggerConfig, admit, event_name, map_webhook_event
from modelops.triggers.signature import ReplayGuard, WebhookRejected, load_secret, verify

if TYPE_CHECKING:
    from modelops_airflow.hooks import AirflowApiHook

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/mlflow/webhook"
URL_PREFIX = "/modelops"
AIRFLOW_API_CONN_ID = "airflow_api_default"  # the REST API user the receiver creates runs as
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the registry is reached directly

app = FastAPI(title="ModelOps MLflow webhook", description="MLflow registry events -> optimize_model runs")
_guard_lock = threading.Lock()
_guard: ReplayGuard | None = None
_api: AirflowApiHook | None = None


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


@app.post(WEBHOOK_PATH)
async def mlflow_webhook(request: Request, background: BackgroundTasks) -> JSONResponse:
    """Verify one MLflow delivery and map it to an ``optimize_model`` run (created after the answer)."""
    body = await request.body()
    secret = load_secret()
    if secret is None:
        log.error("MLflow webhook refused: no secret configured (run `modelops webhook register`)")
        return _reply(503, error="webhook secret not configured")
    try:
        delivery_id, _ = verify(secret, request.headers, body)
    except WebhookRejected as exc:
        log.warning("MLflow webhook rejected (%s) from %s", exc.reason, request.client.host if request.client else "?")
        return _reply(exc.status, error=exc.reason)
    try:
        payload = json.loads(body)
    except json.JSONDecodeError:
        return _reply(400, error="body is not JSON")
    kind = event_name(payload)
    if not guard().claim(delivery_id, kind):
        log.warning("MLflow webhook delivery %s replayed: refused", delivery_id)
        return _reply(409, error="delivery already received", delivery_id=delivery_id)
    try:
        config = TriggerConfig.from_env()
        mapped = map_webhook_event(payload, config)
        if mapped.request is None:
            guard().finish(delivery_id, None, f"ignored: {mapped.ignored}")
            return _reply(200, status="ignored", reason=mapped.ignored, delivery_id=delivery_id)
    except Exception:
        guard().release(delivery_id)  # let MLflow's retry (it retries 5xx) through the replay guard
        log.exception("MLflow webhook delivery %s could not be mapped", delivery_id)
        return _reply(500, error="internal error")
    background.add_task(start_mapped_run, mapped, delivery_id, config, time.time())
    return _reply(202, status="accepted", run_id=mapped.request.run_id, delivery_id=delivery_id)


# -- after the answer ------------------------------------------------------------------------------
def _tracking_uri() -> str:
    try:
        from modelops_airflow.hooks import MlflowHook

        return MlflowHook().tracking_uri()
    except Exception:  # noqa: BLE001 - no connection in this process: the stack's env names the server too
        return os.environ["MLFLOW_TRACKING_URI"]


def registered_model_tags(name: str, timeout: float = 10.0) -> dict[str, str] | None:
    """Tags of a registered model through MLflow's REST API (no mlflow import in the API server); None if absent."""
    url = f"{_tracking_uri().rstrip('/')}/api/2.0/mlflow/registered-models/get?{urllib.parse.urlencode({'name': name})}"
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            data = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise
    tags = (data.get("registered_model") or {}).get("tags") or []
    return {t["key"]: t.get("value", "") for t in tags}


def create_run(request: RunRequest, dag_id: str) -> str:
    """Queue the run through the REST API unless a run with that id exists: ``created`` or ``exists``."""
    global _api
    from modelops_airflow.hooks import AirflowApiHook

    with _guard_lock:
        if _api is None:  # one hook per process: it keeps its API token between deliveries
            _api = AirflowApiHook(AIRFLOW_API_CONN_ID)
        api = _api
    return api.create_dag_run(dag_id, request.run_id, request.conf, request.note)


def start_mapped_run(mapped: MappedEvent, delivery_id: str, config: TriggerConfig, received_at: float) -> str:
    """Check the model's opt-in if needed, then create the run; the outcome is noted in the delivery table."""
    request = mapped.request
    assert request is not None
    try:
        tags = registered_model_tags(request.model_name) if mapped.needs_opt_in_check else None
        why_not = admit(mapped, tags, config)
        if why_not:
            outcome = f"ignored: {why_not}"
            guard().finish(delivery_id, None, outcome)
            log.info("MLflow webhook %s: %s", delivery_id, outcome)
            return outcome
        outcome = create_run(request, config.dag_id)
    except Exception as exc:  # the reconcile picks the event up; say why here
        outcome = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        log.exception("MLflow webhook %s: creating run %s failed", delivery_id, request.run_id)
    guard().finish(delivery_id, request.run_id, outcome)
    log.info("MLflow webhook %s (%s): run %s %s in %.0f ms", delivery_id, request.reason, request.run_id, outcome,
             (time.time() - received_at) * 1000)
    return outcome
