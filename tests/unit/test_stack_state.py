"""Unit tests of the pure parts of modelops.local.stack: ports, credentials, state file, env and airflow.cfg rendering."""

from __future__ import annotations

import base64
import configparser
import json
import os
import socket
import stat
import sys
import time
from pathlib import Path

import pytest

from modelops.local.stack import airflow_home, manager, process
from modelops.local.stack.endpoints import build_status, client_env
from modelops.local.stack.state import (
    DEFAULT_PORTS,
    Credentials,
    PortBusyError,
    ServiceRecord,
    StackError,
    StackState,
    allocate_ports,
    busy_port_message,
    check_ports_free,
    port_in_use,
    port_offset_from_env,
)
from modelops.settings import REPO_ROOT, Settings


@pytest.fixture()
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("MODELOPS_STACK_DIR", str(tmp_path / "stack"))
    monkeypatch.delenv("MODELOPS_PORT_OFFSET", raising=False)
    return Settings.from_env()


@pytest.fixture()
def listener() -> int:
    """A port on 127.0.0.1 held by a listening socket for the test's duration."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


# -- ports ------------------------------------------------------------------------------------------
def test_default_ports_and_offset() -> None:
    assert allocate_ports(0)["s3"] == 8333
    shifted = allocate_ports(100)
    assert shifted == {name: port + 100 for name, port in DEFAULT_PORTS.items()}
    assert (shifted["mlflow"], shifted["triton_http"], shifted["airflow"]) == (5100, 8100, 8180)
    assert len(set(allocate_ports(0).values())) == len(DEFAULT_PORTS), "ports of one stack must be distinct"


def test_offset_100_stack_does_not_collide_with_default_stack() -> None:
    assert not set(allocate_ports(0).values()) & set(allocate_ports(100).values())


def test_offset_from_env() -> None:
    assert port_offset_from_env({}) == 0
    assert port_offset_from_env({"MODELOPS_PORT_OFFSET": " 100 "}) == 100
    with pytest.raises(StackError, match="must be an integer"):
        port_offset_from_env({"MODELOPS_PORT_OFFSET": "ten"})
    with pytest.raises(StackError, match="outside 1024-65535"):
        port_offset_from_env({"MODELOPS_PORT_OFFSET": "40000"})


def test_busy_port_detection_and_message(listener: int) -> None:
    assert port_in_use(listener)
    with pytest.raises(PortBusyError) as err:
        check_ports_free({"s3": listener})
    assert str(err.value) == (
        f"port {listener} (s3) on 127.0.0.1 is in use by another process; stop it or set MODELOPS_PORT_OFFSET"
    )
    assert busy_port_message(8333, "s3") == (
        "port 8333 (s3) on 127.0.0.1 is in use by another process; stop it or set MODELOPS_PORT_OFFSET"
    )


def test_free_port_is_not_busy() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    assert not port_in_use(port)
    check_ports_free({"x": port})


def test_up_fails_on_busy_port_before_starting_anything(
    settings: Settings, listener: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(DEFAULT_PORTS, "s3", listener)

    def no_spawn(*args: object, **kwargs: object) -> None:
        raise AssertionError("nothing may be started when a port is busy")

    monkeypatch.setattr(process, "spawn", no_spawn)
    with pytest.raises(PortBusyError, match=rf"^port {listener} \(s3\) on 127.0.0.1 is in use"):
        manager.up(settings)


# -- credentials and state file ---------------------------------------------------------------------
def test_credentials_are_random_and_well_formed() -> None:
    a, b = Credentials.generate(), Credentials.generate()
    assert a != b
    assert a.airflow_username == "admin"
    assert len(a.s3_access_key) == 20 and a.s3_access_key.isalnum()
    assert len(a.s3_secret_key) == 40 and len(a.airflow_password) >= 20
    for key in (a.airflow_fernet_key, a.mlflow_webhook_encryption_key):
        assert len(base64.urlsafe_b64decode(key)) == 32
    assert a.airflow_fernet_key != a.mlflow_webhook_encryption_key
    assert a.triton_admin_token != b.triton_admin_token and len(a.triton_admin_token) >= 40
    assert not set(a.triton_admin_token) & set(",:= "), "the token goes into Triton's <apis>:<header>=<value> flag"


def test_fernet_keys_are_accepted_by_cryptography() -> None:
    fernet = pytest.importorskip("cryptography.fernet")
    creds = Credentials.generate()
    token = fernet.Fernet(creds.airflow_fernet_key.encode()).encrypt(b"x")
    assert fernet.Fernet(creds.airflow_fernet_key.encode()).decrypt(token) == b"x"


def test_state_roundtrip_is_private_and_keeps_credentials(tmp_path: Path) -> None:
    state = StackState.new(tmp_path / "stk", 100)
    state.services["s3"] = ServiceRecord(pid=123, start_ticks=456, started_at="now")
    state.save()
    assert stat.S_IMODE(os.stat(state.path).st_mode) == 0o600
    loaded = StackState.load(tmp_path / "stk")
    assert loaded is not None
    assert loaded.credentials == state.credentials
    assert loaded.port_offset == 100 and loaded.ports["s3"] == 8433
    assert loaded.services["s3"] == ServiceRecord(pid=123, start_ticks=456, started_at="now")
    assert not list((tmp_path / "stk").glob(".*tmp")), "atomic write must not leave temp files"


def test_missing_credential_fields_are_generated_existing_kept(tmp_path: Path) -> None:
    state = StackState.new(tmp_path, 0)
    data = state.to_dict()
    del data["credentials"]["mlflow_webhook_encryption_key"]
    del data["credentials"]["triton_admin_token"]  # a stack.json written before Triton was locked down
    (tmp_path / "stack.json").write_text(json.dumps(data))
    loaded = StackState.load(tmp_path)
    assert loaded is not None
    assert loaded.credentials.s3_secret_key == state.credentials.s3_secret_key
    assert loaded.credentials.mlflow_webhook_encryption_key
    assert loaded.credentials.triton_admin_token


def test_load_without_file_and_with_garbage(tmp_path: Path) -> None:
    assert StackState.load(tmp_path) is None
    (tmp_path / "stack.json").write_text("{not json")
    with pytest.raises(StackError, match="not valid JSON"):
        StackState.load(tmp_path)


def test_up_reuses_credentials(settings: Settings) -> None:
    first = manager._load_for_up(settings.stack_dir, 0)
    first.save()
    again = manager._load_for_up(settings.stack_dir, 100)  # nothing running: the offset may change
    assert again.credentials == first.credentials
    assert again.ports["s3"] == 8433


# -- status and environments ------------------------------------------------------------------------
def test_status_shape_and_client_env(settings: Settings) -> None:
    state = StackState.new(settings.stack_dir, 100)
    status = build_status(state, settings, running={"s3": True})
    creds = state.credentials
    assert status["s3"]["endpoint"] == "http://127.0.0.1:8433"
    assert (status["s3"]["access_key"], status["s3"]["secret_key"]) == (creds.s3_access_key, creds.s3_secret_key)
    assert status["s3"]["triton_bucket"] == "triton" and status["s3"]["artifacts_bucket"] == "modelops-artifacts"
    assert status["mlflow"]["url"] == "http://127.0.0.1:5100"
    assert status["triton"]["http"] == "http://127.0.0.1:8100"
    assert status["triton"]["grpc"] == "127.0.0.1:8101"
    assert status["triton"]["metrics"] == "http://127.0.0.1:8102/metrics"
    assert status["triton"]["repository"] == "s3://127.0.0.1:8433/triton"
    assert status["airflow"]["url"] == "http://127.0.0.1:8180"
    assert (status["airflow"]["username"], status["airflow"]["password"]) == ("admin", creds.airflow_password)
    assert status["gateway"]["url"] == "http://127.0.0.1:9100"
    assert status["gateway"]["metrics"] == "http://127.0.0.1:9100/metrics"
    assert status["gateway"]["keys_db"] == str(settings.stack_dir / "gateway" / "keys.db")
    assert status["gateway"]["routes"] == "s3://triton/routes"
    assert status["stack_dir"] == str(settings.stack_dir)
    assert status["prometheus"]["url"] == "http://127.0.0.1:9190"
    assert status["prometheus"]["config"] == str(settings.stack_dir / "config" / "prometheus.yml")
    assert status["reconciler"]["interval_s"] == 10.0
    for name in ("s3", "mlflow", "triton", "gateway", "prometheus", "reconciler", "airflow"):
        assert set(status[name]) >= {"pid", "log", "running", "state"}
        assert status[name]["log"].startswith(str(settings.stack_dir / "logs"))
    assert status["s3"]["running"] is True and status["mlflow"]["running"] is False
    json.dumps(status)  # serializable

    # MLflow's admin (basic auth) for the operator; the other users' logins beside it
    assert (status["mlflow"]["username"], status["mlflow"]["password"]) == ("admin", creds.mlflow_admin_password)
    assert status["mlflow"]["users"] == {
        "airflow": {"username": "airflow", "password": creds.mlflow_airflow_password},
        "gateway": {"username": "gateway", "password": creds.mlflow_gateway_password},
    }
    identities = status["s3"]["identities"]
    assert set(identities) == {"mlflow", "serving", "worker", "pipeline"}
    keys = {creds.s3_access_key, *(i["access_key"] for i in identities.values())}
    assert len(keys) == 5, "every S3 identity has keys of its own"

    # client_env is Airflow's environment: the pipeline S3 identity and MLflow's `airflow` user, never the admins
    env = client_env(status)
    assert env["AWS_ENDPOINT_URL"] == env["MLFLOW_S3_ENDPOINT_URL"] == "http://127.0.0.1:8433"
    assert env["AWS_ACCESS_KEY_ID"] == creds.s3_pipeline_access_key
    assert env["AWS_SECRET_ACCESS_KEY"] == creds.s3_pipeline_secret_key
    assert env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5100"
    assert (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]) == \
        ("airflow", creds.mlflow_airflow_password)
    assert env["MODELOPS_STACK_DIR"] == str(settings.stack_dir)
    assert all(isinstance(v, str) for v in env.values())
    assert creds.s3_secret_key not in json.dumps(env) and creds.mlflow_admin_password not in json.dumps(env)
    assert json.loads(env["AIRFLOW_CONN_MLFLOW_DEFAULT"]) == {
        "conn_type": "modelops_mlflow",
        "host": "127.0.0.1",
        "port": 5100,
        "schema": "http",
        "login": "airflow",
        "password": creds.mlflow_airflow_password,
    }
    s3_extra = {"endpoint_url": "http://127.0.0.1:8433", "region_name": "us-east-1",
                "config_kwargs": {"s3": {"addressing_style": "path"}}}
    assert json.loads(env["AIRFLOW_CONN_S3_DEFAULT"]) == {
        "conn_type": "aws",
        "login": creds.s3_pipeline_access_key,
        "password": creds.s3_pipeline_secret_key,
        "extra": s3_extra,
    }
    assert json.loads(env["AIRFLOW_CONN_S3_WORKER"]) == {
        "conn_type": "aws",
        "login": creds.s3_worker_access_key,
        "password": creds.s3_worker_secret_key,
        "extra": s3_extra,
    }
    triton = json.loads(env["AIRFLOW_CONN_TRITON_DEFAULT"])
    assert (triton["port"], triton["extra"]) == (8100, {"grpc_port": 8101, "metrics_port": 8102,
                                                        "admin_header": "X-ModelOps-Admin",
                                                        "admin_token_file": str(settings.stack_dir / "triton" / "admin-token")})
    assert creds.triton_admin_token not in env["AIRFLOW_CONN_TRITON_DEFAULT"]  # Airflow's environment holds a path
    assert (status["triton"]["admin_header"], status["triton"]["admin_token"]) == \
        ("X-ModelOps-Admin", creds.triton_admin_token)


def test_triton_is_started_locked_down_and_its_token_stays_out_of_the_log(settings: Settings) -> None:
    from modelops.local.stack.services import SPECS, Context

    state = StackState.new(settings.stack_dir, 0)
    token = state.credentials.triton_admin_token
    cmd = SPECS["triton"].command(Context(state, settings))
    apis = "model-repository,model-config,shared-memory,trace,logging"
    assert f"--http-restricted-api={apis}:X-ModelOps-Admin={token}" in cmd
    assert f"--grpc-restricted-protocol={apis}:x-modelops-admin={token}" in cmd
    shown = " ".join(process.redact(cmd))
    assert token not in shown and f"--http-restricted-api={apis}:X-ModelOps-Admin=***" in shown
    assert "--model-control-mode=explicit" in shown, "other arguments are logged as they are"


def test_status_before_first_up_has_no_secrets(settings: Settings) -> None:
    status = manager.status(settings)
    assert status["initialized"] is False
    assert status["s3"]["secret_key"] is None and status["airflow"]["password"] is None
    assert status["triton"]["admin_token"] is None
    assert not any(status[name]["running"]
                   for name in ("s3", "mlflow", "triton", "gateway", "prometheus", "reconciler", "airflow"))
    assert not settings.stack_dir.exists(), "status must not create the stack directory"


def test_service_env_scrubs_caller_stack_variables(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelops.local.stack.services import Context, airflow_env

    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-the-caller")
    monkeypatch.setenv("MODELOPS_TOOLS_DIR", "/opt/tools")
    state = StackState.new(settings.stack_dir, 0)
    env = airflow_env(Context(state, settings))
    assert "AIRFLOW__CORE__EXECUTOR" not in env
    assert env["AWS_SECRET_ACCESS_KEY"] == state.credentials.s3_pipeline_secret_key  # not the admin's
    assert env["MODELOPS_TOOLS_DIR"] == "/opt/tools"
    assert env["MODELOPS_EXECUTION"] == "local"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8080/execution/"
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1" and env["AIRFLOW__API__PORT"] == "8080"
    assert env["AIRFLOW__CORE__FERNET_KEY"] == state.credentials.airflow_fernet_key
    assert env["PATH"].split(os.pathsep)[0] == str(airflow_home.shim_dir(state))
    assert env["PYTHONPATH"] == str(settings.repo_root)


def test_gateway_runs_on_the_orchestrator_python_against_the_stack_triton(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelops.local.stack.services import SPECS, Context

    monkeypatch.setenv("MODELOPS_GATEWAY_TRITON_URL", "http://elsewhere:1")  # a caller's value must not leak
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-the-caller")
    state = StackState.new(settings.stack_dir, 300)
    ctx = Context(state, settings)
    spec = SPECS["gateway"]
    assert spec.requires == ("s3", "triton") and spec.ports == ("gateway",)
    cmd = spec.command(ctx)
    assert cmd[0] == str(ctx.orchestrator_bin / "python")
    assert cmd[1:] == ["-m", "modelops.serving.gateway", "--host", "127.0.0.1", "--port", "9300",
                       "--log-level", "info"]
    env = spec.env(ctx)
    assert env["MODELOPS_GATEWAY_TRITON_URL"] == "http://127.0.0.1:8300"
    assert env["MODELOPS_GATEWAY_KEYS_DB"] == str(settings.stack_dir / "gateway" / "keys.db")
    assert env["MODELOPS_TRITON_BUCKET"] == "triton"
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:8633"
    assert env["AWS_ACCESS_KEY_ID"] == state.credentials.s3_serving_access_key  # read-only on the Triton bucket
    assert (env["MODELOPS_GATEWAY_MLFLOW_USERNAME"], env["MODELOPS_GATEWAY_MLFLOW_PASSWORD"]) == \
        ("gateway", state.credentials.mlflow_gateway_password)
    assert (env["MODELOPS_STACK_DIR"], env["MODELOPS_PORT_OFFSET"]) == (str(settings.stack_dir), "300")
    assert env["PYTHONPATH"] == str(settings.repo_root)
    settings.stack_dir.mkdir(parents=True)
    spec.prepare(ctx)
    assert stat.S_IMODE(os.stat(settings.stack_dir / "gateway").st_mode) == 0o700


# -- least privilege: MLflow users, S3 identities, the steps' environment --------------------------
def test_mlflow_runs_with_basic_auth_and_grants_nothing_by_default(settings: Settings) -> None:
    from modelops.local.stack.services import SPECS, Context

    state = StackState.new(settings.stack_dir, 0)
    ctx = Context(state, settings)
    spec = SPECS["mlflow"]
    cmd = spec.command(ctx)
    assert cmd[cmd.index("--app-name") + 1] == "basic-auth"
    settings.stack_dir.mkdir(parents=True)
    spec.prepare(ctx)
    env = spec.env(ctx)
    ini = Path(env["MLFLOW_AUTH_CONFIG_PATH"])
    assert stat.S_IMODE(os.stat(ini).st_mode) == 0o600
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ini)
    assert cfg["mlflow"]["default_permission"] == "NO_PERMISSIONS"
    assert int(cfg["mlflow"]["auth_cache_ttl_seconds"]) > 0  # MLflow's verified-credentials cache (no scrypt per call)
    assert cfg["mlflow"]["admin_username"] == "admin"
    assert cfg["mlflow"]["admin_password"] == state.credentials.mlflow_admin_password
    assert cfg["mlflow"]["database_uri"] == f"sqlite:///{settings.stack_dir / 'mlflow' / 'basic_auth.db'}"
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == state.credentials.mlflow_flask_secret_key
    assert env["AWS_ACCESS_KEY_ID"] == state.credentials.s3_mlflow_access_key  # its bucket only
    assert spec.configure is not None, "the airflow and gateway users are made once MLflow answers"


def test_s3_identities_are_limited_to_their_buckets(settings: Settings) -> None:
    from modelops.local.stack.auth import s3_identities
    from modelops.local.stack.services import SPECS, Context

    state = StackState.new(settings.stack_dir, 0)
    creds = state.credentials
    doc = s3_identities(creds, settings)
    by_name = {i["name"]: i for i in doc["identities"]}
    assert [i["actions"] for i in doc["identities"] if "Admin" in i["actions"]] == [by_name["modelops"]["actions"]]
    assert by_name["modelops"]["credentials"] == [{"accessKey": creds.s3_access_key, "secretKey": creds.s3_secret_key}]
    assert by_name["modelops-serving"]["actions"] == ["Read:triton", "List:triton"]
    assert by_name["modelops-mlflow"]["actions"] == ["Read:mlflow", "Write:mlflow", "List:mlflow", "Tagging:mlflow"]
    worker = by_name["modelops-worker"]["actions"]
    assert not [a for a in worker if a.endswith(":triton")] and "Write:modelops-artifacts" in worker
    assert not [a for a in worker if a.startswith("Write") and a.endswith(":mlflow")]
    assert "Write:triton" in by_name["modelops-pipeline"]["actions"]
    assert all(":" in a for name, i in by_name.items() if name != "modelops" for a in i["actions"])
    keys = [i["credentials"][0]["accessKey"] for i in doc["identities"]]
    assert len(set(keys)) == len(keys) == 5
    ctx = Context(state, settings)
    assert SPECS["triton"].env(ctx)["AWS_ACCESS_KEY_ID"] == creds.s3_serving_access_key
    weed = SPECS["s3"].env(ctx)  # JWT signing: the filer and volume ports refuse what S3 did not sign
    assert weed["WEED_JWT_SIGNING_KEY"] == creds.seaweedfs_jwt_key
    assert weed["WEED_JWT_FILER_SIGNING_KEY"] == creds.seaweedfs_jwt_filer_key
    assert weed["WEED_JWT_FILER_SIGNING_READ_KEY"] and weed["WEED_JWT_SIGNING_READ_KEY"]
    settings.stack_dir.mkdir(parents=True)
    SPECS["s3"].prepare(ctx)
    path = settings.stack_dir / "config" / "s3-identities.json"
    assert json.loads(path.read_text()) == doc and stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_steps_get_the_worker_identity_and_no_stack_secrets(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelops_airflow.operators.step_operator import LocalStepOperator

    state = StackState.new(settings.stack_dir, 0)
    status = build_status(state, settings, running={})
    creds = state.credentials
    for key, value in client_env(status).items():  # the Airflow worker's environment, as the stack sets it
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MODELOPS_WEBHOOK_SECRET", "hmac-secret")
    env = LocalStepOperator(task_id="export", step="export", spec="s3://x/spec.json")._env(settings)
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (creds.s3_worker_access_key,
                                                                         creds.s3_worker_secret_key)
    assert "MODELOPS_STACK_DIR" not in env and "MLFLOW_TRACKING_PASSWORD" not in env
    assert not [k for k in env if k.startswith("AIRFLOW_CONN_")]
    text = json.dumps(env)
    leaked = [name for name, value in creds.to_dict().items()
              if len(value) > 8 and value in text and not name.startswith("s3_worker_")]
    assert not leaked and "hmac-secret" not in text
    # a deployment with one S3 connection: the steps get that one
    monkeypatch.delenv("AIRFLOW_CONN_S3_WORKER")
    env = LocalStepOperator(task_id="export", step="export", spec="s3://x/spec.json")._env(settings)
    assert env["AWS_ACCESS_KEY_ID"] == creds.s3_pipeline_access_key


# -- airflow.cfg ------------------------------------------------------------------------------------
def test_airflow_cfg_renders_from_repo_template(settings: Settings) -> None:
    state = StackState.new(settings.stack_dir, 100)
    text = airflow_home.render_cfg(
        (REPO_ROOT / "airflow.cfg.template").read_text(), airflow_home.cfg_values(state, REPO_ROOT)
    )
    assert "$" not in text
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read_string(text)
    home = settings.stack_dir / "airflow"
    assert cfg["core"]["dags_folder"] == str(REPO_ROOT / "dags")
    assert cfg["core"]["plugins_folder"] == str(REPO_ROOT / "plugins")
    assert cfg["core"]["load_examples"] == "False"
    assert cfg["core"]["executor"] == "LocalExecutor"
    assert cfg["core"]["parallelism"] == "4" and cfg["core"]["max_active_tasks_per_dag"] == "4"
    assert cfg["core"]["simple_auth_manager_users"] == "admin:admin"
    assert cfg["core"]["simple_auth_manager_passwords_file"].startswith(str(home))
    assert cfg["core"]["execution_api_server_url"] == "http://127.0.0.1:8180/execution/"
    assert cfg["database"]["sql_alchemy_conn"] == f"sqlite:///{home}/airflow.db"
    assert (cfg["api"]["host"], cfg["api"]["port"]) == ("127.0.0.1", "8180")
    assert cfg["logging"]["worker_log_server_port"] == "8893"
    assert cfg["logging"]["trigger_log_server_port"] == "8894"
    assert int(cfg["dag_processor"]["refresh_interval"]) <= 10
    secrets_ = state.credentials.to_dict().values()
    assert not any(value in text for value in secrets_ if value != "admin"), "no secret in airflow.cfg"


def test_render_cfg_rejects_missing_placeholder() -> None:
    with pytest.raises(KeyError):
        airflow_home.render_cfg("port = $api_port\nx = $unknown\n", {"api_port": "1"})


def test_airflow_home_prepare_writes_private_files_and_shim(settings: Settings) -> None:
    state = StackState.new(settings.stack_dir, 0)
    cfg = airflow_home.prepare(state, REPO_ROOT, Path("/venv/bin/airflow"))
    assert stat.S_IMODE(os.stat(cfg).st_mode) == 0o600
    pw = airflow_home.passwords_file(state)
    assert json.loads(pw.read_text()) == {"admin": state.credentials.airflow_password}
    assert stat.S_IMODE(os.stat(pw).st_mode) == 0o600
    shim = airflow_home.shim_dir(state) / "airflow"
    assert os.access(shim, os.X_OK)
    assert "--skip-serve-logs" in shim.read_text() and "/venv/bin/airflow" in shim.read_text()


# -- service graph and processes --------------------------------------------------------------------
def test_requirements_and_dependents() -> None:
    assert manager.with_requirements(None) == ["s3", "mlflow", "triton", "gateway", "prometheus", "reconciler",
                                               "openwebui", "airflow"]
    assert manager.with_requirements(["mlflow"]) == ["s3", "mlflow"]
    assert manager.with_requirements(["seaweedfs", "airflow"]) == ["s3", "mlflow", "triton", "airflow"]
    assert manager.with_requirements(["gateway"]) == ["s3", "triton", "gateway"]
    assert manager.with_requirements(["reconciler"]) == ["s3", "triton", "reconciler"]
    assert manager.with_requirements(["prometheus"]) == ["prometheus"]
    assert manager.with_dependents(["triton"]) == ["triton", "gateway", "reconciler", "openwebui", "airflow"]
    assert manager.with_dependents(["gateway"]) == ["gateway", "openwebui"]
    assert manager.with_dependents(["prometheus"]) == ["prometheus"], "Triton/gateway restarts keep its TSDB"
    assert manager.with_dependents(["s3"]) == ["s3", "mlflow", "triton", "gateway", "reconciler", "openwebui",
                                               "airflow"]
    with pytest.raises(StackError, match="unknown service"):
        manager.with_requirements(["postgres"])


def test_spawn_stop_and_liveness(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "sleeper.log"
    record = process.spawn(
        "sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], dict(os.environ), log, tmp_path
    )
    assert process.is_running(record)
    assert os.getpgid(record.pid) == record.pid, "a service runs in its own process group"
    assert not process.is_running(ServiceRecord(pid=record.pid, start_ticks=(record.start_ticks or 0) + 1))
    assert process.stop("sleeper", record, grace_s=5)
    assert not process.is_running(record)
    assert not process.stop("sleeper", record), "stopping twice is a no-op"
    assert "starting sleeper" in log.read_text()


def test_wait_healthy_reports_early_exit_and_timeout(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    dead = process.spawn("crasher", [sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ), log, tmp_path)
    with pytest.raises(StackError, match=r"^crasher exited with code 3 before becoming healthy; see .*x\.log$"):
        process.wait_healthy("crasher", dead, lambda: False, timeout_s=10, log_path=log)
    slow = process.spawn("slow", [sys.executable, "-c", "import time; time.sleep(60)"], dict(os.environ), log, tmp_path)
    try:
        with pytest.raises(StackError, match=r"^slow did not become healthy within 1 s; see .*x\.log$"):
            process.wait_healthy("slow", slow, lambda: False, timeout_s=1, log_path=log, interval_s=0.1)
        assert process.wait_healthy("slow", slow, lambda: True, timeout_s=1, log_path=log) < 1

        def refuses() -> bool:  # a probe that knows the service will never be healthy (e.g. a login mismatch)
            raise StackError("mlflow refuses the stack's admin login")

        def flaky() -> bool:
            raise ConnectionRefusedError  # not up yet: keep waiting

        started = time.monotonic()
        with pytest.raises(StackError, match="refuses the stack's admin login"):
            process.wait_healthy("slow", slow, refuses, timeout_s=30, log_path=log)
        assert time.monotonic() - started < 5, "a StackError from the probe ends the wait at once"
        with pytest.raises(StackError, match="did not become healthy within 1 s"):
            process.wait_healthy("slow", slow, flaky, timeout_s=1, log_path=log, interval_s=0.1)
    finally:
        process.stop("slow", slow, grace_s=2)


def test_each_triton_start_rotates_the_admin_token(settings: Settings) -> None:
    """A token read off an earlier Triton's command line is dead; stack.json and the token file hold the new one."""
    state = StackState.new(settings.stack_dir, 100)
    state.save()
    first = state.rotate_triton_admin_token()
    second = state.rotate_triton_admin_token()
    assert first != second and len(second) >= 40
    assert StackState.load(settings.stack_dir).credentials.triton_admin_token == second
    assert state.triton_admin_token_file.read_text().strip() == second
    assert state.triton_admin_token_file.stat().st_mode & 0o777 == 0o600


def test_the_triton_hook_reads_the_token_file_at_each_use(tmp_path, monkeypatch) -> None:
    from modelops_airflow.hooks import TritonHook

    token_file = tmp_path / "admin-token"
    token_file.write_text("first\n")
    monkeypatch.setenv("AIRFLOW_CONN_TRITON_T", json.dumps({
        "conn_type": "modelops_triton", "host": "127.0.0.1", "port": 8000,
        "extra": {"admin_header": "X-ModelOps-Admin", "admin_token": "stale", "admin_token_file": str(token_file)}}))
    hook = TritonHook("triton_t")
    assert hook.admin() == ("X-ModelOps-Admin", "first")
    token_file.write_text("second\n")  # Triton restarted: a new token
    assert hook.admin() == ("X-ModelOps-Admin", "second")
    token_file.unlink()
    from airflow.sdk.exceptions import AirflowException

    with pytest.raises(AirflowException, match=r"^cannot read Triton's admin token file .*admin-token \(connection "
                                               r"triton_t, extra admin_token_file\): No such file or directory$"):
        hook.admin()
