"""Hooks, one per external service, on the provider hooks; each hands ``modelops`` the client it takes.

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

``get_conn()`` keeps the provider's meaning (a ``requests.Session`` for the HTTP hooks, a boto3 S3 client for
S3); every hook takes its connection id as a constructor argument (``mlflow_conn_id``, ``triton_conn_id``,
``aws_conn_id``, ``airflow_api_conn_id``, ``prometheus_conn_id``, ``gateway_conn_id``, ``openwebui_conn_id``) and has
``test_connection()``. Heavy clients (mlflow, tritonclient)
are imported when asked for, so importing this module costs the provider hooks only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.http.hooks.http import HttpHook

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from requests import Response, Session

    from modelops.storage import S3Config, Storage
    from modelops.triggers.events import RunRequest

CREATED, EXISTS = "created", "exists"
# The connection-id arguments operators take and DAGs may set in ``default_args``, with their defaults.
CONN_ID_DEFAULTS: dict[str, str] = {"mlflow_conn_id": "mlflow_default", "s3_conn_id": "s3_default",
                                    "triton_conn_id": "triton_default", "prometheus_conn_id": "prometheus_default",
                                    "gateway_conn_id": "gateway_default"}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _probe(check: Callable[[], str]) -> tuple[bool, str]:
    """``test_connection``'s answer: ``(True, what check() says)`` or ``(False, the error's first line)``."""
    try:
        return True, check()
    except Exception as exc:  # noqa: BLE001 - reported to the UI as text
        return False, _first_line(exc)


class MlflowHook(HttpHook):
    """The MLflow tracking server and model registry (http connection: host, port, schema; login/password for a
    server with basic auth, as the embedded stack's is)."""

    conn_name_attr = "mlflow_conn_id"
    default_conn_name = "mlflow_default"
    conn_type = "http"
    hook_name = "MLflow"

    def __init__(self, mlflow_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(method="GET", http_conn_id=mlflow_conn_id, **kwargs)
        self.mlflow_conn_id = mlflow_conn_id

    def tracking_uri(self) -> str:
        """The server's base URL, e.g. ``http://127.0.0.1:5000``."""
        return self.url_from_endpoint("").rstrip("/")

    def credentials(self) -> tuple[str, str] | None:
        """``(login, password)`` of the connection (MLflow basic auth), or None when it has no login."""
        conn = self.get_connection(self.mlflow_conn_id)
        return (conn.login, conn.password or "") if conn.login else None

    def auth_headers(self) -> dict[str, str]:
        """``{"Authorization": "Basic ..."}`` for plain HTTP calls to MLflow (empty without a login)."""
        import base64

        creds = self.credentials()
        return {"Authorization": "Basic " + base64.b64encode(":".join(creds).encode()).decode()} if creds else {}

    def get_client(self) -> MlflowClient:
        """An ``MlflowClient`` logged in as the connection's user (MLflow reads ``MLFLOW_TRACKING_USERNAME``/
        ``PASSWORD`` on each request: they are set in this task process; Airflow masks the password)."""
        from mlflow import MlflowClient

        from modelops.settings import Settings

        settings = Settings.from_env()  # explicit timeout and retries (MLflow's own: 120 s, 7 retries)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(settings.mlflow_timeout_s))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(settings.mlflow_max_retries))
        creds = self.credentials()
        if creds is not None:
            os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = creds
        uri = self.tracking_uri()
        return MlflowClient(tracking_uri=uri, registry_uri=uri)

    def test_connection(self) -> tuple[bool, str]:
        """GET ``/health`` (answered by every MLflow server)."""

        def check() -> str:
            self.run("/health", extra_options={"timeout": 10})
            return f"MLflow answers at {self.tracking_uri()}"

        return _probe(check)


class TritonHook(HttpHook):
    """An NVIDIA Triton server (http connection; extra ``grpc_port``, ``metrics_port``, ``admin_header``,
    ``admin_token``: the header that opens Triton's restricted model-control APIs)."""

    conn_name_attr = "triton_conn_id"
    default_conn_name = "triton_default"
    conn_type = "http"
    hook_name = "NVIDIA Triton"
    # Connection extras that describe Triton, not HTTP headers (HttpHook sends unknown extras as headers):
    # the admin token in particular goes only on model-control calls (get_client), never on every request.
    NON_HEADER_EXTRAS = ("grpc_port", "metrics_port", "admin_header", "admin_token")

    def __init__(self, triton_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(method="GET", http_conn_id=triton_conn_id, **kwargs)
        self.triton_conn_id = triton_conn_id

    def get_conn(self, headers: dict[Any, Any] | None = None, extra_options: dict[str, Any] | None = None) -> Session:
        """The provider's session, without the Triton-only extras as headers."""
        session = super().get_conn(headers, extra_options)
        for key in self.NON_HEADER_EXTRAS:
            session.headers.pop(key, None)
        return session

    def admin(self) -> tuple[str | None, str | None]:
        """``(admin_header, admin_token)`` from the connection's extras (None when unset)."""
        extra = self.get_connection(self.triton_conn_id).extra_dejson
        return extra.get("admin_header") or None, extra.get("admin_token") or None

    def url(self) -> str:
        """``host:port`` of the HTTP endpoint (the form ``tritonclient.http`` takes)."""
        conn = self.get_connection(self.triton_conn_id)
        host = (conn.host or "").split("://", 1)[-1].rstrip("/")
        return f"{host}:{conn.port or 8000}"

    def get_client(self):
        """A ``tritonclient.http.InferenceServerClient`` for this server; with an ``admin_token`` extra, its
        model-control calls (load, unload, repository index, config) send the admin header."""
        import tritonclient.http as httpclient

        from modelops.serving.triton.admin import with_admin

        client = httpclient.InferenceServerClient(url=self.url(), network_timeout=120.0, connection_timeout=10.0)
        return with_admin(client, *self.admin())

    def test_connection(self) -> tuple[bool, str]:
        """GET ``/v2/health/live`` (KServe v2 liveness)."""

        def check() -> str:
            self.run("/v2/health/live", extra_options={"timeout": 10})
            return f"Triton at {self.url()} is live"

        return _probe(check)


class _BaseUrlHook(HttpHook):
    """An HTTP service known by its base URL; subclasses set the connection attributes and the probe path."""

    probe_path = "/"
    what = "the service"

    def __init__(self, conn_id: str, **kwargs: Any) -> None:
        super().__init__(method="GET", http_conn_id=conn_id, **kwargs)
        setattr(self, self.conn_name_attr, conn_id)

    def url(self) -> str:
        """The base URL, without a trailing slash (e.g. ``http://127.0.0.1:9090``)."""
        return self.url_from_endpoint("").rstrip("/")

    def test_connection(self) -> tuple[bool, str]:
        """GET the probe path."""

        def check() -> str:
            self.run(self.probe_path, extra_options={"timeout": 10})
            return f"{self.what} answers at {self.url()}"

        return _probe(check)


class PrometheusHook(_BaseUrlHook):
    """The Prometheus server that scrapes Triton and the gateway (http connection: host, port, schema)."""

    conn_name_attr = "prometheus_conn_id"
    default_conn_name = "prometheus_default"
    conn_type = "http"
    hook_name = "Prometheus"
    probe_path = "/-/ready"
    what = "Prometheus"

    def __init__(self, prometheus_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(prometheus_conn_id, **kwargs)


class GatewayHook(_BaseUrlHook):
    """The serving gateway (http connection: host, port, schema); its ``/metrics`` needs no key."""

    conn_name_attr = "gateway_conn_id"
    default_conn_name = "gateway_default"
    conn_type = "http"
    hook_name = "ModelOps serving gateway"
    probe_path = "/v2/health/live"
    what = "the gateway"

    def __init__(self, gateway_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(gateway_conn_id, **kwargs)


class OpenWebUIHook(_BaseUrlHook):
    """Open WebUI, the chat UI (http connection: host, port, schema; login/password: an Open WebUI admin)."""

    conn_name_attr = "openwebui_conn_id"
    default_conn_name = "openwebui_default"
    conn_type = "http"
    hook_name = "Open WebUI"
    probe_path = "/health"
    what = "Open WebUI"

    def __init__(self, openwebui_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(openwebui_conn_id, **kwargs)

    def admin(self) -> tuple[str, str]:
        """``(email, password)`` of the admin the refresh signs in as (the connection's login and password).

        Raises:
            ValueError: the connection has no login or no password.
        """
        conn = self.get_connection(self.openwebui_conn_id)
        if not conn.login or not conn.password:
            raise ValueError(f"connection {self.openwebui_conn_id!r} needs the Open WebUI admin as login/password")
        return conn.login, conn.password


class ModelOpsS3Hook(S3Hook):
    """The S3 store of artifacts and the Triton repository (aws connection: keys, extra ``endpoint_url``)."""

    conn_name_attr = "aws_conn_id"
    default_conn_name = "s3_default"
    conn_type = "aws"
    hook_name = "ModelOps S3"

    def __init__(self, aws_conn_id: str | None = default_conn_name, **kwargs: Any) -> None:
        super().__init__(aws_conn_id=aws_conn_id, **kwargs)

    def s3_config(self) -> S3Config:
        """Endpoint, keys and region resolved the way every AWS hook resolves them, for ``modelops``."""
        from modelops.storage import S3Config

        creds = self.get_credentials()
        return S3Config(endpoint_url=self.conn_config.endpoint_url, access_key=creds.access_key,
                        secret_key=creds.secret_key, region=self.conn_region_name or "us-east-1")

    def storage(self) -> Storage:
        """A ``modelops.storage.Storage`` on this store."""
        from modelops.storage import Storage

        return Storage(self.s3_config())

    def test_connection(self) -> tuple[bool, str]:
        """List the buckets (AwsBaseHook's STS check does not apply to an S3-only endpoint)."""

        def check() -> str:
            buckets = [b["Name"] for b in self.get_conn().list_buckets().get("Buckets", [])]
            return f"buckets: {', '.join(buckets) or '(none)'}"

        return _probe(check)


class AirflowApiHook(HttpHook):
    """Airflow's public REST API v2 (http connection: API server URL, login and password of an API user).

    Tokens come from ``POST /auth/token`` and are kept for this hook's lifetime (renewed once on a 401);
    neither the password nor the token is ever logged.
    """

    conn_name_attr = "airflow_api_conn_id"
    default_conn_name = "airflow_api_default"
    conn_type = "http"
    hook_name = "Airflow REST API"

    def __init__(self, airflow_api_conn_id: str = default_conn_name, timeout: float = 30.0, **kwargs: Any) -> None:
        super().__init__(method="POST", http_conn_id=airflow_api_conn_id, **kwargs)
        self.airflow_api_conn_id = airflow_api_conn_id
        self.timeout = timeout
        self._token: str | None = None

    def _session(self) -> Session:
        session = self.get_conn()
        session.auth = None  # the API takes a bearer token, not the connection's basic auth
        return session

    def _login(self, session: Session) -> str:
        conn = self.get_connection(self.airflow_api_conn_id)
        if not conn.login:
            raise ValueError(f"connection {self.airflow_api_conn_id!r} has no login for Airflow's /auth/token")
        resp = session.post(self.url_from_endpoint("/auth/token"), timeout=self.timeout,
                            json={"username": conn.login, "password": conn.password or ""})
        if resp.status_code not in (200, 201):
            raise PermissionError(f"Airflow API login as {conn.login!r} refused: HTTP {resp.status_code}")
        return resp.json()["access_token"]

    def request(self, method: str, path: str, **kwargs: Any) -> Response:
        """``method`` on ``/api/v2<path>`` with a bearer token; the response whatever its status."""
        session = self._session()
        for attempt in range(2):
            if self._token is None:
                self._token = self._login(session)
            resp = session.request(method, self.url_from_endpoint(f"/api/v2{path}"), timeout=self.timeout,
                                   headers={"Authorization": f"Bearer {self._token}"}, **kwargs)
            if resp.status_code != 401 or attempt:
                return resp
            self._token = None  # expired: log in again once
        raise AssertionError("unreachable")

    def create_dag_run(self, dag_id: str, run_id: str, conf: dict[str, Any] | None = None,
                       note: str | None = None) -> str:
        """Queue a run of ``dag_id`` under ``run_id``: ``created``, or ``exists`` when that run id is taken.

        Raises:
            RuntimeError: the API refused the run for another reason (unknown DAG, bad conf, ...).
        """
        body: dict[str, Any] = {"dag_run_id": run_id, "logical_date": None, "conf": conf or {}}
        if note:
            body["note"] = note
        resp = self.request("POST", f"/dags/{dag_id}/dagRuns", json=body)
        if resp.status_code in (200, 201):
            return CREATED
        if resp.status_code == 409:  # a run with this id exists: the idempotent no-op
            return EXISTS
        detail = resp.text.strip().splitlines()[0][:200] if resp.text.strip() else ""
        raise RuntimeError(f"creating run {run_id} of {dag_id} failed: HTTP {resp.status_code} {detail}")

    def create_dag_runs(self, requests: Iterable[RunRequest], dag_id: str) -> dict[str, str]:
        """One :meth:`create_dag_run` per request; run id -> ``created`` or ``exists``."""
        return {r.run_id: self.create_dag_run(dag_id, r.run_id, r.conf, r.note) for r in requests}

    def test_connection(self) -> tuple[bool, str]:
        """Log in and read ``/api/v2/version``."""
        try:
            resp = self.request("GET", "/version")
            if resp.status_code != 200:
                return False, f"GET /api/v2/version -> HTTP {resp.status_code}"
            return True, f"Airflow {resp.json().get('version', '?')} at {self.url_from_endpoint('')}"
        except Exception as exc:  # noqa: BLE001
            return False, _first_line(exc)


def conn_ids(overrides: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The connection ids of :data:`CONN_ID_DEFAULTS`, with those ``overrides`` (e.g. ``default_args``) sets.

    Raises:
        ValueError: a connection id is set but not a non-empty string.
    """
    ids = dict(CONN_ID_DEFAULTS)
    for key in CONN_ID_DEFAULTS:
        value = (overrides or {}).get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{key} must be a non-empty connection id, got {value!r}")
        ids[key] = value.strip()
    return ids


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
