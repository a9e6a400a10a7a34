"""The Airflow service of the embedded stack: its components under a restarting supervisor (not ``airflow
standalone``, which never restarts a dead scheduler), its environment, health and benchmark pool."""

from __future__ import annotations

import json

from modelops.local.stack import airflow_home, process
from modelops.local.stack.endpoints import client_env
from modelops.local.stack.service_spec import Context, _path_with, http
from modelops.local.stack.state import HOST, StackError

BENCHMARK_POOL = "modelops_benchmark"  # Airflow pool (1 slot) of the DAGs' benchmark tasks on this stack


def _airflow_prepare(ctx: Context) -> None:
    airflow_home.prepare(ctx.state, ctx.settings.repo_root, ctx.binary("airflow"))
    _prepare_step_user(ctx)


def _prepare_step_user(ctx: Context) -> None:
    """As root: the user Airflow's step tasks run model code as, able to start the worker interpreter (say so once)."""
    from modelops.step_user import StepUserError, ensure_can_run, step_user

    try:
        user = step_user(ctx.settings.step_user)
        if user is None:
            return
        granted = ensure_can_run(user, ctx.settings.worker_python) if ctx.settings.worker_python.exists() else []
    except StepUserError as exc:  # the step tasks fail with the same line; the rest of the stack is fine
        process.say(f"heavy steps cannot run as their own user: {exc}")
        return
    if granted:
        process.say(f"steps run as {user.name} (uid {user.uid}); it may search {', '.join(granted)} (POSIX ACL)")


def _airflow_command(ctx: Context) -> list[str]:
    # the supervisor runs `airflow db migrate`, then each component from PATH (the shim), restarting the dead ones
    return [str(ctx.binary("python")), "-m", "modelops.local.stack.airflow_supervisor"]


def airflow_env(ctx: Context) -> dict[str, str]:
    """Environment of the Airflow supervisor (and so of its scheduler, workers and tasks)."""
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
    body = {
        "name": BENCHMARK_POOL,
        "slots": 1,
        "include_deferred": False,
        "description": "modelops: one perf_analyzer benchmark at a time (runs would measure each other)",
    }
    code, raw = http(
        "POST",
        f"{airflow_home.api_url(ctx.state)}/api/v2/pools",
        body=body,
        timeout=10.0,
        headers={"Authorization": f"Bearer {token}"},
    )
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
