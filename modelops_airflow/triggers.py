"""``RegistryPollTrigger``: the MLflow registry poll behind the ``registry_reconcile`` AssetWatcher.

It runs in the triggerer and polls the registry every ``poll_interval`` seconds; when alias / stage facts
appear that call for a run (and versions tagged ``modelops.optimize=true``
that were never optimized), it fires with their run requests (the pull path that catches what webhooks
lost). Cheap to import: DAG files reference the class at parse time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from modelops.triggers.events import RunRequest, TriggerConfig, registry_requests


class RegistryPollTrigger(BaseEventTrigger):
    """Poll the registry; fire with the run requests that appeared since the previous poll.

    The first poll (triggerer start) and every ``resweep_interval`` seconds report every wanted run, so
    nothing missed while the triggerer was down stays missed; in between only new facts are reported.
    The reconcile DAG creates the runs idempotently, so reporting one twice costs one no-op.

    Args:
        poll_interval: seconds between two registry reads.
        resweep_interval: seconds between two full reports.
        mlflow_conn_id: the MLflow connection (``MlflowHook``).
    """

    def __init__(self, poll_interval: float = 60.0, resweep_interval: float = 3600.0,
                 mlflow_conn_id: str = "mlflow_default") -> None:
        super().__init__()
        self.poll_interval = float(poll_interval)
        self.resweep_interval = float(resweep_interval)
        self.mlflow_conn_id = mlflow_conn_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Classpath and kwargs, as the triggerer re-creates the trigger."""
        return (f"{__name__}.{type(self).__name__}", {"poll_interval": self.poll_interval,
                                                       "resweep_interval": self.resweep_interval,
                                                       "mlflow_conn_id": self.mlflow_conn_id})

    def _poll(self) -> list[RunRequest]:
        from modelops_airflow.hooks import MlflowHook

        config = TriggerConfig.from_env()
        client = MlflowHook(mlflow_conn_id=self.mlflow_conn_id).get_client()
        return registry_requests(client, config)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll forever; yield one event per poll that found new run requests."""
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
