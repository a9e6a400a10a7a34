"""The rollout gauges of the gateway's ``/metrics``: the latest rollout of each model, read from its state document.

Rollouts run as Airflow tasks (short processes with no metrics endpoint of their own); their state lives in
``s3://<triton bucket>/rollouts/<model>.json`` (:mod:`modelops.rollout.state`), next to the routes files the
gateway already polls. :class:`RolloutStatus` lists that prefix every :data:`POLL_S` seconds (one request; only
changed documents are read, in a worker thread) and sets ``modelops_rollout_*`` in :class:`GatewayMetrics`, so
Prometheus can alert on a rollout that stopped advancing or was rolled back
(``monitoring/rules/rollout.yml``). A failed poll keeps the last values; an unreadable document is skipped.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from modelops.serving.gateway.metrics import GatewayMetrics
from modelops.serving.gateway.polling import Poller
from modelops.serving.gateway.reload import RoutesSource
from modelops.storage import Storage, is_s3

log = logging.getLogger("modelops.gateway.rollouts")

POLL_S = 10.0


def rollouts_root(routes_uri: str) -> str:
    """The rollout state documents' prefix beside the routes files (``s3://b/routes`` -> ``s3://b/rollouts``)."""
    root = routes_uri.rstrip("/")
    if is_s3(root):
        return root.rsplit("/", 1)[0] + "/rollouts"
    return str(Path(root).parent / "rollouts")


def _timestamp(text: Any) -> float:
    try:
        return datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return 0.0


class RolloutStatus(Poller):
    """Keeps ``modelops_rollout_*`` equal to the rollout state documents under ``root``.

    Args:
        root: ``s3://bucket/rollouts`` or a local directory (see :func:`rollouts_root`).
        metrics: the gauges to set.
        storage: the documents' storage (default: boto3 from the environment).
        poll_s: seconds between polls.
    """

    task_name = "modelops-gateway-rollouts"

    def __init__(self, root: str, metrics: GatewayMetrics, storage: Storage | None = None, poll_s: float = POLL_S):
        self.source = RoutesSource(root, storage)  # a prefix of <model>.json documents, listed with their tags
        self.metrics = metrics
        self.poll_s = poll_s
        self._tags: dict[str, str] = {}
        self._docs: dict[str, dict[str, Any]] = {}
        super().__init__()

    async def poll_once(self) -> None:
        """Re-read the changed documents and set the gauges; a failed listing keeps the last values."""
        try:
            self._docs, self._tags = await asyncio.to_thread(self._refresh, dict(self._docs), dict(self._tags))
        except Exception as exc:  # noqa: BLE001 - storage down: keep the last values, say so once per poll
            log.warning("rollout status poll failed: %s", f"{type(exc).__name__}: {exc}".splitlines()[0])
            return
        self._publish()

    def _refresh(
        self, docs: dict[str, dict[str, Any]], old_tags: dict[str, str]
    ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        tags = self.source.scan()
        for model in set(docs) - set(tags):
            docs.pop(model)
        for model, tag in tags.items():
            if old_tags.get(model) == tag and model in docs:
                continue
            try:
                doc = json.loads(self.source.read(model))
                docs[model] = {
                    "deployment": str(doc["deployment"]), "status": str(doc["status"]), "mode": str(doc["mode"]),
                    "updated": _timestamp(doc.get("updated_at")), "interval_s": float(doc.get("interval_s", 0)),
                    "weight": _weight(doc),
                }
            except FileNotFoundError:
                docs.pop(model, None)
            except (ValueError, TypeError, KeyError) as exc:
                log.warning("rollout state of %s is unreadable, skipped: %s", model, exc)
                docs.pop(model, None)
        return docs, tags

    def _publish(self) -> None:
        m = self.metrics
        wanted = {(model, d["deployment"], d["status"], d["mode"]) for model, d in self._docs.items()}
        for labels in list(m.rollout_info._metrics):
            if labels not in wanted:
                m.rollout_info.remove(*labels)
        for gauge in (m.rollout_updated, m.rollout_weight, m.rollout_interval):
            for labels in list(gauge._metrics):
                if labels[0] not in self._docs:
                    gauge.remove(*labels)
        for model, d in self._docs.items():
            m.rollout_info.labels(model, d["deployment"], d["status"], d["mode"]).set(1)
            m.rollout_updated.labels(model).set(d["updated"])
            m.rollout_weight.labels(model).set(d["weight"])
            m.rollout_interval.labels(model).set(d["interval_s"])


def _weight(doc: dict[str, Any]) -> int:
    steps, index = list(doc.get("steps") or []), int(doc.get("step_index", -1))
    return int(steps[index]) if 0 <= index < len(steps) else 0
