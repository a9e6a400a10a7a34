"""Chaos and fuzz tests on the real stack (issue 14): faults and hostile input, with what was lost and what the
user sees.

They reuse the integration tests' session fixtures (the same stack: ``MODELOPS_STACK_DIR`` /
``MODELOPS_PORT_OFFSET``, default ``.stack-test`` on ports +100; ``MODELOPS_TEST_KEEP_STACK=1`` leaves it up).
While they run, ``optimize_model`` is paused: the runs they start stay queued (counted, never executed, so
hundreds of runs cost nothing on a 2-core machine) and are deleted afterwards; the DAG's pause state is restored.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
from urllib.parse import urlsplit

import pytest

from tests.integration.conftest import (  # noqa: F401 - session fixtures shared with the integration tests
    airflow,
    mlflow_client,
    publish_plus_k,
    settings,
    stack,
    storage,
    triton,
)

DAG_ID = "optimize_model"


@pytest.fixture(scope="session")
def quiet_optimize(airflow):  # noqa: F811
    """``optimize_model`` paused for the chaos session; a list the tests append the run ids they caused to
    (deleted at the end, so a kept stack is not left with hundreds of queued runs)."""
    dag = airflow.wait_for_dag(DAG_ID)
    was_paused = bool(dag.get("is_paused"))
    airflow.request("PATCH", f"/dags/{DAG_ID}", json={"is_paused": True})
    created: list[str] = []
    yield created
    for run_id in created:
        with contextlib.suppress(Exception):
            airflow.request("DELETE", f"/dags/{DAG_ID}/dagRuns/{run_id}")
    airflow.request("PATCH", f"/dags/{DAG_ID}", json={"is_paused": was_paused})


@pytest.fixture(scope="session")
def webhook_secret(stack):  # noqa: F811
    """The stack's webhook secret (created if missing, as ``modelops webhook register`` does)."""
    from modelops.local.webhook_cli import ensure_secret
    from modelops.settings import Settings

    return ensure_secret(Settings.from_env().stack_dir, False)


def raw_post(url: str, body: bytes, headers: dict[str, str], timeout: float = 30.0) -> tuple[int, bytes]:
    """POST ``body`` and read the answer even when the server answers before reading it all (a 413 sent on
    the ``Content-Length`` alone, then the connection closed under the sender)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.putrequest("POST", parts.path or "/", skip_accept_encoding=True)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            conn.putheader(key, value)
        conn.endheaders()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, socket.timeout):
            conn.sock.sendall(body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def runs_for_model(airflow, model: str, dag_id: str = DAG_ID) -> dict[str, dict]:  # noqa: F811
    """Every run of ``dag_id`` whose conf names ``model``, by run id (all pages: the API caps a page at 100)."""
    found: dict[str, dict] = {}
    offset = 0
    while True:
        page = airflow.request("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100, "offset": offset})
        runs = page.get("dag_runs", [])
        found.update({r["dag_run_id"]: r for r in runs if (r.get("conf") or {}).get("model_name") == model})
        offset += len(runs)
        if not runs or offset >= page.get("total_entries", 0):
            return found
