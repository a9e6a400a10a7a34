"""Rollout analysis: the pure verdict, the PromQL it sends, and stats() against a real Prometheus (or a stand-in)."""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qs, urlparse

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from modelops.rollout.analysis import (
    DeploymentStats,
    PrometheusClient,
    PrometheusError,
    Thresholds,
    escape_label,
    judge,
    queries,
    stats,
)

T = Thresholds()


def canary(requests: float, success: float | None, p99: float | None = 10.0) -> DeploymentStats:
    return DeploymentStats("m--v2-a", requests, success, p99)


STABLE = DeploymentStats("m--v1-a", 1000, 1.0, 20.1)


def test_a_good_canary_passes():
    v = judge(canary(143, 1.0, 20.0), STABLE, T)
    assert v.passed is True and v.reasons == []


def test_success_rate_below_the_floor_fails_with_one_line():
    v = judge(canary(143, 0.962, 10.0), STABLE, T)
    assert v.passed is False
    assert v.reasons == ["canary success rate 0.962 < 0.99 over 143 requests"]


def test_p99_regression_against_stable_fails():
    v = judge(canary(143, 1.0, 41.2), STABLE, T)
    assert v.passed is False
    assert v.reasons == ["canary p99 41.2 ms > stable p99 20.1 ms * 1.25"]
    assert judge(canary(143, 1.0, 25.1), STABLE, T).passed is True  # 25.1 <= 20.1 * 1.25 = 25.125


def test_a_p99_difference_within_the_slack_is_noise_not_a_regression():
    # two identical deployments on a busy host: 15.4 vs 19.8 ms is +29% but only 4.4 ms (slack 5 ms)
    stable = DeploymentStats("m--v1-a", 1000, 1.0, 15.4)
    assert judge(DeploymentStats("m--v2-b", 150, 1.0, 19.8), stable, T).passed is True
    assert judge(DeploymentStats("m--v2-b", 150, 1.0, 20.6), stable, T).passed is False
    assert judge(DeploymentStats("m--v2-b", 150, 1.0, 19.8), stable, Thresholds(p99_slack_ms=0)).passed is False


def test_absolute_p99_bound_and_several_reasons():
    v = judge(canary(100, 0.5, 41.2), STABLE, Thresholds(max_p99_ms=30))
    assert v.passed is False
    assert v.reasons == [
        "canary success rate 0.500 < 0.99 over 100 requests",
        "canary p99 41.2 ms > max 30 ms",
        "canary p99 41.2 ms > stable p99 20.1 ms * 1.25",
    ]
    assert all("\n" not in r for r in v.reasons)


def test_too_few_requests_gives_no_verdict():
    v = judge(canary(7, 1.0, 500.0), STABLE, T)
    assert v.passed is None
    assert v.reasons == ["canary served 7 requests < 20 needed for a verdict"]
    assert judge(canary(0, None, None), None, T).passed is None


def test_errors_that_make_the_floor_unreachable_fail_fast():
    # 3 errors in 7 requests: even 20 requests with no further error give 17/20 = 0.85 < 0.99
    v = judge(canary(7, 4 / 7), STABLE, T)
    assert v.passed is False
    assert v.reasons == ["canary failed 3 of 7 requests: success rate cannot reach 0.99 over the 20 requests needed"]
    # with a lenient floor one error in 5 is still reachable: 19/20 = 0.95 >= 0.9 -> wait
    assert judge(canary(5, 0.8), STABLE, Thresholds(min_success_rate=0.9)).passed is None
    # ... and two are not: 18/20 = 0.9 is fine, 3 errors -> 0.85 < 0.9
    assert judge(canary(5, 0.4), STABLE, Thresholds(min_success_rate=0.9)).passed is False


def test_missing_latencies_skip_the_latency_rules():
    assert judge(canary(50, 1.0, None), STABLE, Thresholds(max_p99_ms=1)).passed is True
    assert judge(canary(50, 1.0, 99.0), DeploymentStats("s", 0, None, None), T).passed is True
    assert judge(canary(50, 1.0, 99.0), None, T).passed is True  # first deployment: nothing to compare with


def test_queries_escape_label_values_and_use_a_window_of_whole_seconds():
    assert escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    q = queries('m"x', "d", 3)
    assert q["requests"] == 'sum(increase(modelops_gateway_weighted_requests_total{model="m\\"x",deployment="d"}[8s]))'
    assert 'code=~"5.."' in q["errors"] and "[8s]" in q["errors"]
    assert q["p99_ms"].startswith("histogram_quantile(0.99, sum by (le) (rate(modelops_gateway_weighted_request_dur")
    assert q["p99_ms"].endswith("[8s]))) * 1000")
    assert "[61s]" in queries("m", "d", 60.2)["requests"]


class _FakeProm(BaseHTTPRequestHandler):
    """Answers /api/v1/query like Prometheus' documented JSON; the value depends on the query."""

    answers: ClassVar[dict[str, object]] = {}

    def do_GET(self):
        query = parse_qs(urlparse(self.path).query)["query"][0]
        for needle, answer in self.answers.items():
            if needle in query:
                break
        else:
            answer = {"status": "success", "data": {"resultType": "vector", "result": []}}
        body = json.dumps(answer).encode()
        self.send_response(400 if answer.get("status") == "error" else 200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _vector(*values: str) -> dict:
    result = [{"metric": {"i": str(i)}, "value": [time.time(), v]} for i, v in enumerate(values)]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


@pytest.fixture
def fake_prom():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeProm)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_stats_from_prometheus_answers(fake_prom):
    _FakeProm.answers = {'code=~"5.."': _vector("4"), "histogram_quantile": _vector("12.5"),
                         "requests_total": _vector("200")}  # fmt: skip
    s = stats(PrometheusClient(fake_prom), "m", "m--v2-a", 30)
    assert s == DeploymentStats("m--v2-a", 200.0, 0.98, 12.5)
    _FakeProm.answers = {"histogram_quantile": _vector("NaN")}  # no traffic: empty vectors and NaN
    assert stats(PrometheusClient(fake_prom), "m", "d", 30) == DeploymentStats("d", 0.0, None, None)


def test_prometheus_errors_are_one_line(fake_prom):
    _FakeProm.answers = {"": {"status": "error", "errorType": "bad_data", "error": "parse error\nat char 3"}}
    with pytest.raises(PrometheusError) as err:
        PrometheusClient(fake_prom).query("sum(")
    assert "bad_data: parse error at char 3" in str(err.value) and "\n" not in str(err.value)
    _FakeProm.answers = {"": _vector("1", "2")}
    with pytest.raises(PrometheusError, match="expected one series"):
        PrometheusClient(fake_prom).query("up")
    with pytest.raises(PrometheusError, match="unreachable"):
        PrometheusClient("http://127.0.0.1:9", timeout_s=1).query("up")


# -- a real Prometheus scraping a prometheus_client exposition --------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not shutil.which("prometheus") and not Path("/usr/bin/prometheus").exists(),
                    reason="no prometheus binary")  # fmt: skip
def test_stats_against_a_real_prometheus(tmp_path):
    registry = CollectorRegistry()
    requests = Counter("modelops_gateway_weighted_requests", "r", ("model", "deployment", "code"), registry=registry)
    latency = Histogram("modelops_gateway_weighted_request_duration_seconds", "l", ("model", "deployment"),
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1), registry=registry)  # fmt: skip
    stop = threading.Event()

    def traffic():  # canary: 10% errors and ~40 ms; stable: no errors and ~8 ms
        while not stop.is_set():
            for i in range(10):
                requests.labels('m"1', "canary", "500" if i == 0 else "200").inc()
                latency.labels('m"1', "canary").observe(0.04)
                requests.labels('m"1', "stable", "200").inc()
                latency.labels('m"1', "stable").observe(0.008)
            time.sleep(0.05)

    class Exposition(BaseHTTPRequestHandler):
        def do_GET(self):
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    target = ThreadingHTTPServer(("127.0.0.1", 0), Exposition)
    threading.Thread(target=target.serve_forever, daemon=True).start()
    threading.Thread(target=traffic, daemon=True).start()
    port = _free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 500ms, evaluation_interval: 1s}\n"
        "scrape_configs:\n- job_name: gw\n  static_configs:\n"
        f"  - targets: ['127.0.0.1:{target.server_address[1]}']\n"
    )
    proc = subprocess.Popen(
        [shutil.which("prometheus") or "/usr/bin/prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        prom = PrometheusClient(f"http://127.0.0.1:{port}", timeout_s=2)
        deadline = time.monotonic() + 20
        canary_stats = None
        while time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                canary_stats = stats(prom, 'm"1', "canary", 8)
            except PrometheusError:
                continue  # not up yet
            if canary_stats.requests > 50 and canary_stats.p99_ms is not None:
                break
        assert canary_stats is not None and canary_stats.requests > 50
        stable_stats = stats(prom, 'm"1', "stable", 8)
        assert canary_stats.success_rate == pytest.approx(0.9, abs=0.03)
        assert 25 < canary_stats.p99_ms <= 50 and 5 < stable_stats.p99_ms <= 10
        assert stable_stats.success_rate == 1.0
        verdict = judge(canary_stats, stable_stats, T)
        assert verdict.passed is False and len(verdict.reasons) == 2
    finally:
        stop.set()
        proc.terminate()
        proc.wait(10)
        target.shutdown()
        target.server_close()


def test_binomial_tail():
    from modelops.rollout.analysis import binomial_tail

    assert binomial_tail(0, 100, 0.01) == 1.0
    assert abs(binomial_tail(1, 100, 0.01) - (1 - 0.99**100)) < 1e-9
    assert binomial_tail(3, 324, 0.01) > 0.5  # ~3 slow of 324 is what a p99 means
    assert binomial_tail(30, 324, 0.01) < 1e-9
    assert binomial_tail(101, 100, 0.01) == 0.0


def _histogram(n: int, slow_ms: float, slow: int) -> tuple[tuple[float, float], ...]:
    """A cumulative histogram: n - slow requests under 10 ms, ``slow`` at ``slow_ms``."""
    bounds = (5.0, 10.0, 20.0, 30.0, 50.0, 100.0, 250.0, math.inf)
    return tuple((le, float(n - slow) + (slow if le >= slow_ms else 0)) for le in bounds)


def test_a_p99_over_the_bound_by_chance_is_not_a_regression():
    stable = DeploymentStats("m--v1-a", 3000, 1.0, 19.6)
    # 324 requests, p99 26.3 ms: only 3 over the bound (24.5 ms; counted from the 30 ms bucket) -> chance
    noisy = DeploymentStats("m--v2-b", 324, 1.0, 26.3, _histogram(324, 28.0, 3))
    assert judge(noisy, stable, T).passed is True
    # the same p99 with 30 of 324 requests slow is a real regression
    slow = DeploymentStats("m--v2-b", 324, 1.0, 26.3, _histogram(324, 40.0, 30))
    verdict = judge(slow, stable, T)
    assert verdict.passed is False and verdict.reasons == ["canary p99 26.3 ms > stable p99 19.6 ms * 1.25"]
    # without a histogram the p99 comparison alone decides
    assert judge(DeploymentStats("m--v2-b", 324, 1.0, 26.3), stable, T).passed is False
