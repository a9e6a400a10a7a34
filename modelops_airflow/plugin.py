"""The ModelOps Airflow plugin: mounts the MLflow webhook receiver under ``/modelops`` on the API server.

Registered once, through the ``airflow.plugins`` entry point in ``pyproject.toml`` (the repo's ``plugins/``
folder holds no module of it, so Airflow never sees the plugin twice).
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin


class _WebhookApps:
    """``fastapi_apps`` resolved on first access: only the API server reads it, so the scheduler, the
    triggerer and task processes (which load plugins too) never pay for importing FastAPI and the app."""

    def __get__(self, obj: object, owner: type | None = None) -> list[dict[str, Any]]:
        from modelops_airflow.webhook import URL_PREFIX, app

        return [{"app": app, "url_prefix": URL_PREFIX, "name": "ModelOps MLflow webhook"}]


class ModelOpsPlugin(AirflowPlugin):
    """Mounts the MLflow webhook receiver on the API server."""

    name = "modelops"
    fastapi_apps = _WebhookApps()
