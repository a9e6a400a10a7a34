"""The ModelOps Airflow plugin: the MLflow webhook receiver, the registry poll trigger and run creation.

- ``fastapi_apps``: the webhook receiver (``modelops_webhook``) under ``/modelops`` on the API server.
- :class:`RegistryPollTrigger`: a ``BaseEventTrigger`` for an ``AssetWatcher``; it polls the MLflow
  registry every ``poll_interval`` seconds and fires when alias / stage facts appear that call for a run
  (the pull path that catches what webhooks lost). Hooks live in ``modelops_hooks``.
- :func:`create_dag_runs`: idempotent run creation from inside a task (what ``TriggerDagRunOperator``
  does, for many runs in one task).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from airflow.plugins_manager import AirflowPlugin
from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from modelops.triggers.events import RunRequest, TriggerConfig, search_models, wanted_runs

log = logging.getLogger(__name__)


class RegistryPollTrigger(BaseEventTrigger):
    """Poll the registry; fire with the run requests that appeared since the previous poll.

    The first poll (triggerer start) and every ``resweep_interval`` seconds report every wanted run, so
    nothing missed while the triggerer was down stays missed; in between only new facts are reported.
    The reconcile task creates the runs idempotently, so reporting one twice costs one no-op.
    """

    def __init__(self, poll_interval: float = 60.0, resweep_interval: float = 3600.0,
                 mlflow_conn_id: str = "mlflow_default") -> None:
        super().__init__()
        self.poll_interval = float(poll_interval)
        self.resweep_interval = float(resweep_interval)
        self.mlflow_conn_id = mlflow_conn_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("modelops_plugin.RegistryPollTrigger", {"poll_interval": self.poll_interval,
                                                         "resweep_interval": self.resweep_interval,
                                                         "mlflow_conn_id": self.mlflow_conn_id})

    def _poll(self) -> list[RunRequest]:
        from modelops_hooks import MlflowHook

        config = TriggerConfig.from_env()
        client = MlflowHook(self.mlflow_conn_id).get_conn()
        return wanted_runs(search_models(client, config), config)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        seen: set[str] = set()
        last_sweep = float("-inf")
        while True:
            started = time.monotonic()
            try:
                wanted = await asyncio.to_thread(self._poll)
            except Exception as exc:  # noqa: BLE001 - a registry hiccup must not kill the watcher
                self.log.warning("registry poll failed: %s", str(exc).splitlines()[0][:300] if str(exc) else exc)
                await asyncio.sleep(self.poll_interval)
                continue
            if started - last_sweep >= self.resweep_interval:
                seen, last_sweep = set(), started
            new = [r for r in wanted if r.run_id not in seen]
            seen = {r.run_id for r in wanted}
            if new:
                self.log.info("registry poll: %d run(s) to reconcile", len(new))
                yield TriggerEvent({"requests": [r.to_json() for r in new], "polled_at": time.time()})
            await asyncio.sleep(max(0.0, self.poll_interval - (time.monotonic() - started)))


def create_dag_runs(requests: Iterable[RunRequest], dag_id: str) -> dict[str, str]:
    """Create one run per request from inside a running task; run id -> ``created`` or ``exists``.

    Uses the task's execution-API channel, exactly like ``TriggerDagRunOperator`` (which can create only
    one run per task): an existing run id answers DAGRUN_ALREADY_EXISTS, which is the idempotent no-op.
    """
    from airflow.sdk.exceptions import ErrorType
    from airflow.sdk.execution_time.comms import ErrorResponse, TriggerDagRun
    from airflow.sdk.execution_time.task_runner import SUPERVISOR_COMMS

    outcomes: dict[str, str] = {}
    for req in requests:
        answer = SUPERVISOR_COMMS.send(TriggerDagRun(dag_id=dag_id, run_id=req.run_id, conf=req.conf, note=req.note))
        if isinstance(answer, ErrorResponse):
            if answer.error != ErrorType.DAGRUN_ALREADY_EXISTS:
                raise RuntimeError(f"creating run {req.run_id} of {dag_id} failed: {answer.error} {answer.detail}")
            outcomes[req.run_id] = "exists"
        else:
            outcomes[req.run_id] = "created"
    return outcomes


class _WebhookApps:
    """``fastapi_apps`` resolved on first access: only the API server reads it, so DAG files that import
    this module (for the trigger) and task processes never pay for importing FastAPI and the app."""

    def __get__(self, obj: object, owner: type | None = None) -> list[dict[str, Any]]:
        from modelops_webhook import URL_PREFIX, app

        return [{"app": app, "url_prefix": URL_PREFIX, "name": "ModelOps MLflow webhook"}]


class ModelOpsPlugin(AirflowPlugin):
    """Mounts the MLflow webhook receiver on the API server."""

    name = "modelops"
    fastapi_apps = _WebhookApps()
