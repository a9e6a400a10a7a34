"""Extra links of the step tasks (export, optimize, compile, validate, benchmark): the run's MLflow run and its report.

Airflow computes them when a task ends (success or failure) and keeps them as XCom; both read the ``resolve``
task's result (``mlflow_run_url``), so a step that failed still links to where its reason is recorded. Registered
through the provider (``extra-links``) so the API server can show them.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from airflow.sdk import BaseOperatorLink

RESOLVE_TASK = "resolve"


def mlflow_run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI page of a run."""
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def report_url(run_url: str, run_id: str) -> str:
    """The run's HTML report (``report.html``, written by ``record``) as the MLflow of ``run_url`` serves it."""
    base = run_url.partition("/#/")[0]
    return f"{base}/get-artifact?{urlencode({'path': 'report.html', 'run_uuid': run_id})}"


def _resolved(ti_key: Any) -> dict[str, Any]:
    from airflow.sdk.execution_time.xcom import XCom

    meta = XCom.get_one(key="return_value", dag_id=ti_key.dag_id, task_id=RESOLVE_TASK, run_id=ti_key.run_id)
    return meta if isinstance(meta, dict) else {}


class MlflowRunLink(BaseOperatorLink):
    """The MLflow run of this optimization (params, metrics per variant, the gate's expectations)."""

    name = "MLflow run"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return _resolved(ti_key).get("mlflow_run_url") or ""


class RunReportLink(BaseOperatorLink):
    """The run's HTML report (variants table, plots), once ``record`` has written it."""

    name = "Run report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        meta = _resolved(ti_key)
        return report_url(meta["mlflow_run_url"], meta["run_id"]) if meta.get("mlflow_run_url") else ""


STEP_LINKS = (MlflowRunLink(), RunReportLink())
