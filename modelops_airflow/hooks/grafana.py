"""The Grafana that shows the ModelOps dashboards: ``GrafanaHook.dashboard_url()`` for the run page's links."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from modelops_airflow.hooks._common import BaseUrlHook

# the provisioned dashboards' uids (monitoring/dashboards/*.json)
DASHBOARDS = {"gateway": "modelops-gateway", "triton": "modelops-triton", "gpu": "modelops-gpu"}


class GrafanaHook(BaseUrlHook):
    """The Grafana with the ModelOps dashboards (http connection: host, port, schema; as a browser reaches it)."""

    conn_name_attr = "grafana_conn_id"
    default_conn_name = "grafana_default"
    conn_type = "modelops_grafana"
    hook_name = "Grafana"
    probe_path = "/api/health"
    what = "Grafana"

    def __init__(self, grafana_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(grafana_conn_id, **kwargs)

    def dashboard_url(self, dashboard: str, **variables: str) -> str:
        """``<grafana>/d/<uid>?var-<name>=<value>``: a provisioned dashboard with its variables set."""
        query = urlencode({f"var-{k}": v for k, v in variables.items()})
        return f"{self.url()}/d/{DASHBOARDS[dashboard]}" + (f"?{query}" if query else "")
