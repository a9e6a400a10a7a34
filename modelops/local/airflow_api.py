"""A small client for Airflow 3's REST API v2 (SimpleAuthManager token), used by the demo, tests and bench."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import requests

FINISHED = {"success", "failed"}
IDEMPOTENT_METHODS = frozenset({"GET", "PATCH"})
IDEMPOTENT_RETRIES = (1.0, 1.0, 1.0)  # pause before each repeat of a read, times the attempt number (1 s, 2 s, 3 s)


class AirflowAPIError(Exception):
    pass


class AirflowAPI:
    def __init__(self, url: str, username: str, password: str, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.username, self.password, self.timeout = username, password, timeout
        self._token: str | None = None
        self.session = requests.Session()

    def _auth(self) -> dict[str, str]:
        if self._token is None:
            resp = self.session.post(f"{self.url}/auth/token", json={"username": self.username, "password": self.password},
                                     timeout=self.timeout)
            if resp.status_code not in (200, 201):
                raise AirflowAPIError(f"Airflow login failed ({resp.status_code}): {resp.text[:200]}")
            self._token = resp.json()["access_token"]
        return {"Authorization": f"Bearer {self._token}"}

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One API call; idempotent ones (GET, and PATCH, which sets fields to the values sent: unpausing a DAG,
        answering an approval) are retried on a server error or a lost connection (IDEMPOTENT_RETRIES, with
        backoff): the embedded stack's SQLite answers 500 "database is locked" while several runs start their tasks
        at once (CI: the unpause before the sixth of six triggers). POST is never repeated here (:meth:`trigger` retries its
        own, made safe by its run id)."""
        retries = IDEMPOTENT_RETRIES if method.upper() in IDEMPOTENT_METHODS else ()
        for attempt, pause in enumerate((*retries, None)):
            try:
                resp = self._send(method, path, **kwargs)
            except (requests.ConnectionError, requests.Timeout) as exc:
                if pause is None:
                    raise AirflowAPIError(f"{method} {path}: {type(exc).__name__}: {str(exc)[:200]}") from None
            else:
                if resp.status_code < 500 or pause is None:
                    break
            time.sleep(pause * (attempt + 1))
        if resp.status_code >= 400:
            raise AirflowAPIError(f"{method} {path} -> {resp.status_code}: {resp.text[:300]}")
        return resp.json() if resp.content else None

    def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        resp = self.session.request(method, f"{self.url}/api/v2{path}", headers=self._auth(), timeout=self.timeout, **kwargs)
        if resp.status_code == 401:  # token expired: log in again once
            self._token = None
            resp = self.session.request(method, f"{self.url}/api/v2{path}", headers=self._auth(), timeout=self.timeout,
                                        **kwargs)
        return resp

    def wait_for_dag(self, dag_id: str, timeout_s: float = 180.0) -> dict[str, Any]:
        """Wait until the DAG processor has parsed ``dag_id``; surface import errors instead of timing out silently."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.request("GET", f"/dags/{dag_id}")
            except AirflowAPIError as exc:
                if "404" not in str(exc):
                    raise
            errors = self.request("GET", "/importErrors").get("import_errors", [])
            if errors:
                first = errors[0]
                raise AirflowAPIError(f"DAG import error in {first.get('filename')}: {first.get('stack_trace', '')[-300:]}")
            if time.monotonic() > deadline:
                raise AirflowAPIError(f"DAG {dag_id!r} did not appear within {timeout_s:g} s")
            time.sleep(2)

    def trigger(self, dag_id: str, conf: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
        """Unpause ``dag_id`` and start a run of it (``run_id``, or one of Airflow's own ``manual__<time>`` form).

        The run id is always sent, so a POST answered 5xx (SQLite "database is locked" while several runs start)
        is retried safely: a retry that finds the run created (409) returns it, never a second run.
        """
        self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
        run_id = run_id or f"manual__{datetime.now(UTC).isoformat()}"
        body: dict[str, Any] = {"logical_date": None, "conf": conf, "dag_run_id": run_id}
        path = f"/dags/{dag_id}/dagRuns"
        for attempt, pause in enumerate((*IDEMPOTENT_RETRIES, None)):
            try:
                resp = self._send("POST", path, json=body)
            except (requests.ConnectionError, requests.Timeout) as exc:
                if pause is None:
                    raise AirflowAPIError(f"POST {path}: {type(exc).__name__}: {str(exc)[:200]}") from None
                time.sleep(pause * (attempt + 1))
                continue
            if resp.status_code == 409 and attempt:  # an earlier attempt did create it
                return self.request("GET", f"{path}/{run_id}")
            if resp.status_code < 500 or pause is None:
                break
            time.sleep(pause * (attempt + 1))
        if resp.status_code >= 400:
            raise AirflowAPIError(f"POST {path} -> {resp.status_code}: {resp.text[:300]}")
        return resp.json()

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        tis = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances").get("task_instances", [])
        return {ti["task_id"]: ti["state"] for ti in tis}

    def wait_for_run(
        self,
        dag_id: str,
        run_id: str,
        timeout_s: float = 1800.0,
        on_change: Callable[[dict[str, str | None]], None] | None = None,
        poll_s: float = 2.0,
    ) -> str:
        """Poll until the run finishes; call ``on_change`` with the task states whenever they change."""
        deadline = time.monotonic() + timeout_s
        last: dict[str, str | None] = {}
        while time.monotonic() < deadline:
            states = self.task_states(dag_id, run_id)
            if states != last and on_change:
                on_change(states)
            last = states
            run = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
            if run["state"] in FINISHED:
                return run["state"]
            time.sleep(poll_s)
        raise AirflowAPIError(f"run {run_id} of {dag_id} did not finish within {timeout_s:g} s")

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        entry = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
                             params={"deserialize": "true", "stringify": "false"})
        return entry.get("value")

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        """The task's log as plain text (one line per structured log event)."""
        resp = self.session.get(
            f"{self.url}/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            headers={**self._auth(), "Accept": "application/json"}, timeout=self.timeout)
        if resp.status_code >= 400:
            raise AirflowAPIError(f"log of {task_id} -> {resp.status_code}: {resp.text[:300]}")
        content = resp.json().get("content", [])
        if isinstance(content, str):
            return content
        return "\n".join(str(e.get("event", "")) if isinstance(e, dict) else str(e) for e in content)
