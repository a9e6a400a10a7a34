"""Endpoints of a stack as plain data: the status dict, Airflow connections and client environments.

Pure functions of the stack state: nothing here starts or probes a process.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelops.local.stack.auth import MLFLOW_ADMIN, mlflow_users_status, s3_identities_status, use_mlflow_credentials
from modelops.local.stack.state import HOST, StackState
from modelops.serving.triton.admin import ADMIN_HEADER
from modelops.settings import Settings
from modelops.storage import S3Config

# Service keys, in start order; the label names the process in messages and its log file.
SERVICES: tuple[str, ...] = (
    "s3", "mlflow", "triton", "gateway", "prometheus", "reconciler", "openwebui", "airflow",
)
LABELS: dict[str, str] = {
    "s3": "seaweedfs", "mlflow": "mlflow", "triton": "triton", "gateway": "gateway", "prometheus": "prometheus",
    "reconciler": "reconciler", "openwebui": "openwebui", "airflow": "airflow",
}
# services `up` skips with this hint when their status says "installed": false (a stack works without them)
OPTIONAL_SERVICES: dict[str, str] = {"openwebui": "`make openwebui` installs it in .venv-openwebui"}
RECONCILE_INTERVAL_S = 10.0  # the reconciler service's `modelops serving reconcile --watch` period
REGION = "us-east-1"


def log_path(state: StackState, service: str) -> Path:
    """``<stack>/logs/<label>.log``."""
    return state.logs_dir / f"{LABELS[service]}.log"


def s3_endpoint(state: StackState) -> str:
    return f"http://{HOST}:{state.ports['s3']}"


def mlflow_url(state: StackState) -> str:
    return f"http://{HOST}:{state.ports['mlflow']}"


def gateway_url(state: StackState) -> str:
    """The serving gateway's base URL (``http://127.0.0.1:<9000 + offset>``)."""
    return f"http://{HOST}:{state.ports['gateway']}"


def prometheus_url(state: StackState) -> str:
    """The stack's Prometheus (``http://127.0.0.1:<9090 + offset>``)."""
    return f"http://{HOST}:{state.ports['prometheus']}"


def openwebui_url(state: StackState) -> str:
    """The stack's Open WebUI (``http://127.0.0.1:<3000 + offset>``)."""
    return f"http://{HOST}:{state.ports['openwebui']}"


def openwebui_venv(settings: Settings) -> Path:
    """Open WebUI's own virtualenv (``make openwebui``): ``<repo>/.venv-openwebui``."""
    return settings.repo_root / ".venv-openwebui"


def prometheus_config(state: StackState) -> Path:
    """``<stack dir>/config/prometheus.yml``, rendered by ``stack up``."""
    return state.stack_dir / "config" / "prometheus.yml"


def gateway_keys_db(state: StackState, settings: Settings) -> Path:
    """The gateway's key store: ``MODELOPS_GATEWAY_KEYS_DB`` or ``<stack dir>/gateway/keys.db``."""
    return settings.gateway.keys_db or state.stack_dir / "gateway" / "keys.db"


def triton_repository(state: StackState, settings: Settings) -> str:
    """The S3 model repository in Triton's ``s3://host:port/bucket`` form."""
    return f"s3://{HOST}:{state.ports['s3']}/{settings.triton_bucket}"


def build_status(state: StackState, settings: Settings, running: Mapping[str, bool]) -> dict[str, Any]:
    """The status dict (``modelops stack status --json``) of ``state``; ``running`` maps service -> alive."""
    creds = state.credentials
    ports = state.ports

    def proc(service: str) -> dict[str, Any]:
        rec = state.services.get(service)
        alive = bool(running.get(service))
        recorded = bool(rec and rec.pid)
        return {
            "pid": rec.pid if rec and alive else None,
            "log": str(log_path(state, service)),
            "running": alive,
            # "exited": a pid is recorded but that process is gone (crashed or killed outside the stack).
            "state": "running" if alive else ("exited" if recorded else "stopped"),
            "started_at": rec.started_at if rec and alive else None,
        }

    return {
        "stack_dir": str(state.stack_dir),
        "port_offset": state.port_offset,
        "ports": dict(ports),
        "s3": {
            "endpoint": s3_endpoint(state),
            "port": ports["s3"],
            "access_key": creds.s3_access_key,
            "secret_key": creds.s3_secret_key,
            "region": REGION,
            "artifacts_bucket": settings.artifacts_bucket,
            "mlflow_bucket": settings.mlflow_bucket,
            "triton_bucket": settings.triton_bucket,
            "data_dir": str(state.stack_dir / "seaweedfs"),
            # the keys above are the admin identity; each service and task gets one of these instead
            "identities": s3_identities_status(creds),
            **proc("s3"),
        },
        "mlflow": {
            "url": mlflow_url(state),
            "port": ports["mlflow"],
            "backend_store_uri": f"sqlite:///{state.stack_dir / 'mlflow' / 'mlflow.db'}",
            "artifacts_destination": f"s3://{settings.mlflow_bucket}/",
            "username": MLFLOW_ADMIN,  # basic auth: the stack's MLflow admin
            "password": creds.mlflow_admin_password,
            "users": mlflow_users_status(creds),  # airflow (MANAGE on all models, experiments), gateway (READ)
            **proc("mlflow"),
        },
        "triton": {
            "http": f"http://{HOST}:{ports['triton_http']}",
            "grpc": f"{HOST}:{ports['triton_grpc']}",
            "metrics": f"http://{HOST}:{ports['triton_metrics']}/metrics",
            "http_port": ports["triton_http"],
            "grpc_port": ports["triton_grpc"],
            "metrics_port": ports["triton_metrics"],
            "repository": triton_repository(state, settings),
            "admin_header": ADMIN_HEADER,
            "admin_token": creds.triton_admin_token,  # this Triton start's (rotated at each start)
            "admin_token_file": str(state.triton_admin_token_file),
            **proc("triton"),
        },
        "gateway": {
            "url": gateway_url(state),
            "port": ports["gateway"],
            "metrics": f"{gateway_url(state)}/metrics",
            "keys_db": str(gateway_keys_db(state, settings)),
            "routes": settings.gateway_routes_uri,
            **proc("gateway"),
        },
        "prometheus": {
            "url": prometheus_url(state),
            "port": ports["prometheus"],
            "config": str(prometheus_config(state)),
            "data_dir": str(state.stack_dir / "prometheus"),
            **proc("prometheus"),
        },
        "reconciler": {"interval_s": RECONCILE_INTERVAL_S, **proc("reconciler")},
        "openwebui": {
            "url": openwebui_url(state),
            "port": ports["openwebui"],
            "admin_email": creds.openwebui_admin_email,
            "admin_password": creds.openwebui_admin_password,
            "data_dir": str(state.stack_dir / "openwebui"),
            "installed": (openwebui_venv(settings) / "bin" / "open-webui").exists(),
            **proc("openwebui"),
        },
        "airflow": {
            "url": f"http://{HOST}:{ports['airflow']}",
            "port": ports["airflow"],
            "username": creds.airflow_username,
            "password": creds.airflow_password,
            "home": str(state.stack_dir / "airflow"),
            **proc("airflow"),
        },
    }


def airflow_connections(status: Mapping[str, Any]) -> dict[str, str]:
    """``AIRFLOW_CONN_*`` variables (Airflow's JSON connection format) for mlflow, s3, triton, gateway, prometheus,
    openwebui and airflow_api.

    ``mlflow_default``/``triton_default``/``gateway_default``/``prometheus_default`` are ``http`` connections (``HttpHook``), ``s3_default`` an ``aws`` one
    (``S3Hook``: keys as login/password, ``endpoint_url`` and path-style addressing in the extra), and
    ``mlflow_default`` logs in as MLflow's ``airflow`` user; ``s3_default`` has the ``pipeline`` S3 identity and
    ``s3_worker`` the ``worker`` one (the heavy steps, which load untrusted model files, get only that);
    ``airflow_api_default`` names the API server and its user for runs created through the REST API;
    ``openwebui_default`` Open WebUI with its admin as login/password.
    ``triton_default`` carries Triton's admin header and the file of its token (rotated at every Triton start, read
    at each use) in the extras ``admin_header``/``admin_token_file``: no token in Airflow's environment.
    """
    s3, mlflow, triton, airflow = status["s3"], status["mlflow"], status["triton"], status["airflow"]
    airflow_user = (mlflow.get("users") or {}).get("airflow") or {}
    mlflow_login = {"login": airflow_user["username"], "password": airflow_user["password"]} if airflow_user else {}

    def s3_conn(identity: str) -> dict[str, Any]:
        cfg = s3_config(status, identity)
        return {"conn_type": "aws", "login": cfg.access_key, "password": cfg.secret_key,
                "extra": {"endpoint_url": s3["endpoint"], "region_name": s3.get("region", REGION),
                          "config_kwargs": {"s3": {"addressing_style": "path"}}}}

    # Triton's admin header: TritonHook sends it on model-control calls only (never as a plain header)
    source = "admin_token_file" if triton.get("admin_token_file") else "admin_token"  # the file: no token in the env
    admin = {key: triton[key] for key in ("admin_header", source)} if triton.get("admin_token") else {}
    conns = {
        "AIRFLOW_CONN_MLFLOW_DEFAULT": {"conn_type": "modelops_mlflow", "host": HOST, "port": mlflow["port"], "schema": "http",
                                        **mlflow_login},
        "AIRFLOW_CONN_S3_DEFAULT": s3_conn("pipeline"),
        "AIRFLOW_CONN_S3_WORKER": s3_conn("worker"),
        "AIRFLOW_CONN_TRITON_DEFAULT": {
            "conn_type": "modelops_triton",
            "host": HOST,
            "port": triton["http_port"],
            "schema": "http",
            "extra": {"grpc_port": triton["grpc_port"], "metrics_port": triton["metrics_port"], **admin},
        },
        "AIRFLOW_CONN_GATEWAY_DEFAULT": {"conn_type": "modelops_gateway", "host": HOST, "port": status["gateway"]["port"],
                                         "schema": "http"},
        "AIRFLOW_CONN_PROMETHEUS_DEFAULT": {"conn_type": "modelops_prometheus", "host": HOST, "port": status["prometheus"]["port"],
                                            "schema": "http"},
        **({"AIRFLOW_CONN_OPENWEBUI_DEFAULT": {
            "conn_type": "modelops_openwebui", "host": HOST, "port": status["openwebui"]["port"], "schema": "http",
            "login": status["openwebui"]["admin_email"], "password": status["openwebui"]["admin_password"],
            # the refresh task points Open WebUI's OpenAI connection at the gateway with Open WebUI's own key
            "extra": {"gateway_url": status["gateway"]["url"], "gateway_key": _openwebui_gateway_key(status)},
        }} if "openwebui" in status else {}),
        "AIRFLOW_CONN_AIRFLOW_API_DEFAULT": {
            "conn_type": "modelops_airflow_api",
            "host": HOST,
            "port": airflow["port"],
            "schema": "http",
            "login": airflow["username"],
            "password": airflow["password"],
        },
    }
    return {name: json.dumps(conn, sort_keys=True) for name, conn in conns.items()}


def openwebui_key_file(stack_dir: Path) -> Path:
    """``<stack dir>/config/openwebui-gateway.key``: Open WebUI's gateway key (mode 600, written when it starts)."""
    return Path(stack_dir) / "config" / "openwebui-gateway.key"


def _openwebui_gateway_key(status: Mapping[str, Any]) -> str:
    try:
        return openwebui_key_file(status["stack_dir"]).read_text().strip()
    except (OSError, KeyError):
        return ""


def s3_config(status: Mapping[str, Any], identity: str | None = None) -> S3Config:
    """The stack's S3 endpoint and credentials (for ``Storage(s3_config(status))``).

    Args:
        status: ``modelops stack status --json``.
        identity: one of ``modelops.local.stack.auth.S3_ROLES`` (mlflow, serving, worker, pipeline); None,
            or a status without identities (an older stack), gives the admin identity.
    """
    s3 = status["s3"]
    keys = (s3.get("identities") or {}).get(identity) if identity else None
    keys = keys or {"access_key": s3["access_key"], "secret_key": s3["secret_key"]}
    return S3Config(
        endpoint_url=s3["endpoint"],
        access_key=keys["access_key"],
        secret_key=keys["secret_key"],
        region=s3.get("region", REGION),
    )


def s3_env(status: Mapping[str, Any], identity: str | None = None) -> dict[str, str]:
    """AWS_* / MLFLOW_S3_ENDPOINT_URL variables for the stack's S3 (``identity``: see :func:`s3_config`)."""
    return s3_config(status, identity).as_env()


def client_env(status: Mapping[str, Any]) -> dict[str, str]:
    """Environment variables a client process needs to reach the stack described by ``status``.

    AWS_ENDPOINT_URL, MLFLOW_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION
    (and AWS_REGION) of the ``pipeline`` S3 identity, MLFLOW_TRACKING_URI with MLFLOW_TRACKING_USERNAME and
    MLFLOW_TRACKING_PASSWORD of MLflow's ``airflow`` user, the AIRFLOW_CONN_* JSON strings, MODELOPS_STACK_DIR
    and MODELOPS_PORT_OFFSET. Airflow runs with it; the admin logins are in ``status`` only.
    """
    mlflow_login: dict[str, str] = {}
    use_mlflow_credentials(status, "airflow", mlflow_login)
    return {
        **s3_env(status, "pipeline"),
        "MLFLOW_TRACKING_URI": status["mlflow"]["url"],
        **mlflow_login,
        **airflow_connections(status),
        "MODELOPS_STACK_DIR": str(status["stack_dir"]),
        "MODELOPS_PORT_OFFSET": str(status.get("port_offset", 0)),
    }
