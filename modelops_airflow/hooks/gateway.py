"""The serving gateway: ``GatewayHook.url()`` (``/metrics``, inference)."""

from __future__ import annotations

from typing import Any

from modelops_airflow.hooks._common import BaseUrlHook


class GatewayHook(BaseUrlHook):
    """The serving gateway (http connection: host, port, schema); its ``/metrics`` needs no key."""

    conn_name_attr = "gateway_conn_id"
    default_conn_name = "gateway_default"
    conn_type = "modelops_gateway"  # an HTTP connection (host, port, schema): HttpHook reads it
    hook_name = "ModelOps serving gateway"
    probe_path = "/v2/health/live"
    what = "the gateway"

    def __init__(self, gateway_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(gateway_conn_id, **kwargs)
