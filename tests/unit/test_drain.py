"""drain.retire: waits for the gateways' routes revision and in-flight gauge, never unloads a routed deployment."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from tritonclient.utils import InferenceServerException

from modelops.contracts.naming import routes_uri
from modelops.serving.drain import gateway_view, metrics_url, retire

BUCKET = "triton"


class FakeTriton:
    """Records unloads; ``missing`` models answer like Triton does for a model it does not have."""

    def __init__(self, missing: set[str] = frozenset(), broken: set[str] = frozenset()) -> None:
        self.unloaded: list[tuple[str, float]] = []
        self.missing, self.broken = missing, broken

    def unload_model(self, name: str) -> None:
        if name in self.missing:
            raise InferenceServerException(f"failed to unload '{name}', no version is available", status="400")
        if name in self.broken:
            raise InferenceServerException("connection refused", status=None)
        self.unloaded.append((name, time.monotonic()))


def exposition(revision: int | None, in_flight: dict[str, int], model: str = "m") -> str:
    lines = ["# HELP modelops_gateway_in_flight Requests being forwarded to Triton now.",
             "# TYPE modelops_gateway_in_flight gauge"]  # fmt: skip
    lines += [f'modelops_gateway_in_flight{{deployment="{d}",model="{model}"}} {n}.0' for d, n in in_flight.items()]
    lines += ["# HELP modelops_gateway_routes_revision Revision of the routes file being served.",
              "# TYPE modelops_gateway_routes_revision gauge"]  # fmt: skip
    if revision is not None:
        lines.append(f'modelops_gateway_routes_revision{{model="{model}"}} {revision}.0')
    lines.append('modelops_gateway_routes_revision{model="other"} 99.0')
    return "\n".join(lines) + "\n"


class Gateway:
    """A /metrics endpoint whose text the test changes while retire polls it."""

    def __init__(self) -> None:
        self.text = exposition(None, {})
        self.hits = 0
        gw = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                gw.hits += 1
                body = gw.text.encode()
                self.send_response(200 if self.path == "/metrics" else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gateways():
    made: list[Gateway] = []
    yield lambda: made.append(Gateway()) or made[-1]
    for g in made:
        g.close()


def route(s3, model: str, weights: dict[str, int], revision: int = 1) -> None:
    doc = {"model": model, "revision": revision, "routes": [{"deployment": d, "weight": w} for d, w in weights.items()]}
    s3.write_bytes(routes_uri(BUCKET, model), json.dumps(doc).encode())


def test_gateway_view_parses_the_exposition():
    assert gateway_view(exposition(3, {"a": 2, "b": 0}), "m") == (3.0, {"a": 2.0, "b": 0.0})
    assert gateway_view(exposition(None, {}), "m") == (None, {})
    assert metrics_url("http://g:9000/") == "http://g:9000/metrics"
    assert metrics_url("http://g:9000/metrics") == "http://g:9000/metrics"


def test_retire_waits_for_the_revision_then_for_in_flight_requests(s3, gateways):
    route(s3, "m", {"new": 100}, revision=5)
    g1, g2 = gateways(), gateways()
    g1.text = exposition(4, {"old": 3})  # still on the old routes, busy
    g2.text = exposition(5, {"old": 0})
    client = FakeTriton()
    marks: dict[str, float] = {}

    def script():
        time.sleep(0.6)
        g1.text = exposition(5, {"old": 2})  # reloaded, two requests still running
        marks["revision"] = time.monotonic()
        time.sleep(0.6)
        g1.text = exposition(5, {"old": 0})
        marks["drained"] = time.monotonic()

    threading.Thread(target=script, daemon=True).start()
    started = time.monotonic()
    out = retire(client, [g1.url, g2.url + "/metrics"], "m", ["old"], 5, storage=s3, triton_bucket=BUCKET, timeout_s=10)
    assert out == {"old": "unloaded"}
    assert [name for name, _ in client.unloaded] == ["old"]
    assert client.unloaded[0][1] >= marks["drained"] > marks["revision"] > started
    assert client.unloaded[0][1] - marks["drained"] < 1.0  # polled every 0.2 s
    assert g1.hits >= 5


def test_retire_never_unloads_a_routed_deployment(s3, gateways):
    route(s3, "m", {"new": 100}, revision=2)
    route(s3, "other", {"shared": 100})
    g = gateways()
    g.text = exposition(2, {})
    client = FakeTriton(missing={"gone"})
    out = retire(client, [g.url], "m", ["new", "shared", "old", "gone"], 2, storage=s3, triton_bucket=BUCKET)
    assert out["new"] == "kept: still routed by m"
    assert out["shared"] == "kept: still routed by other"
    assert out["old"] == "unloaded" and out["gone"] == "unloaded"  # Triton's 400 for a model it does not have
    assert [n for n, _ in client.unloaded] == ["old"]


def test_retire_times_out_then_unloads_anyway_and_reports_failures(s3, gateways):
    route(s3, "m", {"new": 100}, revision=3)
    g = gateways()
    g.text = exposition(3, {"old": 1, "older": 0})
    client = FakeTriton(broken={"older"})
    started = time.monotonic()
    out = retire(client, [g.url], "m", ["old", "older"], 3, storage=s3, triton_bucket=BUCKET, timeout_s=0.7)
    assert time.monotonic() - started < 3
    assert out["old"].startswith("timeout: 1 requests still in flight to old on gateway")
    assert out["old"].endswith("after 0.7 s; unloaded anyway")
    assert out["older"].startswith("kept: unload failed (0): connection refused")
    assert [n for n, _ in client.unloaded] == ["old"]


def test_retire_without_gateways_unloads_at_once_and_an_unreachable_gateway_times_out(s3):
    route(s3, "m", {"new": 100}, revision=3)
    client = FakeTriton()
    started = time.monotonic()
    assert retire(client, [], "m", ["old"], 3, storage=s3, triton_bucket=BUCKET) == {"old": "unloaded"}
    assert time.monotonic() - started < 0.5
    out = retire(client, ["http://127.0.0.1:9"], "m", ["old2"], 3, storage=s3, triton_bucket=BUCKET, timeout_s=0.5)
    assert out["old2"].startswith("timeout: gateway metrics http://127.0.0.1:9/metrics unreadable")


def test_deploy_retries_a_lost_routes_race_and_unloads_the_loser(s3, monkeypatch):
    from modelops.serving import deploy as dep
    from modelops.serving.routes import RoutesConflict, read_routes

    route(s3, "m", {"m--v1": 100}, revision=1)
    client = FakeTriton()
    real, raced = dep.write_routes, []

    def racing(storage, bucket, current, weights, *, by):
        if not raced:  # another run routes "m--v2" between our read and our write
            raced.append(real(storage, bucket, current, {"m--v1": 50, "m--v2": 50}, by="run2"))
        return real(storage, bucket, current, weights, by=by)

    monkeypatch.setattr(dep, "write_routes", racing)
    before, after = dep._write_routes_retrying(client, s3, BUCKET, read_routes(s3, BUCKET, "m"), "m--v3", 10, "run1")
    assert before.weights() == {"m--v1": 50, "m--v2": 50} and after.weights() == {"m--v3": 10, "m--v1": 45, "m--v2": 45}

    def lost(*args, **kwargs):
        raise RoutesConflict("changed")

    monkeypatch.setattr(dep, "write_routes", lost)
    with pytest.raises(dep.DeployError, match=r"^routes of m kept changing \(4 conditional writes lost"):
        dep._write_routes_retrying(client, s3, BUCKET, read_routes(s3, BUCKET, "m"), "m--v4", 10, "run3")
    assert [n for n, _ in client.unloaded] == ["m--v4"]
    with pytest.raises(dep.DeployError):  # the fresh routes name it: never unloaded
        dep._write_routes_retrying(client, s3, BUCKET, read_routes(s3, BUCKET, "m"), "m--v3", 10, "run1")
    assert [n for n, _ in client.unloaded] == ["m--v4"]
