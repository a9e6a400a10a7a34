"""The eight services of the embedded stack: command line, environment, preparation and health check.

SeaweedFS (S3) -> MLflow -> Triton -> serving gateway -> Prometheus -> reconciler -> Open WebUI -> Airflow
(Prometheus and the reconciler in :mod:`~modelops.local.stack.monitoring_service`, Open WebUI (optional) in
:mod:`~modelops.local.stack.openwebui_service`, Airflow in :mod:`~modelops.local.stack.airflow_service`),
each server bound to 127.0.0.1. Nothing here imports Airflow, MLflow or Triton: the stack only spawns their
binaries and talks HTTP (and boto3 for S3).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from modelops.local.stack import auth, process
from modelops.local.stack.airflow_service import (
    BENCHMARK_POOL,
    _airflow_command,
    _airflow_configure,
    _airflow_health,
    _airflow_prepare,
    airflow_env,
    airflow_token,
)
from modelops.local.stack.endpoints import (
    gateway_keys_db,
    gateway_url,
    mlflow_url,
    s3_endpoint,
    s3_env,
    triton_repository,
)
from modelops.local.stack.monitoring_service import (
    _prometheus_command,
    _prometheus_health,
    _prometheus_prepare,
    _reconciler_command,
    _reconciler_env,
    _reconciler_health,
    _reconciler_prepare,
)
from modelops.local.stack.openwebui_service import (
    _openwebui_command,
    _openwebui_configure,
    _openwebui_env,
    _openwebui_health,
    _openwebui_prepare,
)
from modelops.local.stack.service_spec import Context, ServiceSpec, _path_with, http
from modelops.local.stack.state import HOST, StackError
from modelops.process_tree import remove_orphan_python_shm
from modelops.serving.triton.admin import ADMIN_HEADER, admin_headers, restricted_args
from modelops.settings import Settings

# the stack manager and the tests import these from here; they live in service_spec / airflow_service
__all__ = ["BENCHMARK_POOL", "SPECS", "Context", "ServiceSpec", "airflow_env", "airflow_token", "http", "s3_client"]


# -- SeaweedFS --------------------------------------------------------------------------------------
def _buckets(ctx: Context) -> list[str]:
    s = ctx.settings
    return [s.mlflow_bucket, s.artifacts_bucket, s.triton_bucket]


def _identities_file(ctx: Context) -> Path:
    return ctx.state.stack_dir / "config" / "s3-identities.json"


def _seaweed_prepare(ctx: Context) -> None:
    # one identity per role, each limited to its buckets (auth.s3_actions)
    auth.write_s3_identities(_identities_file(ctx), ctx.state.credentials, ctx.settings)
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


def _seaweed_env(ctx: Context) -> dict[str, str]:
    return {**ctx.base_env(), **auth.seaweedfs_jwt_env(ctx.state.credentials)}  # filer/volume ports: JWT only


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
    auth.write_mlflow_auth_config(ctx.state)


def _mlflow_command(ctx: Context) -> list[str]:
    return [
        str(ctx.binary("mlflow")),
        "server",
        "--app-name",
        "basic-auth",  # users and grants: modelops.local.stack.auth
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
        **s3_env(ctx.status, "mlflow"),
        **auth.mlflow_server_env(ctx.state),
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
    url = f"{base}/api/2.0/mlflow/experiments/search?max_results=1"
    code = http("GET", url, headers=auth.mlflow_admin_headers(ctx.state))[0]
    if code == 401:  # the auth app creates its admin before serving: a refusal now is a credentials mismatch
        raise StackError(
            f"mlflow refuses the stack's admin login: {ctx.state.stack_dir / 'mlflow' / 'basic_auth.db'} holds "
            "other credentials than stack.json (was stack.json regenerated?); stop the stack and delete that file"
        )
    return code == 200


def _mlflow_configure(ctx: Context) -> None:
    """The ``airflow`` and ``gateway`` users and their grants (idempotent)."""
    auth.configure_mlflow_users(ctx.state, mlflow_url(ctx.state), http)


# -- Triton -----------------------------------------------------------------------------------------
def worker_venv(settings: Settings) -> Path:
    """The worker virtualenv (``worker_python``'s bin/..; symlinks deliberately not resolved)."""
    return Path(os.path.abspath(settings.worker_python)).parent.parent


def _triton_prepare(ctx: Context) -> None:
    if not (binary := ctx.settings.tritonserver_bin).exists():
        raise StackError(f"tritonserver not found at {binary}; run scripts/install_tools.sh")
    (ctx.state.stack_dir / "triton").mkdir(parents=True, exist_ok=True)
    # Triton copies each S3 model it loads to a folderXXXXXX here (TRITON_AWS_MOUNT_DIRECTORY, /tmp by default) and
    # its python stubs' arenas to /dev/shm; a killed Triton leaves both behind, so each start (none is running then)
    # begins with this directory empty and those files removed
    shutil.rmtree(mount := triton_mount_dir(ctx.state.stack_dir), ignore_errors=True)
    mount.mkdir(mode=0o700)
    remove_orphan_python_shm()
    ctx.state.rotate_triton_admin_token()  # a token read off an earlier Triton's command line is dead



def triton_mount_dir(stack_dir: Path) -> Path:
    return stack_dir / "triton" / "s3-mount"


def _triton_command(ctx: Context) -> list[str]:
    p = ctx.state.ports
    return [
        str(ctx.settings.tritonserver_bin),
        f"--model-repository={triton_repository(ctx.state, ctx.settings)}",
        "--model-control-mode=explicit",
        "--disable-auto-complete-config",  # publish renders complete configs; saves a stub process per load
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
        # model control, config, shared memory, trace and logging need the generated admin header
        *restricted_args(ADMIN_HEADER, ctx.state.credentials.triton_admin_token),
    ]


def _triton_env(ctx: Context) -> dict[str, str]:
    venv = worker_venv(ctx.settings)
    site_packages = sorted(venv.glob("lib/python3*/site-packages"))
    ld_path = [x for x in (ctx.settings.tool_library_path, os.environ.get("LD_LIBRARY_PATH", "")) if x]
    return {
        **ctx.base_env(),
        **s3_env(ctx.status, "serving"),  # read-only on the Triton bucket
        "TRITON_AWS_MOUNT_DIRECTORY": str(triton_mount_dir(ctx.state.stack_dir)),
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
    headers = admin_headers(ADMIN_HEADER, ctx.state.credentials.triton_admin_token)
    return http("POST", f"{base}/v2/repository/index", body={}, headers=headers)[0] == 200


def _triton_configure(ctx: Context) -> None:
    """Load every routed deployment that is not ready (the routes files are the desired state)."""
    from modelops.serving.reconcile import reconcile_stack

    try:
        reconcile_stack(ctx.status, say=process.say)
    except Exception as exc:  # noqa: BLE001 - the stack is up; say why serving is not yet restored
        process.say(f"reconcile of the routed deployments failed: {str(exc).splitlines()[0] if str(exc) else exc!r}")


# -- serving gateway --------------------------------------------------------------------------------
def _gateway_prepare(ctx: Context) -> None:
    keys_dir = gateway_keys_db(ctx.state, ctx.settings).parent
    keys_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)  # the key store and its pepper


def _gateway_command(ctx: Context) -> list[str]:
    # the orchestrator environment's interpreter (uvicorn, httpx, boto3, prometheus-client live there)
    return [str(ctx.binary("python")), "-m", "modelops.serving.gateway", "--host", HOST,
            "--port", str(ctx.state.ports["gateway"]), "--log-level", "info"]


def _gateway_env(ctx: Context) -> dict[str, str]:
    status = ctx.status
    return {
        **ctx.base_env(),
        **s3_env(status, "serving"),  # read-only on the Triton bucket
        "PATH": _path_with(ctx.orchestrator_bin),
        "PYTHONPATH": str(ctx.settings.repo_root),
        "MODELOPS_TRITON_BUCKET": ctx.settings.triton_bucket,
        "MODELOPS_GATEWAY_TRITON_URL": status["triton"]["http"],
        "MODELOPS_GATEWAY_KEYS_DB": str(gateway_keys_db(ctx.state, ctx.settings)),
        "MODELOPS_GATEWAY_MLFLOW_URL": status["mlflow"]["url"],  # /v1/models descriptions, as MLflow's reader
        "MODELOPS_GATEWAY_MLFLOW_USERNAME": "gateway",
        "MODELOPS_GATEWAY_MLFLOW_PASSWORD": auth.mlflow_password(ctx.state.credentials, "gateway"),
    }


def _gateway_health(ctx: Context) -> bool:
    return http("GET", f"{gateway_url(ctx.state)}/v2/health/live")[0] == 200


SPECS: dict[str, ServiceSpec] = {
    "s3": ServiceSpec(
        name="seaweedfs",
        ports=("s3", "s3_grpc", "seaweedfs_master", "seaweedfs_master_grpc", "seaweedfs_volume", "seaweedfs_volume_grpc",
               "seaweedfs_filer", "seaweedfs_filer_grpc", "seaweedfs_admin", "seaweedfs_admin_grpc"),
        requires=(),
        timeout_s=30,
        command=_seaweed_command,
        env=_seaweed_env,
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
        configure=_mlflow_configure,
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
        configure=_triton_configure,
    ),
    "gateway": ServiceSpec(
        name="gateway",
        ports=("gateway",),
        requires=("s3", "triton"),
        timeout_s=30,
        command=_gateway_command,
        env=_gateway_env,
        health=_gateway_health,
        prepare=_gateway_prepare,
    ),
    "prometheus": ServiceSpec(
        name="prometheus",
        ports=("prometheus",),
        requires=(),  # it scrapes Triton and the gateway when they are up; a restart of either keeps its TSDB
        timeout_s=30,
        command=_prometheus_command,
        env=Context.base_env,
        health=_prometheus_health,
        prepare=_prometheus_prepare,
    ),
    "reconciler": ServiceSpec(
        name="reconciler",
        ports=(),
        requires=("s3", "triton"),
        timeout_s=30,
        command=_reconciler_command,
        env=_reconciler_env,
        health=_reconciler_health,
        prepare=_reconciler_prepare,
        stop_grace_s=5.0,
    ),
    "openwebui": ServiceSpec(
        name="openwebui",
        ports=("openwebui",),
        requires=("s3", "mlflow", "gateway"),  # its models and embeddings come from the gateway, the list from MLflow
        timeout_s=240,  # ~15-25 s on an idle 2-core host, much more while Triton loads models
        command=_openwebui_command,
        env=_openwebui_env,
        health=_openwebui_health,
        prepare=_openwebui_prepare,
        configure=_openwebui_configure,
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
