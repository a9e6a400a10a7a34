"""The Airflow provider this package is (entry point ``apache_airflow_provider``): hooks, connection types with
their form fields, the plugin. Read by Airflow's ProvidersManager without importing the hooks."""

from __future__ import annotations

from typing import Any

PACKAGE = "modelops"
INTEGRATION = "ModelOps"

def _http(name: str, conn_type: str, module: str, cls: str, *, host: str, port: int,
          fields: dict[str, Any] | None = None, login: str | None = None,
          password: str | None = None) -> dict[str, Any]:  # fmt: skip
    relabel = {k: v for k, v in (("login", login), ("password", password)) if v}
    hidden = ["login", "password"] if not relabel else []
    return {
        "hook-class-name": f"modelops_airflow.hooks.{module}.{cls}",
        "hook-name": name,
        "connection-type": conn_type,
        "ui-field-behaviour": {
            "hidden-fields": hidden,  # extra stays: HttpHook sends other extras as request headers
            "relabeling": {"schema": "Scheme (http or https)", **relabel},
            "placeholders": {"host": host, "port": str(port), "schema": "http"},
        },
        **({"conn-fields": fields} if fields else {}),
    }


def _string(label: str, description: str, *, secret: bool = False, default: Any = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": ["string", "null"]}
    if secret:
        schema["format"] = "password"  # stored in the extras, masked in the UI and the logs
    if default is not None:
        schema["default"] = default
    return {"label": label, "description": description, "schema": schema}


def _integer(label: str, description: str, default: int) -> dict[str, Any]:
    return {"label": label, "description": description, "schema": {"type": ["integer", "null"], "default": default}}


CONNECTION_TYPES: list[dict[str, Any]] = [
    _http("MLflow", "modelops_mlflow", "mlflow", "MlflowHook", host="mlflow.example.internal", port=5000,
          login="Username (MLflow basic auth)", password="Password"),
    _http("NVIDIA Triton", "modelops_triton", "triton", "TritonHook", host="triton.example.internal", port=8000,
          fields={
              "grpc_port": _integer("gRPC port", "Triton's gRPC endpoint (perf_analyzer, streaming LLMs)", 8001),
              "metrics_port": _integer("Metrics port", "Triton's Prometheus metrics endpoint", 8002),
              "admin_header": _string("Admin header", "The header that opens Triton's restricted model-control "
                                      "APIs (--http-restricted-api)", default="X-ModelOps-Admin"),
              "admin_token": _string("Admin token", "Its value: sent only on load/unload/repository calls",
                                     secret=True),
              "admin_token_file": _string("Admin token file", "Or a file holding it, read at each use (follows a "
                                          "token rotated at every Triton start); wins over Admin token"),
          }),
    _http("ModelOps serving gateway", "modelops_gateway", "gateway", "GatewayHook", host="gateway.example.internal",
          port=9000),
    _http("Prometheus", "modelops_prometheus", "prometheus", "PrometheusHook", host="prometheus.example.internal",
          port=9090),
    _http("Open WebUI", "modelops_openwebui", "openwebui", "OpenWebUIHook", host="open-webui.example.internal",
          port=8080, login="Admin email", password="Admin password",
          fields={
              "gateway_url": _string("Gateway URL (as Open WebUI reaches it)", "Open WebUI's OpenAI connection "
                                     "points here, e.g. http://gateway:9000"),
              "gateway_key": _string("Gateway key of Open WebUI", "The API key Open WebUI sends to the gateway",
                                     secret=True),
          }),
    _http("Grafana (ModelOps dashboards)", "modelops_grafana", "grafana", "GrafanaHook", host="grafana.example.internal",
          port=3000),
    _http("Airflow REST API (ModelOps triggers)", "modelops_airflow_api", "airflow_api", "AirflowApiHook",
          host="airflow-api-server.example.internal", port=8080, login="API user", password="Password"),
]


def get_provider_info() -> dict[str, Any]:
    """What ``airflow providers list`` / ``get`` show and the connection form renders."""
    from modelops import __version__

    return {
        "package-name": PACKAGE,
        "name": INTEGRATION,
        "description": "MLflow registry to optimized, benchmarked, progressively rolled-out NVIDIA Triton "
        "deployments: DAGs, hooks and operators.",
        "versions": [__version__],
        "hooks": [{"integration-name": INTEGRATION,
                   "python-modules": [f"modelops_airflow.hooks.{m}" for m in
                                      ("mlflow", "triton", "s3", "gateway", "prometheus", "openwebui", "grafana",
                                       "airflow_api")]}],
        "connection-types": CONNECTION_TYPES,
        "extra-links": [f"modelops_airflow.links.{name}" for name in
                        ("MlflowRunLink", "RunReportLink", "TritonModelLink", "GatewayModelLink", "GrafanaDashboardLink")],
        "task-decorators": [
            {"name": "modelops", "class-name": "modelops_airflow.decorators.modelops_task"},
            {"name": "modelops_serving", "class-name": "modelops_airflow.decorators.modelops_serving_task"},
        ],
        "plugins": [{"name": "modelops", "plugin-class": "modelops_airflow.plugin.ModelOpsPlugin"}],
    }
