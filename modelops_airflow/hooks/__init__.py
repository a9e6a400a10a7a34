"""Hooks, one per external service and module, on the provider hooks; each hands ``modelops`` the client it takes.

==================  ===============  =========================  ===============================================
hook                default conn id  base                       gives
==================  ===============  =========================  ===============================================
``MlflowHook``      mlflow_default   ``HttpHook`` (http)        ``get_client()`` -> ``mlflow.MlflowClient``
``TritonHook``      triton_default   ``HttpHook`` (http)        ``get_client()`` -> ``tritonclient.http`` client
``ModelOpsS3Hook``  s3_default       ``S3Hook`` (aws)           ``storage()`` -> ``modelops.storage.Storage``
``AirflowApiHook``  airflow_api_...  ``HttpHook`` (http)        ``create_dag_run()`` through the REST API v2
``PrometheusHook``  prometheus_...   ``HttpHook`` (http)        ``url()``: base URL for PromQL queries
``GatewayHook``     gateway_default  ``HttpHook`` (http)        ``url()``: base URL (``/metrics``, inference)
``OpenWebUIHook``   openwebui_...    ``HttpHook`` (http)        ``url()``, ``admin()``: its admin's login
``GrafanaHook``     grafana_default  ``HttpHook`` (http)        ``dashboard_url()``: a ModelOps dashboard
==================  ===============  =========================  ===============================================

The HTTP hooks' connection types (``modelops_mlflow``, ``modelops_triton``, ``modelops_gateway``, ``modelops_prometheus``,
``modelops_openwebui``, ``modelops_grafana``, ``modelops_airflow_api``) are HTTP connections with typed form fields
(:mod:`modelops_airflow.provider_info`); a plain ``http`` connection with the same extras works as well.
``get_conn()`` keeps the provider's meaning (a ``requests.Session`` for the HTTP hooks, a boto3 S3 client for
S3); every hook takes its connection id as a constructor argument (``mlflow_conn_id``, ``triton_conn_id``,
``aws_conn_id``, ``airflow_api_conn_id``, ``prometheus_conn_id``, ``gateway_conn_id``, ``openwebui_conn_id``,
``grafana_conn_id``) and has ``test_connection()``; operators hold theirs as
:class:`modelops_airflow.connections.Connections`. Heavy clients (mlflow, tritonclient) are imported when asked for,
so importing this module costs the provider hooks only.
"""

from __future__ import annotations

from modelops_airflow.hooks._common import BaseUrlHook
from modelops_airflow.hooks.airflow_api import CREATED, EXISTS, AirflowApiHook
from modelops_airflow.hooks.gateway import GatewayHook
from modelops_airflow.hooks.grafana import GrafanaHook
from modelops_airflow.hooks.mlflow import MlflowHook
from modelops_airflow.hooks.openwebui import OpenWebUIHook
from modelops_airflow.hooks.prometheus import PrometheusHook
from modelops_airflow.hooks.s3 import ModelOpsS3Hook
from modelops_airflow.hooks.triton import TritonHook

__all__ = [
    "CREATED", "EXISTS", "AirflowApiHook", "BaseUrlHook", "GatewayHook", "GrafanaHook", "MlflowHook", "ModelOpsS3Hook",
    "OpenWebUIHook", "PrometheusHook", "TritonHook",
]  # fmt: skip
