"""The Airflow connections a ModelOps task talks through, as one typed value its operator owns.

Every ModelOps operator (the light TaskFlow tasks of :mod:`modelops_airflow.decorators`, the step operators, the
rollout operator) takes the connection ids it uses as constructor arguments with these defaults. Airflow fills
them from a DAG's ``default_args`` when the DAG is parsed, as it does for any operator argument::

    @dag(default_args={"aws_conn_id": "s3_prod", "mlflow_conn_id": "mlflow_prod"})

The S3 connection is ``aws_conn_id`` everywhere (the Amazon provider's name); its default is ``s3_default``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelops_airflow.hooks import (
        AirflowApiHook,
        GatewayHook,
        GrafanaHook,
        MlflowHook,
        ModelOpsS3Hook,
        OpenWebUIHook,
        PrometheusHook,
        TritonHook,
    )


@dataclass(frozen=True)
class Connections:
    """Connection ids, one per service; each method builds that service's hook (importing hooks lazily).

    Raises:
        ValueError: a connection id is not a non-empty string (at DAG parse time, naming the argument).
    """

    mlflow_conn_id: str = "mlflow_default"
    aws_conn_id: str = "s3_default"
    triton_conn_id: str = "triton_default"
    gateway_conn_id: str = "gateway_default"
    prometheus_conn_id: str = "prometheus_default"
    openwebui_conn_id: str = "openwebui_default"
    grafana_conn_id: str = "grafana_default"
    airflow_api_conn_id: str = "airflow_api_default"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{f.name} must be a non-empty connection id, got {value!r}")
            object.__setattr__(self, f.name, value.strip())

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The argument names (``mlflow_conn_id``, ``aws_conn_id``, ...)."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def of(cls, operator: Any) -> Connections:
        """The connections ``operator`` was given (its ``connections``, else its ``*_conn_id`` attributes)."""
        own = getattr(operator, "connections", None)
        if isinstance(own, Connections):
            return own
        return cls(**{n: getattr(operator, n) for n in cls.names() if isinstance(getattr(operator, n, None), str)})

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    def mlflow(self) -> MlflowHook:
        from modelops_airflow.hooks.mlflow import MlflowHook

        return MlflowHook(mlflow_conn_id=self.mlflow_conn_id)

    def s3(self) -> ModelOpsS3Hook:
        from modelops_airflow.hooks.s3 import ModelOpsS3Hook

        return ModelOpsS3Hook(aws_conn_id=self.aws_conn_id)

    def triton(self) -> TritonHook:
        from modelops_airflow.hooks.triton import TritonHook

        return TritonHook(triton_conn_id=self.triton_conn_id)

    def gateway(self) -> GatewayHook:
        from modelops_airflow.hooks.gateway import GatewayHook

        return GatewayHook(gateway_conn_id=self.gateway_conn_id)

    def prometheus(self) -> PrometheusHook:
        from modelops_airflow.hooks.prometheus import PrometheusHook

        return PrometheusHook(prometheus_conn_id=self.prometheus_conn_id)

    def openwebui(self) -> OpenWebUIHook:
        from modelops_airflow.hooks.openwebui import OpenWebUIHook

        return OpenWebUIHook(openwebui_conn_id=self.openwebui_conn_id)

    def grafana(self) -> GrafanaHook:
        from modelops_airflow.hooks.grafana import GrafanaHook

        return GrafanaHook(grafana_conn_id=self.grafana_conn_id)

    def airflow_api(self) -> AirflowApiHook:
        from modelops_airflow.hooks.airflow_api import AirflowApiHook

        return AirflowApiHook(airflow_api_conn_id=self.airflow_api_conn_id)
