"""The Airflow hooks on their provider bases, configured only through ``AIRFLOW_CONN_*`` variables.

Each talks to a real local HTTP server (a thread answering like MLflow's ``/health``, Triton's
``/v2/health/live``, S3's ListBuckets or Airflow's ``/auth/token`` + ``/api/v2``).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from modelops.triggers.events import RunRequest

REPO = Path(__file__).resolve().parents[2]

Handler = Callable[[BaseHTTPRequestHandler, bytes], tuple[int, str, bytes]]


class _Server:
    """A real HTTP server on 127.0.0.1 whose answers come from ``handle(request, body)``."""

    def __init__(self, handle: Handler) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        outer = self

        class _H(BaseHTTPRequestHandler):
            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.requests.append((self.command, self.path, dict(self.headers), body))
                code, ctype, payload = handle(self, body)
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _any

            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _H)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def serve() -> Iterator[Callable[[Handler], _Server]]:
    servers: list[_Server] = []

    def start(handle: Handler) -> _Server:
        servers.append(_Server(handle))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_conn(monkeypatch, conn_id: str, port: int, **fields) -> None:
    conn = {"conn_type": "http", "host": "127.0.0.1", "port": port, "schema": "http", **fields}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


def _health(paths: dict[str, bytes]) -> Handler:
    def handle(req: BaseHTTPRequestHandler, body: bytes) -> tuple[int, str, bytes]:
        return (200, "text/plain", paths[req.path]) if req.path in paths else (404, "text/plain", b"no")
    return handle


def test_mlflow_hook_on_a_selected_connection(serve, monkeypatch):
    from modelops_airflow.hooks import MlflowHook

    server = serve(_health({"/health": b"OK"}))
    _http_conn(monkeypatch, "mlflow_other", server.port)
    hook = MlflowHook(mlflow_conn_id="mlflow_other")
    assert (MlflowHook.conn_name_attr, MlflowHook.default_conn_name, MlflowHook.conn_type) == \
        ("mlflow_conn_id", "mlflow_default", "modelops_mlflow")
    assert hook.tracking_uri() == f"http://127.0.0.1:{server.port}"
    ok, message = hook.test_connection()
    assert ok, message
    assert [(m, p) for m, p, _, _ in server.requests] == [("GET", "/health")]


def test_mlflow_hook_reports_a_dead_server_and_a_missing_connection(monkeypatch):
    from modelops_airflow.hooks import MlflowHook

    _http_conn(monkeypatch, "mlflow_default", _free_port())
    ok, message = MlflowHook().test_connection()
    assert not ok and "\n" not in message and message
    ok, message = MlflowHook(mlflow_conn_id="nope_never_defined").test_connection()
    assert not ok and "nope_never_defined" in message


def test_triton_hook_live_url_and_extras_not_sent_as_headers(serve, monkeypatch):
    from modelops_airflow.hooks import TritonHook

    server = serve(_health({"/v2/health/live": b""}))
    _http_conn(monkeypatch, "triton_default", server.port, extra={"grpc_port": 8001, "metrics_port": 8002})
    hook = TritonHook()
    assert hook.url() == f"127.0.0.1:{server.port}"
    ok, message = hook.test_connection()
    assert ok, message
    _, path, headers, _ = server.requests[0]
    assert path == "/v2/health/live" and "grpc_port" not in {k.lower() for k in headers}


def test_triton_hook_client_sends_the_admin_header_on_model_control_only(serve, monkeypatch):
    from modelops_airflow.hooks import TritonHook

    def handle(req: BaseHTTPRequestHandler, body: bytes) -> tuple[int, str, bytes]:
        return 200, "application/json", b"{}" if req.command == "POST" else b""

    server = serve(handle)
    _http_conn(monkeypatch, "triton_default", server.port,
               extra={"grpc_port": 8001, "admin_header": "X-ModelOps-Admin", "admin_token": "t0k"})
    hook = TritonHook()
    ok, message = hook.test_connection()
    assert ok, message
    client = hook.get_client()
    client.load_model("m1")
    client.is_model_ready("m1")
    client.unload_model("m1")
    assert "t0k" not in repr(client)
    sent = {(m, p): {k.lower(): v for k, v in h.items()} for m, p, h, _ in server.requests}
    assert sent[("POST", "/v2/repository/models/m1/load")]["x-modelops-admin"] == "t0k"
    assert sent[("POST", "/v2/repository/models/m1/unload")]["x-modelops-admin"] == "t0k"
    for key in (("GET", "/v2/health/live"), ("GET", "/v2/models/m1/ready")):
        assert not {"x-modelops-admin", "admin_token", "admin_header"} & set(sent[key]), key


def test_triton_hook_says_not_live_on_error(serve, monkeypatch):
    from modelops_airflow.hooks import TritonHook

    server = serve(lambda req, body: (503, "text/plain", b"starting"))
    _http_conn(monkeypatch, "triton_b", server.port)
    ok, message = TritonHook(triton_conn_id="triton_b").test_connection()
    assert not ok and "503" in message


_BUCKETS_XML = b"""<?xml version="1.0" encoding="UTF-8"?>
<ListAllMyBucketsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Owner><ID>o</ID></Owner>
<Buckets><Bucket><Name>modelops-artifacts</Name><CreationDate>2026-01-01T00:00:00.000Z</CreationDate></Bucket>
<Bucket><Name>triton</Name><CreationDate>2026-01-01T00:00:00.000Z</CreationDate></Bucket></Buckets>
</ListAllMyBucketsResult>"""


def test_s3_hook_builds_modelops_storage_from_the_aws_connection(serve, monkeypatch):
    from modelops.storage import Storage
    from modelops_airflow.hooks import ModelOpsS3Hook

    server = serve(lambda req, body: (200, "application/xml", _BUCKETS_XML))
    endpoint = f"http://127.0.0.1:{server.port}"
    monkeypatch.setenv("AIRFLOW_CONN_S3_OTHER", json.dumps({
        "conn_type": "aws", "login": "AKIDEXAMPLE", "password": "sEcReT",
        "extra": {"endpoint_url": endpoint, "region_name": "eu-west-1"}}))
    hook = ModelOpsS3Hook(aws_conn_id="s3_other")
    config = hook.s3_config()
    assert (config.endpoint_url, config.access_key, config.secret_key, config.region) == \
        (endpoint, "AKIDEXAMPLE", "sEcReT", "eu-west-1")
    assert isinstance(hook.storage(), Storage) and hook.storage().config == config
    ok, message = hook.test_connection()
    assert ok and message == "buckets: modelops-artifacts, triton", message
    method, path, headers, _ = server.requests[-1]
    assert (method, path) == ("GET", "/") and "AKIDEXAMPLE" in headers.get("Authorization", "")


class _FakeAirflowApi:
    """Answers like Airflow's API server: /auth/token, then dagRuns with 409 for a taken run id."""

    def __init__(self, password: str) -> None:
        self.password = password
        self.runs: dict[str, dict] = {}
        self.tokens_issued = 0

    def __call__(self, req: BaseHTTPRequestHandler, body: bytes) -> tuple[int, str, bytes]:
        if req.path == "/auth/token":
            creds = json.loads(body)
            if creds != {"username": "admin", "password": self.password}:
                return 401, "application/json", b'{"detail": "bad credentials"}'
            self.tokens_issued += 1
            return 201, "application/json", json.dumps({"access_token": f"tok{self.tokens_issued}"}).encode()
        if req.headers.get("Authorization") != f"Bearer tok{self.tokens_issued}":
            return 401, "application/json", b'{"detail": "expired"}'
        if req.path == "/api/v2/dags/optimize_model/dagRuns":
            run = json.loads(body)
            if run["dag_run_id"] in self.runs:
                return 409, "application/json", b'{"detail": "exists"}'
            self.runs[run["dag_run_id"]] = run
            return 200, "application/json", json.dumps({"dag_run_id": run["dag_run_id"]}).encode()
        if req.path == "/api/v2/version":
            return 200, "application/json", b'{"version": "3.3.2"}'
        return 404, "application/json", b'{"detail": "Dag not found"}'


def test_airflow_api_hook_creates_each_run_once_and_never_logs_the_password(serve, monkeypatch, caplog):
    from modelops_airflow.hooks import AirflowApiHook

    api = _FakeAirflowApi(password="pa55-w0rd")
    server = serve(api)
    _http_conn(monkeypatch, "airflow_api_default", server.port, login="admin", password="pa55-w0rd")
    req = RunRequest(run_id="mlflow__m__v2__alias-champion", model_name="m", model_version="2",
                     reason="alias champion -> v2", source="webhook")
    hook = AirflowApiHook()
    with caplog.at_level(logging.DEBUG):
        assert hook.create_dag_runs([req], "optimize_model") == {req.run_id: "created"}
        assert hook.create_dag_run("optimize_model", req.run_id, req.conf, req.note) == "exists"
        api.tokens_issued += 1  # the server rotates its tokens: the hook logs in again once
        assert AirflowApiHook().test_connection() == (True, f"Airflow 3.3.2 at http://127.0.0.1:{server.port}")
        assert hook.create_dag_run("optimize_model", "other", {}) == "created"
    assert api.runs[req.run_id] == {"dag_run_id": req.run_id, "logical_date": None, "conf": req.conf,
                                    "note": req.note}
    assert "pa55-w0rd" not in caplog.text
    with pytest.raises(RuntimeError, match="HTTP 404"):
        hook.create_dag_run("no_such_dag", "r1")


def test_airflow_api_hook_refused_login_is_one_clear_line(serve, monkeypatch):
    from modelops_airflow.hooks import AirflowApiHook

    server = serve(_FakeAirflowApi(password="right"))
    _http_conn(monkeypatch, "airflow_api_default", server.port, login="admin", password="wrong")
    with pytest.raises(PermissionError, match=r"^Airflow API login as 'admin' refused: HTTP 401$"):
        AirflowApiHook().create_dag_run("optimize_model", "r1")
    ok, message = AirflowApiHook().test_connection()
    assert not ok and "wrong" not in message


@pytest.mark.parametrize(("name", "conn_attr", "default", "probe"), [
    ("PrometheusHook", "prometheus_conn_id", "prometheus_default", "/-/ready"),
    ("GatewayHook", "gateway_conn_id", "gateway_default", "/v2/health/live"),
    ("GrafanaHook", "grafana_conn_id", "grafana_default", "/api/health"),
])
def test_prometheus_gateway_and_grafana_hooks_url_probe_and_selected_connection(serve, monkeypatch, name, conn_attr,
                                                                        default, probe):
    from modelops_airflow import hooks

    cls = getattr(hooks, name)
    assert (cls.conn_name_attr, cls.default_conn_name, cls.conn_type) == (conn_attr, default, "modelops_" + name.removesuffix("Hook").lower())
    server = serve(_health({probe: b"ready"}))
    _http_conn(monkeypatch, default, server.port)
    assert cls().url() == f"http://127.0.0.1:{server.port}"
    _http_conn(monkeypatch, "other_one", server.port, host="localhost")
    hook = cls(**{conn_attr: "other_one"})
    assert getattr(hook, conn_attr) == "other_one"
    assert hook.url() == f"http://localhost:{server.port}", "no trailing slash"
    ok, message = hook.test_connection()
    assert ok, message
    assert [(m, p) for m, p, _, _ in server.requests] == [("GET", probe)]
    dead = serve(lambda req, body: (503, "text/plain", b"not ready"))
    _http_conn(monkeypatch, "down_one", dead.port)
    ok, message = cls(**{conn_attr: "down_one"}).test_connection()
    assert not ok and "503" in message and "\n" not in message


def test_connections_build_each_hook_on_its_id():
    from modelops_airflow.connections import Connections

    conns = Connections(mlflow_conn_id="mlflow_prod", aws_conn_id=" s3_prod ", prometheus_conn_id="prom_prod")
    assert (conns.mlflow().mlflow_conn_id, conns.s3().aws_conn_id, conns.triton().triton_conn_id) == (
        "mlflow_prod", "s3_prod", "triton_default")
    assert (conns.prometheus().prometheus_conn_id, conns.gateway().gateway_conn_id) == ("prom_prod", "gateway_default")
    assert conns.grafana().grafana_conn_id == "grafana_default"
    assert conns.airflow_api().airflow_api_conn_id == "airflow_api_default"
    with pytest.raises(ValueError, match="triton_conn_id must be a non-empty connection id"):
        Connections(triton_conn_id=" ")


def test_grafana_hook_links_a_provisioned_dashboard_with_its_variables(monkeypatch):
    from modelops_airflow.hooks import GrafanaHook

    _http_conn(monkeypatch, "grafana_default", 3000)
    url = GrafanaHook().dashboard_url("gateway", model="digits cnn")
    assert url == "http://127.0.0.1:3000/d/modelops-gateway?var-model=digits+cnn"
    uids = {json.loads(p.read_text())["uid"] for p in (REPO / "monitoring/dashboards").glob("*.json")}
    from modelops_airflow.hooks.grafana import DASHBOARDS

    assert set(DASHBOARDS.values()) <= uids  # each link names a dashboard that is provisioned


def test_stack_connections_fit_the_hooks(monkeypatch, tmp_path):
    """The stack's AIRFLOW_CONN_* JSON is what the hooks read (conn types, S3 keys, the API user)."""
    from modelops.local.stack.endpoints import airflow_connections
    from modelops_airflow.hooks import (
        AirflowApiHook,
        GatewayHook,
        MlflowHook,
        ModelOpsS3Hook,
        OpenWebUIHook,
        PrometheusHook,
        TritonHook,
    )

    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "openwebui-gateway.key").write_text("mo_owkey_secret\n")
    status = {"openwebui": {"port": 3000, "admin_email": "admin@modelops.example", "admin_password": "owpw"},
              "stack_dir": str(tmp_path),
              "s3": {"endpoint": "http://127.0.0.1:8333", "access_key": "ak", "secret_key": "sk"},
              "mlflow": {"port": 5000}, "gateway": {"port": 9000, "url": "http://127.0.0.1:9000"},
              "prometheus": {"port": 9090},
              "triton": {"http_port": 8000, "grpc_port": 8001, "metrics_port": 8002,
                         "admin_header": "X-ModelOps-Admin", "admin_token": "tok"},
              "airflow": {"port": 8080, "username": "admin", "password": "pw"}}
    for name, value in airflow_connections(status).items():
        monkeypatch.setenv(name, value)
    assert MlflowHook().tracking_uri() == "http://127.0.0.1:5000"
    assert TritonHook().url() == "127.0.0.1:8000"
    assert (PrometheusHook().url(), GatewayHook().url()) == ("http://127.0.0.1:9090", "http://127.0.0.1:9000")
    assert TritonHook().admin() == ("X-ModelOps-Admin", "tok")
    config = ModelOpsS3Hook().s3_config()
    assert (config.endpoint_url, config.access_key, config.secret_key) == ("http://127.0.0.1:8333", "ak", "sk")
    api = AirflowApiHook()
    assert api.url_from_endpoint("/api/v2") == "http://127.0.0.1:8080/api/v2"
    assert api.get_connection(api.airflow_api_conn_id).login == "admin"
    webui = OpenWebUIHook()
    assert (webui.url(), webui.admin()) == ("http://127.0.0.1:3000", ("admin@modelops.example", "owpw"))
    # the refresh task's gateway: Open WebUI's own key, from the connection's extras
    extra = webui.get_connection(webui.openwebui_conn_id).extra_dejson
    assert extra == {"gateway_url": "http://127.0.0.1:9000", "gateway_key": "mo_owkey_secret"}
    monkeypatch.setenv("AIRFLOW_CONN_OPENWEBUI_OTHER", json.dumps({"conn_type": "http", "host": "127.0.0.1"}))
    with pytest.raises(ValueError, match="needs the Open WebUI admin"):
        OpenWebUIHook("openwebui_other").admin()


def test_webhook_creates_its_run_through_the_rest_api_once(serve, monkeypatch):
    from modelops_airflow import webhook

    api = _FakeAirflowApi(password="pw")
    server = serve(api)
    _http_conn(monkeypatch, "airflow_api_default", server.port, login="admin", password="pw")
    monkeypatch.setattr(webhook, "_api", None)
    req = RunRequest(run_id="mlflow__m__v1__tag-optimize", model_name="m", model_version="1",
                     reason="tag modelops.optimize=true on v1", source="webhook")
    assert webhook.create_run(req, "optimize_model") == "created"
    assert webhook.create_run(req, "optimize_model") == "exists"  # an MLflow retry: no second run
    assert list(api.runs) == [req.run_id] and api.runs[req.run_id]["note"].startswith("webhook: ")
    assert api.tokens_issued == 1  # the receiver keeps its token between deliveries
