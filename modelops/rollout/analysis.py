"""Rollout analysis: each deployment's success rate and p99 from the gateway's series in Prometheus, and a verdict.

The queries read the gateway's own metrics (``modelops/serving/gateway/metrics.py``) over a window of the step,
its *weighted* series: the requests the routes' weights placed, without those a client pinned to a deployment with
``X-Session-Id`` (a client cannot pin itself to the canary and steer the verdict)::

    sum(increase(modelops_gateway_weighted_requests_total{model="m",deployment="d"}[60s]))              # requests
    sum(increase(modelops_gateway_weighted_requests_total{model="m",deployment="d",code=~"5.."}[60s]))  # errors
    histogram_quantile(0.99, sum by (le) (rate(modelops_gateway_weighted_request_duration_seconds_bucket{...}[60s])))

:func:`judge` is pure (recorded values in, verdict out), so the rules are tested without a server, as Flagger's
metric checks are: a success-rate floor, an optional absolute p99 bound and a p99 regression bound against the
stable deployment, and no verdict before ``min_requests`` canary requests, unless the errors already seen make
the success-rate floor unreachable (fast rollback).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import httpx

REQUESTS = "modelops_gateway_weighted_requests_total"
LATENCY = "modelops_gateway_weighted_request_duration_seconds"
SCRAPE_INTERVAL_S = 2.0
MIN_WINDOW_S = 4 * SCRAPE_INTERVAL_S  # increase()/rate() need several samples inside the range


class PrometheusError(Exception):
    """A query that Prometheus refused or that could not reach it (one line)."""


@dataclass(frozen=True)
class Thresholds:
    """What a canary must meet at every step."""

    min_success_rate: float = 0.99  # share of non-5xx answers of the canary over the window
    max_p99_ms: float | None = None  # absolute bound on the canary's p99, if given
    max_p99_regression: float = 0.25  # canary p99 <= stable p99 * (1 + this)
    min_requests: int = 20  # fewer canary requests in the window -> no verdict yet
    # a regression must also exceed this many ms: p99s interpolated inside one histogram bucket on a busy host
    # differ by a few ms between two identical deployments (seen: 15.4 vs 19.8 ms), which is noise, not a regression
    p99_slack_ms: float = 5.0


@dataclass(frozen=True)
class DeploymentStats:
    """One deployment's traffic over the analysis window."""

    deployment: str
    requests: float  # requests answered in the window (gateway counter increase)
    success_rate: float | None  # None when requests == 0
    p99_ms: float | None  # histogram_quantile over the window; None when no data
    # cumulative latency histogram over the window: ((upper bound ms, requests at or under it), ...), +Inf last
    buckets: tuple[tuple[float, float], ...] = ()

    def slower_than(self, bound_ms: float) -> float | None:
        """Requests slower than the first bucket bound at or above ``bound_ms`` (a conservative count: requests
        between ``bound_ms`` and that bucket bound are not counted); None without a histogram."""
        if not self.buckets:
            return None
        total = self.buckets[-1][1]
        for le, count in self.buckets:
            if le >= bound_ms:
                return max(total - count, 0.0)
        return 0.0

    @property
    def errors(self) -> float:
        """5xx answers in the window (derived from requests and success rate)."""
        return 0.0 if self.success_rate is None else self.requests * (1.0 - self.success_rate)


@dataclass(frozen=True)
class Verdict:
    """The judgement of one step: passed, failed (with one line per reason) or not yet decidable."""

    passed: bool | None  # None = not enough canary requests yet (min_requests)
    reasons: list[str]  # one line each; why it failed (or why no verdict)
    canary: DeploymentStats
    stable: DeploymentStats | None


class PrometheusClient:
    """Instant queries against Prometheus' HTTP API (``GET {url}/api/v1/query``)."""

    def __init__(self, url: str, timeout_s: float = 10.0):
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"PrometheusClient({self.url!r})"

    def query(self, promql: str) -> float | None:
        """The value of a one-element instant vector (or a scalar); None when the vector is empty or NaN.

        Raises:
            PrometheusError: unreachable server, an error answer, or more than one series.
        """
        data = self._data(promql)
        result = data.get("result")
        if data.get("resultType") == "scalar":
            return _number(result[1])
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(f"expected one series from {promql!r}, got {len(result)}")
        return _number(result[0]["value"][1])

    def vector(self, promql: str) -> list[dict[str, Any]]:
        """The series of an instant vector: ``[{"metric": {labels}, "value": [ts, "text"]}, ...]``.

        Raises:
            PrometheusError: unreachable server or an error answer.
        """
        return list(self._data(promql).get("result") or [])

    def _data(self, promql: str) -> dict[str, Any]:
        try:
            resp = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            raise PrometheusError(f"Prometheus at {self.url} is unreachable: {exc}") from None
        try:
            doc = resp.json()
        except ValueError:
            raise PrometheusError(f"Prometheus at {self.url} answered {resp.status_code} without JSON") from None
        if resp.status_code != 200 or doc.get("status") != "success":
            what = f"{doc.get('errorType', resp.status_code)}: {doc.get('error', 'no error text')}"
            raise PrometheusError(f"Prometheus refused {promql!r}: {what}".replace("\n", " "))
        return doc.get("data") or {}


def _number(text: str) -> float | None:
    value = float(text)
    return None if math.isnan(value) else value


def escape_label(value: str) -> str:
    """A PromQL double-quoted string body: backslash, quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def window(window_s: float) -> str:
    """A PromQL range of at least four scrape intervals, in whole seconds (``[60s]``)."""
    return f"[{max(math.ceil(window_s), math.ceil(MIN_WINDOW_S))}s]"


def queries(model: str, deployment: str, window_s: float) -> dict[str, str]:
    """The three PromQL queries of :func:`stats` (requests, errors, p99_ms)."""
    sel = f'model="{escape_label(model)}",deployment="{escape_label(deployment)}"'
    w = window(window_s)
    return {
        "requests": f"sum(increase({REQUESTS}{{{sel}}}{w}))",
        "errors": f'sum(increase({REQUESTS}{{{sel},code=~"5.."}}{w}))',
        "p99_ms": f"histogram_quantile(0.99, sum by (le) (rate({LATENCY}_bucket{{{sel}}}{w}))) * 1000",
    }


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): how likely ``k`` or more of ``n`` requests are slow by chance."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    below = 0.0
    for i in range(k):
        below += math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                          + i * math.log(p) + (n - i) * math.log1p(-p))
    return max(0.0, 1.0 - below)


def histogram(prom: PrometheusClient, model: str, deployment: str, window_s: float) -> tuple[tuple[float, float], ...]:
    """The cumulative latency histogram of ``deployment`` over the window: ((le ms, requests), ...), +Inf last."""
    sel = f'model="{escape_label(model)}",deployment="{escape_label(deployment)}"'
    promql = f"sum by (le) (increase({LATENCY}_bucket{{{sel}}}{window(window_s)}))"
    rows = []
    for series in prom.vector(promql):
        le = series["metric"].get("le")
        value = _number(series["value"][1])
        if le is not None and value is not None:
            rows.append((math.inf if le == "+Inf" else float(le) * 1000, value))
    return tuple(sorted(rows))


def stats(prom: PrometheusClient, model: str, deployment: str, window_s: float) -> DeploymentStats:
    """Requests, success rate and p99 (ms) of ``deployment`` serving ``model`` over the last ``window_s``."""
    q = queries(model, deployment, window_s)
    requests = max(prom.query(q["requests"]) or 0.0, 0.0)
    errors = min(max(prom.query(q["errors"]) or 0.0, 0.0), requests)
    p99 = prom.query(q["p99_ms"])
    if p99 is not None and math.isinf(p99):
        p99 = None
    success = None if requests <= 0 else 1.0 - errors / requests
    return DeploymentStats(deployment=deployment, requests=requests, success_rate=success, p99_ms=p99,
                           buckets=histogram(prom, model, deployment, window_s) if requests > 0 else ())


def judge(canary: DeploymentStats, stable: DeploymentStats | None, t: Thresholds) -> Verdict:
    """Pass, fail (one line per broken rule) or no verdict yet; pure.

    Below ``t.min_requests`` canary requests there is no verdict, unless the canary's errors alone make
    ``t.min_success_rate`` unreachable even if the rest of ``min_requests`` all succeed: then it fails at once.
    """
    n = round(canary.requests)
    if canary.requests < t.min_requests:
        errors = round(canary.errors)
        best = (t.min_requests - errors) / t.min_requests if t.min_requests > 0 else 1.0
        if errors > 0 and best < t.min_success_rate:
            why = (
                f"canary failed {errors} of {n} requests: success rate cannot reach {t.min_success_rate:g} "
                f"over the {t.min_requests} requests needed"
            )
            return Verdict(False, [why], canary, stable)
        return Verdict(None, [f"canary served {n} requests < {t.min_requests} needed for a verdict"], canary, stable)
    reasons: list[str] = []
    if canary.success_rate is not None and canary.success_rate < t.min_success_rate:
        reasons.append(
            f"canary success rate {canary.success_rate:.3f} < {t.min_success_rate:g} over {n} requests"
        )
    p99 = canary.p99_ms
    if p99 is not None and t.max_p99_ms is not None and p99 > t.max_p99_ms:
        reasons.append(f"canary p99 {p99:.1f} ms > max {t.max_p99_ms:g} ms")
    if p99 is not None and stable is not None and stable.p99_ms is not None:
        bound = max(stable.p99_ms * (1 + t.max_p99_regression), stable.p99_ms + t.p99_slack_ms)
        if p99 > bound and _significantly_slow(canary, bound):
            reasons.append(
                f"canary p99 {p99:.1f} ms > stable p99 {stable.p99_ms:.1f} ms * {1 + t.max_p99_regression:g}"
            )
    return Verdict(not reasons, reasons, canary, stable)


def analyze(
    prom: PrometheusClient, model: str, canary: str, stable: str | None, window_s: float, t: Thresholds
) -> Verdict:
    """Query both deployments over the window and :func:`judge` the canary."""
    canary_stats = stats(prom, model, canary, window_s)
    stable_stats = stats(prom, model, stable, window_s) if stable else None
    return judge(canary_stats, stable_stats, t)


TAIL_SHARE = 0.01  # a p99: 1% of requests may be slower
TAIL_P_VALUE = 0.001  # how unlikely the canary's slow share must be under "no slower than the bound"


def _significantly_slow(canary: DeploymentStats, bound_ms: float) -> bool:
    """True when more than 1% of the canary's requests are slower than ``bound_ms`` beyond chance.

    The p99 of a canary's few hundred requests is one of its slowest few: on a busy host two identical
    deployments' p99s differed by 30% (19.6 vs 26.3 ms). Under "the canary is no slower than the bound" at most
    1% of its requests exceed it; the regression counts only when the count the histogram shows is unlikely
    (binomial tail < 0.001) under that. Without a histogram the p99 comparison alone decides.
    """
    slow = canary.slower_than(bound_ms)
    n = round(canary.requests)
    if slow is None or n <= 0:
        return True
    return binomial_tail(round(slow), n, TAIL_SHARE) < TAIL_P_VALUE
