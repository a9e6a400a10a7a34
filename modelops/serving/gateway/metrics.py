"""Prometheus metrics of the gateway, in a registry of its own (one per app, so tests can build several).

- ``modelops_gateway_requests_total{model, deployment, code}``: answered requests (``deployment`` is
  ``""`` when none was picked: auth errors, unknown model, no deployment);
- ``modelops_gateway_request_duration_seconds{model, deployment}``: latency histogram of forwarded requests;
- ``modelops_gateway_weighted_requests_total{model, deployment, code}`` and
  ``modelops_gateway_weighted_request_duration_seconds{model, deployment}``: the same for the requests the routes'
  weights placed, i.e. without those a client pinned with ``X-Session-Id`` to a deployment of a split model: what
  rollout analysis judges, so a client cannot pin itself to the canary and steer its verdict;
- ``modelops_gateway_in_flight{model, deployment}``: requests being forwarded now (a rollout waits for 0
  before it unloads a replaced deployment);
- ``modelops_gateway_routes_revision{model}``: revision of the routes file being served;
- ``modelops_gateway_route_weight{model, deployment}``: weight (percent) of each deployment in the routes file
  being served (alert rules join it with Triton's per-model series to find a routed deployment Triton lacks);
- ``modelops_rollout_*{model}``: the latest rollout of each model, read from its rollout state document by
  :mod:`.rollout_status` (``modelops_rollout_info{model, deployment, status, mode}`` = 1,
  ``modelops_rollout_updated_timestamp_seconds``, ``modelops_rollout_canary_weight``,
  ``modelops_rollout_step_interval_seconds``): the rollout alerts (stuck, rolled back) read them.
"""

from __future__ import annotations

from contextvars import ContextVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from modelops.serving.gateway.routing import RouteTable

# Sub-millisecond to tens of seconds: small CNNs answer in ~1 ms, big batches in seconds. Steps of about 1.5x so
# a rollout's p99 comparison (histogram_quantile interpolates inside a bucket) is not blurred by wide buckets.
_BUCKETS = (0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
            0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST
# Whether the current request's deployment was chosen by its X-Session-Id among several (set at every pick, in
# the request's own task): such a request is left out of the weighted series.
PINNED: ContextVar[bool] = ContextVar("modelops_gateway_pinned", default=False)


class GatewayMetrics:
    """The gateway's series."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "modelops_gateway_requests", "Requests answered by the gateway.",
            ("model", "deployment", "code"), registry=self.registry,
        )
        self.latency = Histogram(
            "modelops_gateway_request_duration_seconds", "Latency of requests forwarded to Triton.",
            ("model", "deployment"), buckets=_BUCKETS, registry=self.registry,
        )
        self.weighted_requests = Counter(
            "modelops_gateway_weighted_requests", "Requests placed by the routes' weights (no session pin): what "
            "rollout analysis judges.", ("model", "deployment", "code"), registry=self.registry,
        )
        self.weighted_latency = Histogram(
            "modelops_gateway_weighted_request_duration_seconds", "Latency of the requests placed by the routes' "
            "weights.", ("model", "deployment"), buckets=_BUCKETS, registry=self.registry,
        )
        self.in_flight = Gauge(
            "modelops_gateway_in_flight", "Requests being forwarded to Triton now.",
            ("model", "deployment"), registry=self.registry,
        )
        self.routes_revision = Gauge(
            "modelops_gateway_routes_revision", "Revision of the routes file being served.",
            ("model",), registry=self.registry,
        )
        self.route_weight = Gauge(
            "modelops_gateway_route_weight", "Weight (percent) of a deployment in the routes file being served.",
            ("model", "deployment"), registry=self.registry,
        )
        self.rollout_info = Gauge(
            "modelops_rollout_info", "The latest rollout of a model (1): its deployment, status and mode.",
            ("model", "deployment", "status", "mode"), registry=self.registry,
        )
        self.rollout_updated = Gauge(
            "modelops_rollout_updated_timestamp_seconds", "When the latest rollout's state last changed (Unix time).",
            ("model",), registry=self.registry,
        )
        self.rollout_weight = Gauge(
            "modelops_rollout_canary_weight", "Percent of traffic the rollout's current step gives the new deployment.",
            ("model",), registry=self.registry,
        )
        self.rollout_interval = Gauge(
            "modelops_rollout_step_interval_seconds", "Seconds the rollout waits on each step before judging it.",
            ("model",), registry=self.registry,
        )

    def observe(self, model: str, deployment: str, code: int, seconds: float | None = None) -> None:
        """Count one answered request (and its latency when it was forwarded); in the weighted series too unless
        this request's pick was pinned by its session (:data:`PINNED`)."""
        self.requests.labels(model, deployment, str(code)).inc()
        if seconds is not None:
            self.latency.labels(model, deployment).observe(seconds)
        if deployment and PINNED.get():
            return
        self.weighted_requests.labels(model, deployment, str(code)).inc()
        if seconds is not None:
            self.weighted_latency.labels(model, deployment).observe(seconds)

    def set_routes(self, tables: dict[str, RouteTable]) -> None:
        """Revisions of the tables now served; models whose routes file is gone are dropped."""
        for model, table in tables.items():
            self.routes_revision.labels(model).set(table.revision)
        for labels in list(self.routes_revision._metrics):
            if labels[0] not in tables:
                self.routes_revision.remove(*labels)
        live = {(model, d): w for model, t in tables.items() for d, w in zip(t.deployments, t.weights, strict=True)}
        for (model, deployment), weight in live.items():
            self.route_weight.labels(model, deployment).set(weight)
        for labels in list(self.route_weight._metrics):
            if labels not in live:
                self.route_weight.remove(*labels)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
