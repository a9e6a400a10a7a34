"""TaskFlow decorators of the light ModelOps tasks: ``@modelops_task`` and ``@modelops_serving_task``.

Each is ``@task`` (a Python callable, its arguments templated, XCom arguments resolved) on an operator that takes
the connection ids as explicit arguments with defaults (:class:`~modelops_airflow.connections.Connections`), so a
DAG's ``default_args`` sets them at parse time like any operator argument::

    @modelops_task(retries=3, aws_conn_id="s3_prod")
    def select(meta: dict, connections: Connections | None = None) -> dict: ...

A callable that declares a ``connections`` parameter gets its operator's. Both carry the run page's extra links:
"MLflow run" and "Run report"; the serving one adds "Triton model", "Gateway model" and "Grafana dashboard",
read from the ``links`` its callable returns. Registered as ``@task.modelops`` and ``@task.modelops_serving``
through the provider.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from airflow.providers.common.compat.sdk import DecoratedOperator, task_decorator_factory
from airflow.providers.standard.operators.python import PythonOperator

from modelops_airflow.connections import Connections
from modelops_airflow.links import SERVING_LINKS, STEP_LINKS

_DEFAULTS = Connections()


class ModelOpsTaskOperator(DecoratedOperator, PythonOperator):
    """A light ModelOps task: a Python callable that talks to the services through the connections named here.

    Args:
        mlflow_conn_id, aws_conn_id, triton_conn_id, gateway_conn_id, prometheus_conn_id, openwebui_conn_id,
        grafana_conn_id, airflow_api_conn_id: the Airflow connections (defaults ``*_default``; S3: ``s3_default``).
    """

    template_fields: Sequence[str] = ("templates_dict", "op_args", "op_kwargs")
    template_fields_renderers: ClassVar[dict[str, str]] = {"templates_dict": "json", "op_args": "py", "op_kwargs": "py"}
    custom_operator_name = "@modelops_task"
    operator_extra_links = STEP_LINKS
    ui_color = "#e8f0fe"

    def __init__(self, *, python_callable: Callable[..., Any], op_args: Any, op_kwargs: Any,
                 mlflow_conn_id: str = _DEFAULTS.mlflow_conn_id, aws_conn_id: str = _DEFAULTS.aws_conn_id,
                 triton_conn_id: str = _DEFAULTS.triton_conn_id, gateway_conn_id: str = _DEFAULTS.gateway_conn_id,
                 prometheus_conn_id: str = _DEFAULTS.prometheus_conn_id,
                 openwebui_conn_id: str = _DEFAULTS.openwebui_conn_id,
                 grafana_conn_id: str = _DEFAULTS.grafana_conn_id,
                 airflow_api_conn_id: str = _DEFAULTS.airflow_api_conn_id, **kwargs: Any) -> None:  # fmt: skip
        super().__init__(kwargs_to_upstream={"python_callable": python_callable, "op_args": op_args,
                                             "op_kwargs": op_kwargs},
                         python_callable=python_callable, op_args=op_args, op_kwargs=op_kwargs, **kwargs)  # fmt: skip
        self.connections = Connections(
            mlflow_conn_id=mlflow_conn_id, aws_conn_id=aws_conn_id, triton_conn_id=triton_conn_id,
            gateway_conn_id=gateway_conn_id, prometheus_conn_id=prometheus_conn_id,
            openwebui_conn_id=openwebui_conn_id, grafana_conn_id=grafana_conn_id,
            airflow_api_conn_id=airflow_api_conn_id)  # fmt: skip

    def determine_kwargs(self, context: Any) -> Any:
        """The callable's keyword arguments, with ``connections`` when it declares that parameter."""
        import inspect

        kwargs = dict(super().determine_kwargs(context))
        if "connections" in inspect.signature(self.python_callable).parameters:
            kwargs["connections"] = self.connections
        return kwargs


class ModelOpsServingTaskOperator(ModelOpsTaskOperator):
    """A light task that changes serving (deploy): adds the links to the Triton model, the gateway model and the
    Grafana dashboard."""

    custom_operator_name = "@modelops_serving_task"
    operator_extra_links = STEP_LINKS + SERVING_LINKS
    ui_color = "#d9ead3"


def modelops_task(python_callable: Callable[..., Any] | None = None, multiple_outputs: bool | None = None,
                  **kwargs: Any) -> Any:
    """``@task`` on :class:`ModelOpsTaskOperator` (connection ids as operator arguments)."""
    return task_decorator_factory(python_callable=python_callable, multiple_outputs=multiple_outputs,
                                  decorated_operator_class=ModelOpsTaskOperator, **kwargs)


def modelops_serving_task(python_callable: Callable[..., Any] | None = None, multiple_outputs: bool | None = None,
                          **kwargs: Any) -> Any:
    """``@task`` on :class:`ModelOpsServingTaskOperator` (adds the serving links)."""
    return task_decorator_factory(python_callable=python_callable, multiple_outputs=multiple_outputs,
                                  decorated_operator_class=ModelOpsServingTaskOperator, **kwargs)
