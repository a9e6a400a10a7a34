"""Extra links of the ModelOps tasks: the run's MLflow run and its report (every step and light task), and on
``deploy`` the Triton model, the gateway model and the Grafana dashboard.

Airflow computes them when a task ends (success or failure) and keeps them as XCom. The run links read the
``resolve`` task's result (``mlflow_run_url``), so a step that failed still links to where its reason is recorded;
the serving links read the ``links`` of the task's own result (``triton_model``, ``gateway_model``, ``grafana``).
Registered through the provider (``extra-links``) so the API server can show them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from modelops_airflow.connections import Connections

RESOLVE_TASK = "resolve"


def mlflow_run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI page of a run."""
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def report_url(run_url: str, run_id: str) -> str:
    """The run's HTML report (``report.html``, written by ``record``) as the MLflow of ``run_url`` serves it."""
    base = run_url.partition("/#/")[0]
    return f"{base}/get-artifact?{urlencode({'path': 'report.html', 'run_uuid': run_id})}"


def serving_links(conns: Connections, model: str, deployment: str) -> dict[str, str]:
    """Where ``deploy``'s extra links point: the deployment on Triton, the public model on the gateway, the
    Grafana gateway dashboard for the model; a link whose connection does not exist is left out."""
    from airflow.exceptions import AirflowNotFoundException

    links: dict[str, str] = {}
    makers = {"triton_model": lambda: f"http://{conns.triton().url()}/v2/models/{deployment}",
              "gateway_model": lambda: f"{conns.gateway().url()}/v2/models/{model}",
              "grafana": lambda: conns.grafana().dashboard_url("gateway", model=model)}  # fmt: skip
    for name, make in makers.items():
        try:
            links[name] = make()
        except AirflowNotFoundException:
            continue
    return links


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


def _own_links(ti_key: Any) -> dict[str, Any]:
    from airflow.sdk.execution_time.xcom import XCom

    result = XCom.get_one(key="return_value", dag_id=ti_key.dag_id, task_id=ti_key.task_id, run_id=ti_key.run_id,
                          map_index=ti_key.map_index)
    links = result.get("links") if isinstance(result, dict) else None
    return links if isinstance(links, dict) else {}


class TritonModelLink(BaseOperatorLink):
    """The deployment on Triton (KServe v2 model metadata: its inputs, outputs, platform)."""

    name = "Triton model"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return _own_links(ti_key).get("triton_model") or ""


class GatewayModelLink(BaseOperatorLink):
    """The public model on the serving gateway (KServe v2 metadata; ask with an API key)."""

    name = "Gateway model"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return _own_links(ti_key).get("gateway_model") or ""


class GrafanaDashboardLink(BaseOperatorLink):
    """The gateway and rollouts dashboard for this model (only with a ``grafana_default`` connection)."""

    name = "Grafana dashboard"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return _own_links(ti_key).get("grafana") or ""


STEP_LINKS = (MlflowRunLink(), RunReportLink())
SERVING_LINKS = (TritonModelLink(), GatewayModelLink(), GrafanaDashboardLink())
