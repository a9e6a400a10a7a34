"""The Prometheus that scrapes Triton and the gateway: ``PrometheusHook.url()`` for PromQL."""

from __future__ import annotations

from typing import Any

from modelops_airflow.hooks._common import BaseUrlHook


class PrometheusHook(BaseUrlHook):
    """The Prometheus server that scrapes Triton and the gateway (http connection: host, port, schema)."""

    conn_name_attr = "prometheus_conn_id"
    default_conn_name = "prometheus_default"
    conn_type = "modelops_prometheus"  # an HTTP connection (host, port, schema): HttpHook reads it
    hook_name = "Prometheus"
    probe_path = "/-/ready"
    what = "Prometheus"

    def __init__(self, prometheus_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(prometheus_conn_id, **kwargs)
