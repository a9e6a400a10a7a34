"""The four services of the embedded stack: command line, environment, preparation and health check.

SeaweedFS (S3) -> MLflow -> Triton -> Airflow, each a real server bound to 127.0.0.1. Nothing here imports
Airflow, MLflow or Triton: the stack only spawns their binaries and talks HTTP (and boto3 for S3).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelops.settings import Settings
from modelops.local.stack import airflow_home
from modelops.local.stack.endpoints import (
    build_status,
    client_env,
    mlflow_url,
    s3_endpoint,
    s3_env,
    triton_repository,
)
from modelops.local.stack.state import HOST, StackError, StackState, write_private

# Variables of the caller's environment that must not leak into a service (they would point it at
# another stack, another venv or another Airflow home). MODELOPS_* settings are passed through.
BENCHMARK_POOL = "modelops_benchmark"  # Airflow pool (1 slot) of the DAGs' benchmark tasks on this stack
_SCRUBBED_PREFIXES = ("AIRFLOW_", "AIRFLOW__", "MLFLOW_", "AWS_")
_SCRUBBED_NAMES = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "CONDA_PREFIX", "LD_LIBRARY_PATH")


@dataclass
class Context:
    """What a service definition needs: the stack state and the installation settings."""

    state: StackState
    settings: Settings

    @property
    def status(self) -> dict[str, Any]:
        return build_status(self.state, self.settings, running={})

    @property
    def orchestrator_bin(self) -> Path:
        """bin/ of the orchestrator venv (weed, mlflow, airflow): MODELOPS_ORCHESTRATOR_BIN, <repo>/.venv/bin
        or the running interpreter's bin/."""
        explicit = self.settings.stack.orchestrator_bin
        if explicit is not None:
            return explicit
        repo_venv = self.settings.repo_root / ".venv" / "bin"
        return repo_venv if (repo_venv / "airflow").exists() else Path(sys.executable).parent

    def binary(self, name: str) -> Path:
        path = self.orchestrator_bin / name
        if not path.exists():
            raise StackError(f"{name} not found at {path}; install the orchestrator environment (requirements.txt)")
        return path

    def base_env(self) -> dict[str, str]:
        """The caller's environment minus stack-sensitive variables, plus MODELOPS_STACK_DIR/PORT_OFFSET."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(_SCRUBBED_PREFIXES) and key not in _SCRUBBED_NAMES
        }
        env["MODELOPS_STACK_DIR"] = str(self.state.stack_dir)
        env["MODELOPS_PORT_OFFSET"] = str(self.state.port_offset)
        return env


@dataclass(frozen=True)
class ServiceSpec:
    """How to run and probe one service."""

    name: str
    ports: tuple[str, ...]
    requires: tuple[str, ...]
    timeout_s: float
    command: Callable[[Context], list[str]]
    env: Callable[[Context], dict[str, str]]
    health: Callable[[Context], bool]
    prepare: Callable[[Context], None]
    stop_grace_s: float = 15.0  # SIGTERM -> SIGKILL
    configure: Callable[[Context], None] | None = None  # after healthy, on every `up` (idempotent)


# -- HTTP probing -----------------------------------------------------------------------------------
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never proxy 127.0.0.1


def http(
    method: str, url: str, body: Any = None, timeout: float = 3.0, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """One HTTP request; returns (status, body) for any status, raises only on connection errors."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {**({"Content-Type": "application/json"} if data is not None else {}), **(headers or {})}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _path_with(*dirs: Path) -> str:
    return os.pathsep.join([*(str(d) for d in dirs), os.environ.get("PATH", "/usr/bin:/bin")])


# -- SeaweedFS --------------------------------------------------------------------------------------
def _buckets(ctx: Context) -> list[str]:
    s = ctx.settings
    return [s.mlflow_bucket, s.artifacts_bucket, s.triton_bucket]


def _identities_file(ctx: Context) -> Path:
    return ctx.state.stack_dir / "config" / "s3-identities.json"


def _seaweed_prepare(ctx: Context) -> None:
    creds = ctx.state.credentials
    identities = {
        "identities": [
            {
                "name": "modelops",
                "credentials": [{"accessKey": creds.s3_access_key, "secretKey": creds.s3_secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    write_private(_identities_file(ctx), json.dumps(identities, indent=2) + "\n")
    (ctx.state.stack_dir / "seaweedfs").mkdir(parents=True, exist_ok=True)


def _seaweed_command(ctx: Context) -> list[str]:
    p = ctx.state.ports
    return [
        str(ctx.binary("weed")),
        "mini",
        f"-dir={ctx.state.stack_dir / 'seaweedfs'}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-s3.port={p['s3']}",
        f"-s3.port.grpc={p['s3_grpc']}",
        f"-s3.config={_identities_file(ctx)}",
        f"-bucket={','.join(_buckets(ctx))}",
        f"-master.port={p['seaweedfs_master']}",
        f"-master.port.grpc={p['seaweedfs_master_grpc']}",
        f"-volume.port={p['seaweedfs_volume']}",
        f"-volume.port.grpc={p['seaweedfs_volume_grpc']}",
        f"-filer.port={p['seaweedfs_filer']}",
        f"-filer.port.grpc={p['seaweedfs_filer_grpc']}",
        f"-admin.port={p['seaweedfs_admin']}",
        f"-admin.port.grpc={p['seaweedfs_admin_grpc']}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",
    ]


def s3_client(ctx: Context) -> Any:
    """A boto3 S3 client with the stack's credentials (path-style, short timeouts)."""
    import boto3
    from botocore.config import Config

    creds = ctx.state.credentials
    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint(ctx.state),
        aws_access_key_id=creds.s3_access_key,
        aws_secret_access_key=creds.s3_secret_key,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, connect_timeout=2, read_timeout=5, retries={"max_attempts": 1}),
    )


def _seaweed_health(ctx: Context) -> bool:
    client = s3_client(ctx)
    present = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for bucket in _buckets(ctx):
        if bucket not in present:
            client.create_bucket(Bucket=bucket)
    return True


# -- MLflow -----------------------------------------------------------------------------------------
def _mlflow_prepare(ctx: Context) -> None:
    (ctx.state.stack_dir / "mlflow").mkdir(parents=True, exist_ok=True)


def _mlflow_command(ctx: Context) -> list[str]:
    return [
        str(ctx.binary("mlflow")),
        "server",
        "--backend-store-uri",
        f"sqlite:///{ctx.state.stack_dir / 'mlflow' / 'mlflow.db'}",
        "--artifacts-destination",
        f"s3://{ctx.settings.mlflow_bucket}/",
        "--host",
        HOST,
        "--port",
        str(ctx.state.ports["mlflow"]),
        "--workers",
        "1",
    ]


def _mlflow_env(ctx: Context) -> dict[str, str]:
    return {
        **ctx.base_env(),
        **s3_env(ctx.status),
        "PATH": _path_with(ctx.orchestrator_bin),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": ctx.state.credentials.mlflow_webhook_encryption_key,
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
    }


def _mlflow_health(ctx: Context) -> bool:
    base = mlflow_url(ctx.state)
    if http("GET", f"{base}/health")[0] != 200:
        return False
    return http("GET", f"{base}/api/2.0/mlflow/experiments/search?max_results=1")[0] == 200


# -- Triton -----------------------------------------------------------------------------------------
def worker_venv(settings: Settings) -> Path:
    """The worker virtualenv (``worker_python``'s bin/..; symlinks deliberately not resolved)."""
    return Path(os.path.abspath(settings.worker_python)).parent.parent


def _triton_prepare(ctx: Context) -> None:
    binary = ctx.settings.tritonserver_bin
    if not binary.exists():
        raise StackError(f"tritonserver not found at {binary}; run scripts/install_tools.sh")
    (ctx.state.stack_dir / "triton").mkdir(parents=True, exist_ok=True)


def _triton_command(ctx: Context) -> list[str]:
    p = ctx.state.ports
    return [
        str(ctx.settings.tritonserver_bin),
        f"--model-repository={triton_repository(ctx.state, ctx.settings)}",
        "--model-control-mode=explicit",
        f"--http-address={HOST}",
        f"--http-port={p['triton_http']}",
        f"--grpc-address={HOST}",
        f"--grpc-port={p['triton_grpc']}",
        f"--metrics-address={HOST}",
        f"--metrics-port={p['triton_metrics']}",
        f"--backend-directory={ctx.settings.triton_backends_dir}",
        "--strict-readiness=false",
        "--exit-on-error=false",
        "--exit-timeout-secs=10",
    ]


def _triton_env(ctx: Context) -> dict[str, str]:
    venv = worker_venv(ctx.settings)
    site_packages = sorted(venv.glob("lib/python3*/site-packages"))
    ld_path = [x for x in (ctx.settings.tool_library_path, os.environ.get("LD_LIBRARY_PATH", "")) if x]
    return {
        **ctx.base_env(),
        **s3_env(ctx.status),
        "LD_LIBRARY_PATH": os.pathsep.join(ld_path),
        # The python backend stub finds its interpreter prefix through `python3` on PATH, so the worker
        # venv first on PATH is what gives python models torch/onnxruntime/numpy<2 (PYTHONPATH is ignored
        # by the 2.51 stub; it is set for tools the models may spawn).
        "PATH": _path_with(venv / "bin"),
        "VIRTUAL_ENV": str(venv),
        "PYTHONPATH": os.pathsep.join([*(str(p) for p in site_packages), str(ctx.settings.repo_root)]),
    }


def _triton_health(ctx: Context) -> bool:
    base = f"http://{HOST}:{ctx.state.ports['triton_http']}"
    if http("GET", f"{base}/v2/health/live")[0] != 200:
        return False
    return http("POST", f"{base}/v2/repository/index", body={})[0] == 200


# -- Airflow ----------------------------------------------------------------------------------------
def _airflow_prepare(ctx: Context) -> None:
    airflow_home.prepare(ctx.state, ctx.settings.repo_root, ctx.binary("airflow"))


def _airflow_command(ctx: Context) -> list[str]:
    return [str(ctx.binary("airflow")), "standalone"]


def airflow_env(ctx: Context) -> dict[str, str]:
    """Environment of ``airflow standalone`` (and so of its scheduler, workers and tasks)."""
    state, creds = ctx.state, ctx.state.credentials
    home = airflow_home.airflow_home(state)
    api = airflow_home.api_url(state)
    return {
        **ctx.base_env(),
        **client_env(ctx.status),  # AWS_*, MLFLOW_TRACKING_URI, AIRFLOW_CONN_*, MODELOPS_STACK_DIR
        "PATH": _path_with(airflow_home.shim_dir(state), ctx.orchestrator_bin),
        "PYTHONPATH": str(ctx.settings.repo_root),
        "MODELOPS_EXECUTION": "local",
        "MODELOPS_BENCHMARK_POOL": BENCHMARK_POOL,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW_CONFIG": str(home / "airflow.cfg"),
        "AIRFLOW__CORE__PARALLELISM": str(airflow_home.PARALLELISM),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__FERNET_KEY": creds.airflow_fernet_key,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{creds.airflow_username}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(airflow_home.passwords_file(state)),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
        "AIRFLOW__API__HOST": HOST,
        "AIRFLOW__API__PORT": str(state.ports["airflow"]),
        "AIRFLOW__API__SECRET_KEY": creds.airflow_api_secret_key,
        "AIRFLOW__API_AUTH__JWT_SECRET": creds.airflow_jwt_secret,
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(state.ports["airflow_worker_log"]),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(state.ports["airflow_trigger_log"]),
    }


def airflow_token(ctx: Context) -> str | None:
    """A JWT from ``POST /auth/token`` with the generated admin password, or None."""
    creds = ctx.state.credentials
    body = {"username": creds.airflow_username, "password": creds.airflow_password}
    code, raw = http("POST", f"{airflow_home.api_url(ctx.state)}/auth/token", body=body)
    if code not in (200, 201):
        return None
    return json.loads(raw).get("access_token")


def _airflow_configure(ctx: Context) -> None:
    """Create the benchmark pool (one slot) the DAGs' benchmark tasks run in; keep it if it exists."""
    token = airflow_token(ctx)
    if token is None:
        raise StackError("airflow: no API token with the generated admin password")
    body = {"name": BENCHMARK_POOL, "slots": 1, "include_deferred": False,
            "description": "modelops: one perf_analyzer benchmark at a time (runs would measure each other)"}
    code, raw = http("POST", f"{airflow_home.api_url(ctx.state)}/api/v2/pools", body=body, timeout=10.0,
                     headers={"Authorization": f"Bearer {token}"})
    if code not in (200, 201, 409):  # 409: it exists (a restart, or an operator changed its slots)
        raise StackError(f"airflow: creating pool {BENCHMARK_POOL!r} failed: HTTP {code} {raw[:200]!r}")


def _airflow_health(ctx: Context) -> bool:
    code, raw = http("GET", f"{airflow_home.api_url(ctx.state)}/api/v2/monitor/health")
    if code != 200:
        return False
    health = json.loads(raw)
    required = ["metadatabase", "scheduler", *(["dag_processor"] if "dag_processor" in health else [])]
    if any((health.get(c) or {}).get("status") != "healthy" for c in required):
        return False
    return airflow_token(ctx) is not None


SPECS: dict[str, ServiceSpec] = {
    "s3": ServiceSpec(
        name="seaweedfs",
        ports=(
            "s3",
            "s3_grpc",
            "seaweedfs_master",
            "seaweedfs_master_grpc",
            "seaweedfs_volume",
            "seaweedfs_volume_grpc",
            "seaweedfs_filer",
            "seaweedfs_filer_grpc",
            "seaweedfs_admin",
            "seaweedfs_admin_grpc",
        ),
        requires=(),
        timeout_s=30,
        command=_seaweed_command,
        env=Context.base_env,
        health=_seaweed_health,
        prepare=_seaweed_prepare,
        stop_grace_s=30.0,  # its filer can take ~12 s to flush on SIGTERM; SIGKILL risks the metadata store
    ),
    "mlflow": ServiceSpec(
        name="mlflow",
        ports=("mlflow",),
        requires=("s3",),
        timeout_s=90,
        command=_mlflow_command,
        env=_mlflow_env,
        health=_mlflow_health,
        prepare=_mlflow_prepare,
    ),
    "triton": ServiceSpec(
        name="triton",
        ports=("triton_http", "triton_grpc", "triton_metrics"),
        requires=("s3",),
        timeout_s=60,
        command=_triton_command,
        env=_triton_env,
        health=_triton_health,
        prepare=_triton_prepare,
    ),
    "airflow": ServiceSpec(
        name="airflow",
        # The log-server ports are configured (with the offset) but not bound: see airflow_home.py.
        ports=("airflow",),
        requires=("s3", "mlflow", "triton"),
        timeout_s=180,
        command=_airflow_command,
        env=airflow_env,
        health=_airflow_health,
        prepare=_airflow_prepare,
        configure=_airflow_configure,
    ),
}
