"""Open WebUI refresh as an Airflow task: run after every promotion or rollback, by optimize_model when a
deployment replaced another at once, and by the nightly DAG. Idempotent; see :mod:`modelops.serving.openwebui`.

The Open WebUI connection (``openwebui_conn_id``, default ``openwebui_default``) holds Open WebUI's URL and admin (login/password) and, in its extras,
``gateway_url`` (the gateway as Open WebUI reaches it) and ``gateway_key`` (Open WebUI's own gateway key).
Without that connection the refresh is skipped with one log line: a platform without Open WebUI still rolls out.
"""

from __future__ import annotations

import logging
from typing import Any

from modelops_airflow.connections import Connections

log = logging.getLogger(__name__)


def refresh_openwebui(connections: Connections | None = None) -> dict[str, Any]:
    """Publish the routed chat models to Open WebUI with their MLflow descriptions and group grants."""
    from airflow.exceptions import AirflowNotFoundException

    from modelops.serving.openwebui import refresh, registry_models
    from modelops.settings import Settings

    conns = connections or Connections()
    hook = conns.openwebui()
    try:
        email, password = hook.admin()
        extra = hook.get_connection(hook.openwebui_conn_id).extra_dejson
    except AirflowNotFoundException:
        log.info("no %s connection: Open WebUI refresh skipped", hook.openwebui_conn_id)
        return {"skipped": "no Open WebUI connection"}
    if not extra.get("gateway_url") or not extra.get("gateway_key"):
        raise ValueError(f"connection {hook.openwebui_conn_id!r} needs the extras gateway_url and gateway_key")
    storage = conns.s3().storage()
    entries = registry_models(storage, Settings.from_env().triton_bucket, conns.mlflow().get_client())
    result = refresh(hook.url(), email, password, extra["gateway_url"], extra["gateway_key"], entries)
    log.info("Open WebUI refreshed: %s", {k: v for k, v in result.items() if k != "models"})
    return result


def refresh_quietly(after: str, connections: Connections | None = None) -> None:
    """:func:`refresh_openwebui`, best effort: a rollout's outcome never depends on Open WebUI being reachable."""
    try:
        refresh_openwebui(connections)
    except Exception as exc:  # noqa: BLE001 - logged in one line; the next refresh (nightly) catches up
        log.warning("Open WebUI refresh after %s failed: %s", after, str(exc).splitlines()[0] if str(exc) else exc)
