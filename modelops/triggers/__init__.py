"""Triggers of ``optimize_model``: MLflow webhooks (push), registry reconcile (pull) and nightly re-optimization.

Pure logic, importable without Airflow (and without MLflow: clients are passed in):

- :mod:`modelops.triggers.events`: configuration, deterministic run ids, webhook event -> run mapping,
  registry snapshot -> wanted runs (reconcile).
- :mod:`modelops.triggers.signature`: HMAC signature verification, the replay guard, the webhook secret file.
- :mod:`modelops.triggers.fingerprint`: what determines an optimization result, hashed.
- :mod:`modelops.triggers.planner`: the nightly plan (start / skip with reasons), O(1) registry calls per model.
"""

from __future__ import annotations

from modelops.contracts.naming import TAG_ALIAS, TAG_FINGERPRINT, TAG_OPT_IN
from modelops.triggers.events import (
    DAG_ID,
    RunRequest,
    TriggerConfig,
    map_webhook_event,
    run_id_for,
    wanted_runs,
)

__all__ = [
    "DAG_ID",
    "TAG_ALIAS",
    "TAG_FINGERPRINT",
    "TAG_OPT_IN",
    "RunRequest",
    "TriggerConfig",
    "map_webhook_event",
    "run_id_for",
    "wanted_runs",
]
