"""Airflow's REST API v2: ``AirflowApiHook.create_dag_run()`` (the triggers' way to start runs)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from airflow.providers.http.hooks.http import HttpHook

from modelops_airflow.hooks._common import first_line

if TYPE_CHECKING:
    from requests import Response, Session

    from modelops.triggers.events import RunRequest

CREATED, EXISTS = "created", "exists"


class AirflowApiHook(HttpHook):
    """Airflow's public REST API v2 (http connection: API server URL, login and password of an API user).

    Tokens come from ``POST /auth/token`` and are kept for this hook's lifetime (renewed once on a 401);
    neither the password nor the token is ever logged.
    """

    conn_name_attr = "airflow_api_conn_id"
    default_conn_name = "airflow_api_default"
    conn_type = "modelops_airflow_api"  # an HTTP connection (host, port, schema): HttpHook reads it
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
            return False, first_line(exc)
