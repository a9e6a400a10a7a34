"""The REST client's reads and field updates survive the embedded stack's transient server errors; its writes are never repeated.

A real HTTP server on 127.0.0.1 plays Airflow's API: a token endpoint, then scripted answers per path.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from modelops.local import airflow_api
from modelops.local.airflow_api import AirflowAPI, AirflowAPIError


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setattr(airflow_api, "IDEMPOTENT_RETRIES", (0.01, 0.01, 0.01))
    script: dict[str, list[int]] = {}
    seen: list[tuple[str, str]] = []
    posted: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            sent = self.rfile.read(length)
            if self.command == "POST" and sent and self.path.endswith("/dagRuns"):
                posted.append(json.loads(sent))
            if self.path == "/auth/token":
                code, body = 201, {"access_token": "t"}
            else:
                seen.append((self.command, self.path))
                codes = script.get(self.path, [200])
                code = codes.pop(0) if len(codes) > 1 else codes[0]
                body = {"state": "success"} if code == 200 else {"detail": "database is locked"}
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = _answer

        def log_message(self, *args) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    api = AirflowAPI(f"http://127.0.0.1:{httpd.server_address[1]}", "admin", "pw", timeout=5)
    api.posted = posted
    yield api, script, seen
    httpd.shutdown()


def test_a_read_that_meets_a_locked_database_is_retried(server):
    api, script, seen = server
    script["/api/v2/dags/d/dagRuns/r"] = [500, 500, 200]
    assert api.request("GET", "/dags/d/dagRuns/r") == {"state": "success"}
    assert seen.count(("GET", "/api/v2/dags/d/dagRuns/r")) == 3


def test_the_unpause_before_a_trigger_is_retried_and_the_trigger_sent_once(server):
    api, script, seen = server
    script["/api/v2/dags/d"] = [500, 200]
    api.trigger("d", {"model_name": "m"})
    assert seen == [("PATCH", "/api/v2/dags/d"), ("PATCH", "/api/v2/dags/d"), ("POST", "/api/v2/dags/d/dagRuns")]
    assert api.posted[0]["dag_run_id"].startswith("manual__")  # Airflow's own form, so trigger_kind says manual


def test_a_trigger_that_meets_a_locked_database_is_retried_with_the_same_run_id(server):
    api, script, seen = server
    script["/api/v2/dags/d/dagRuns"] = [500, 500, 200]
    api.trigger("d", {"model_name": "m"})
    assert seen.count(("POST", "/api/v2/dags/d/dagRuns")) == 3
    assert len({body["dag_run_id"] for body in api.posted}) == 1  # one run, however many attempts


def test_a_retried_trigger_whose_first_attempt_created_the_run_returns_that_run(server):
    api, script, seen = server
    script["/api/v2/dags/d/dagRuns"] = [500, 409]
    assert api.trigger("d", {}, run_id="r1") == {"state": "success"}
    assert seen[-2:] == [("POST", "/api/v2/dags/d/dagRuns"), ("GET", "/api/v2/dags/d/dagRuns/r1")]
    script["/api/v2/dags/d/dagRuns"] = [409]
    with pytest.raises(AirflowAPIError, match="POST /dags/d/dagRuns -> 409"):  # the first attempt: a real conflict
        api.trigger("d", {}, run_id="r1")


def test_a_read_that_keeps_failing_ends_with_the_last_answer(server):
    api, script, seen = server
    script["/api/v2/dags/d"] = [500]
    with pytest.raises(AirflowAPIError, match=r"GET /dags/d -> 500: .*database is locked"):
        api.request("GET", "/dags/d")
    assert seen.count(("GET", "/api/v2/dags/d")) == 4  # the first try and 3 repeats


def test_a_plain_post_is_never_repeated(server):
    api, script, seen = server
    script["/api/v2/dags/d/dagRuns"] = [500, 200]
    with pytest.raises(AirflowAPIError, match="POST /dags/d/dagRuns -> 500"):
        api.request("POST", "/dags/d/dagRuns", json={"conf": {}})
    assert seen.count(("POST", "/api/v2/dags/d/dagRuns")) == 1


def test_a_client_error_is_not_retried(server):
    api, script, seen = server
    script["/api/v2/dags/missing"] = [404]
    with pytest.raises(AirflowAPIError, match="404"):
        api.request("GET", "/dags/missing")
    assert seen.count(("GET", "/api/v2/dags/missing")) == 1


def test_a_server_that_is_gone_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(airflow_api, "IDEMPOTENT_RETRIES", (0.01,))
    api = AirflowAPI("http://127.0.0.1:9", "admin", "pw", timeout=2)
    api._token = "t"
    with pytest.raises(AirflowAPIError, match=r"GET /dags/d: ConnectionError"):
        api.request("GET", "/dags/d")
