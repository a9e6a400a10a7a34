"""Helpers of the trigger tests and bench: a stoppable forwarding proxy, cheap registry models, run polling.

The proxy stands between MLflow and the receiver on Airflow's API server: stopping it is a receiver that is
down (connection refused, MLflow retries three times and drops the event), and it keeps the last
delivery it forwarded so a test can replay it byte for byte.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from modelops.contracts.naming import TAG_OPT_IN
from modelops.local.airflow_api import AirflowAPI, AirflowAPIError

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
FORWARDED_HEADERS = ("Content-Type", "X-MLflow-Delivery-Id", "X-MLflow-Timestamp", "X-MLflow-Signature")


@dataclass
class Delivery:
    """One request MLflow sent (as forwarded), and the receiver's answer."""

    headers: dict[str, str]
    body: bytes
    status: int
    answer: bytes
    at: float = field(default_factory=time.time)


def post(url: str, body: bytes, headers: dict[str, str], timeout: float = 10.0) -> tuple[int, bytes]:
    """POST ``body``; (status, answer) for any status."""
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class ForwardingProxy:
    """``http://127.0.0.1:<port>/hook`` -> ``target``; :meth:`stop` makes it refuse connections."""

    def __init__(self, target: str, port: int = 0) -> None:
        self.target = target
        self.deliveries: list[Delivery] = []
        self._server: ThreadingHTTPServer | None = None
        self.port = port
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: self.headers[k] for k in FORWARDED_HEADERS if self.headers.get(k)}
                status, answer = post(proxy.target, body, headers)
                proxy.deliveries.append(Delivery(headers, body, status, answer))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def fake_model(client: Any, name: str, versions: int = 1, opted_in: bool = True, tags: dict | None = None) -> list[str]:
    """A registered model with ``versions`` cheap versions (the source is not a real model: runs started for
    it fail at resolve, which is enough to see a trigger work). Returns the version numbers."""
    client.create_registered_model(name, tags={**({TAG_OPT_IN: "true"} if opted_in else {}), **(tags or {})})
    return [client.create_model_version(name, f"s3://mlflow/trigger-tests/{name}/{i}").version for i in range(versions)]


def get_run(api: AirflowAPI, run_id: str, dag_id: str = "optimize_model") -> dict[str, Any] | None:
    """The dag run, or None when it does not exist."""
    try:
        return api.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
    except AirflowAPIError as exc:
        if "404" in str(exc):
            return None
        raise


def wait_run(api: AirflowAPI, run_id: str, timeout_s: float, poll_s: float = 0.1,
             dag_id: str = "optimize_model") -> tuple[dict[str, Any] | None, float]:
    """Poll until the run exists; (run or None, seconds waited)."""
    started = time.monotonic()
    while True:
        run = get_run(api, run_id, dag_id)
        if run is not None or time.monotonic() - started > timeout_s:
            return run, time.monotonic() - started
        time.sleep(poll_s)


def runs_for_model(api: AirflowAPI, model: str, dag_id: str = "optimize_model") -> list[dict[str, Any]]:
    """Every run of ``dag_id`` whose conf names ``model``."""
    runs = api.request("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 1000}).get("dag_runs", [])
    return [r for r in runs if (r.get("conf") or {}).get("model_name") == model]


def wait_webhook_live(client: Any, proxy: ForwardingProxy, timeout_s: float = 90.0) -> float:
    """Move an alias on a probe model (not opted in: no run) until MLflow delivers to ``proxy``.

    MLflow caches its webhook list for up to 60 s, so a freshly registered webhook is not live at once.
    """
    probe = unique("probe")
    versions = fake_model(client, probe, versions=2, opted_in=False)
    started = time.monotonic()
    i = 0
    while time.monotonic() - started < timeout_s:
        seen = len(proxy.deliveries)
        client.set_registered_model_alias(probe, "champion", versions[i % 2])
        i += 1
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if len(proxy.deliveries) > seen:
                client.delete_registered_model(probe)
                return time.monotonic() - started
            time.sleep(0.1)
    raise TimeoutError(f"MLflow delivered nothing to {proxy.url} within {timeout_s:g} s")


def unpause(api: AirflowAPI, *dag_ids: str) -> None:
    for dag_id in dag_ids:
        api.wait_for_dag(dag_id)
        api.request("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
