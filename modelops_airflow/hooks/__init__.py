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
==================  ===============  =========================  ===============================================

The HTTP hooks' connection types (``modelops_mlflow``, ``modelops_triton``, ``modelops_gateway``, ``modelops_prometheus``,
``modelops_openwebui``, ``modelops_airflow_api``) are HTTP connections with typed form fields
(:mod:`modelops_airflow.provider_info`); a plain ``http`` connection with the same extras works as well.
``get_conn()`` keeps the provider's meaning (a ``requests.Session`` for the HTTP hooks, a boto3 S3 client for
S3); every hook takes its connection id as a constructor argument (``mlflow_conn_id``, ``triton_conn_id``,
``aws_conn_id``, ``airflow_api_conn_id``, ``prometheus_conn_id``, ``gateway_conn_id``, ``openwebui_conn_id``) and has
``test_connection()``. Heavy clients (mlflow, tritonclient)
are imported when asked for, so importing this module costs the provider hooks only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelops_airflow.hooks._common import CONN_ID_DEFAULTS, BaseUrlHook, conn_ids
from modelops_airflow.hooks.airflow_api import CREATED, EXISTS, AirflowApiHook
from modelops_airflow.hooks.gateway import GatewayHook
from modelops_airflow.hooks.mlflow import MlflowHook
from modelops_airflow.hooks.openwebui import OpenWebUIHook
from modelops_airflow.hooks.prometheus import PrometheusHook
from modelops_airflow.hooks.s3 import ModelOpsS3Hook
from modelops_airflow.hooks.triton import TritonHook

__all__ = [
    "CONN_ID_DEFAULTS", "CREATED", "EXISTS", "AirflowApiHook", "BaseUrlHook", "GatewayHook", "MlflowHook",
    "ModelOpsS3Hook", "OpenWebUIHook", "PrometheusHook", "TritonHook", "conn_ids", "monitoring_hooks", "pipeline_hooks",
]  # fmt: skip


def pipeline_hooks(overrides: Mapping[str, Any] | None = None) -> tuple[MlflowHook, ModelOpsS3Hook, TritonHook]:
    """The MLflow, S3 and Triton hooks on the connections ``overrides`` names (e.g. a DAG's ``default_args``).

    Args:
        overrides: may hold ``mlflow_conn_id``, ``s3_conn_id``, ``triton_conn_id``; other keys are ignored,
            missing ones take :data:`CONN_ID_DEFAULTS`.

    Raises:
        ValueError: a connection id is set but not a non-empty string.
    """
    ids = conn_ids(overrides)
    return (MlflowHook(mlflow_conn_id=ids["mlflow_conn_id"]), ModelOpsS3Hook(aws_conn_id=ids["s3_conn_id"]),
            TritonHook(triton_conn_id=ids["triton_conn_id"]))


def monitoring_hooks(overrides: Mapping[str, Any] | None = None) -> tuple[PrometheusHook, GatewayHook]:
    """The Prometheus and gateway hooks on the connections ``overrides`` names (``prometheus_conn_id``,
    ``gateway_conn_id``; defaults ``prometheus_default``, ``gateway_default``).

    Raises:
        ValueError: a connection id is set but not a non-empty string.
    """
    ids = conn_ids(overrides)
    return (PrometheusHook(prometheus_conn_id=ids["prometheus_conn_id"]),
            GatewayHook(gateway_conn_id=ids["gateway_conn_id"]))
