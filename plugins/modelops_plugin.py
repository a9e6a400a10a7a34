"""The ModelOps Airflow plugin. Hooks live in ``modelops_hooks``; later issues add the webhook endpoint."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin


class ModelOpsPlugin(AirflowPlugin):
    name = "modelops"
