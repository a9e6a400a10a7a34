"""monitoring/: alert rules checked and unit-tested by the real promtool, dashboards generated as code and checked
(JSON model, every expression parsed by promtool, every metric name one our exporters expose), and the gateway's
rollout gauges that the rollout alerts read, fed from real rollout state documents."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from modelops.rollout.state import RolloutState
from modelops.serving.gateway import GatewayConfig, create_app
from modelops.serving.gateway.metrics import GatewayMetrics
from modelops.serving.gateway.rollout_status import RolloutStatus, rollouts_root
from modelops.serving.gateway.routing import parse_routes
from modelops.settings import REPO_ROOT

MONITORING = REPO_ROOT / "monitoring"
RULE_FILES = sorted((MONITORING / "rules").glob("*.yml"))
TEST_FILES = sorted((MONITORING / "tests").glob("*.yml"))
SEVERITIES = {"critical", "warning", "info"}
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
                "group_right", "inf", "nan"}

# monitoring/dashboards/generate.py is a script, not a package module: load it from its path
_spec = importlib.util.spec_from_file_location("modelops_dashboards", MONITORING / "dashboards" / "generate.py")
assert _spec is not None and _spec.loader is not None
generate = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = generate  # dataclasses look their module up while the class is built
_spec.loader.exec_module(generate)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool") or "/usr/bin/promtool"
    # `make test` installs Debian's prometheus (scripts/install_tools.sh): a missing promtool is a broken setup
    assert Path(path).exists(), "promtool not installed: run `make tools` (scripts/install_tools.sh)"
    return subprocess.run([path, *args], check=False, capture_output=True, text=True, timeout=120)


def alerts() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                assert rule["alert"] not in found, f"alert {rule['alert']} defined twice"
                found[rule["alert"]] = rule
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (strings, label matchers, ranges and grouping removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = re.findall(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", text)
    return {n for n in names if n.lower() not in PROMQL_WORDS}


def known_metrics() -> set[str]:
    """What our exporters expose: dcgm-exporter's collector, Triton 2.51's families, the gateway's registry."""
    known = {"up"}  # written by Prometheus for every target
    for line in (MONITORING / "exporters" / "dcgm-exporter-counters.csv").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            known.add(line.split(",")[0].strip())
    triton = (MONITORING / "exporters" / "triton-2.51.txt").read_text()
    known |= set(re.findall(r"^# HELP (\S+)", triton, re.MULTILINE))
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    for family in GatewayMetrics().registry.collect():
        known |= {family.name + s for s in suffixes[family.type]}
    return known


# -- alert rules ----------------------------------------------------------------------------------------------------
def test_promtool_checks_every_rule_file() -> None:
    proc = promtool("check", "rules", *map(str, RULE_FILES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("SUCCESS") == len(RULE_FILES) == 4
    assert len(alerts()) >= 17


def test_promtool_unit_tests_pass() -> None:
    proc = promtool("test", "rules", *map(str, TEST_FILES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("SUCCESS") == len(TEST_FILES) == 4


def test_every_alert_is_tested_firing_and_silent() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    assert set(alerts()) - firing == set(), "alerts with no firing test"
    assert set(alerts()) - silent == set(), "alerts with no test where they stay silent"


def test_a_wrong_expectation_fails_promtool(tmp_path: Path) -> None:
    """The unit tests are not vacuous: the same file with one expected value changed fails."""
    original = (MONITORING / "tests" / "gateway_test.yml").read_text()
    assert "fail with 5xx" in original and "10% of requests" in original
    broken = tmp_path / "gateway_test.yml"
    broken.write_text(original.replace("../rules/", f"{MONITORING}/rules/").replace("10% of requests", "11% of requests"))
    proc = promtool("test", "rules", str(broken))
    assert proc.returncode != 0
    assert "GatewayHigh5xxRate" in proc.stdout + proc.stderr


def test_every_alert_has_severity_summary_description_and_a_runbook_section() -> None:
    runbook = (MONITORING / "RUNBOOK.md").read_text()
    sections = {h.strip().lower() for h in re.findall(r"^## (.+)$", runbook, re.MULTILINE)}
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in SEVERITIES, name
        notes = rule["annotations"]
        assert {"summary", "description", "runbook", "runbook_url"} <= set(notes), name
        assert notes["runbook_url"] == f"monitoring/RUNBOOK.md#{name.lower()}", name
        assert name.lower() in sections, f"RUNBOOK.md has no section for {name}"


def test_rules_read_only_metrics_our_exporters_expose() -> None:
    known = known_metrics()
    assert {"DCGM_FI_DEV_XID_ERRORS", "nv_inference_queue_duration_us", "modelops_gateway_requests_total",
            "modelops_gateway_request_duration_seconds_bucket", "modelops_rollout_info"} <= known
    used: set[str] = set()
    for name, rule in alerts().items():
        names = metric_names(rule["expr"])
        assert names, name
        assert names <= known, f"{name} reads unknown metrics {names - known}"
        used |= names
    for family in ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE",
                   "nv_inference_request_failure", "modelops_gateway_route_weight",
                   "modelops_rollout_updated_timestamp_seconds"):
        assert family in used


def test_metric_name_extraction() -> None:
    expr = ('max by (model, deployment) (modelops_gateway_route_weight{model=~"a|b"} > 0) unless on (deployment) '
            'label_replace(max by (model) (nv_inference_count[5m] offset 1h), "deployment", "$1", "model", "(.+)")'
            " and time() - x_seconds > 3 * 1e3")
    assert metric_names(expr) == {"modelops_gateway_route_weight", "nv_inference_count", "x_seconds"}


# -- dashboards -----------------------------------------------------------------------------------------------------
def test_written_dashboards_are_what_the_generator_makes() -> None:
    assert generate.main(["--check"]) == 0, "run python monitoring/dashboards/generate.py"
    assert set(generate.dashboards()) == {"gpu", "triton", "gateway"}


@pytest.mark.parametrize("name", ["gpu", "triton", "gateway"])
def test_dashboard_json_model(name: str) -> None:
    model = json.loads((MONITORING / "dashboards" / f"{name}.json").read_text())
    assert model["schemaVersion"] >= 36 and model["uid"] == f"modelops-{name}" and model["title"]
    variables = {v["name"] for v in model["templating"]["list"]}
    assert "datasource" in variables
    ids = [p["id"] for p in model["panels"]]
    assert len(ids) == len(set(ids)) >= 6
    for panel in model["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"] == panel["datasource"]
            used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval", "1"}
            assert used <= variables, f"{panel['title']} uses undefined variables {used - variables}"


def _expressions() -> list[tuple[str, str]]:
    return [(f"{name}: {panel['title']}", target["expr"])
            for name, model in generate.dashboards().items() for panel in model["panels"]
            for target in panel["targets"]]


def test_every_dashboard_expression_is_promql_promtool_parses(tmp_path: Path) -> None:
    """promtool has no expression checker, but it parses every rule's expression: one recording rule each."""
    rules = [{"record": f"dashboard:expr_{i}", "expr": expr.replace("$__rate_interval", "5m")
              .replace('"$host"', '".*"').replace('"$model"', '".*"')}
             for i, (_, expr) in enumerate(_expressions())]
    path = tmp_path / "dashboards.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    proc = promtool("check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout
    path.write_text(yaml.safe_dump({"groups": [{"name": "bad", "rules": [{"record": "x", "expr": "sum by (a"}]}]}))
    assert promtool("check", "rules", str(path)).returncode != 0  # and it does reject a bad one


def test_dashboards_read_only_metrics_our_exporters_expose() -> None:
    known = known_metrics()
    for where, expr in _expressions():
        names = metric_names(expr)
        assert names and names <= known, f"{where} reads unknown metrics {names - known}"


# -- the gateway's rollout and routes gauges -------------------------------------------------------------------------
def _samples(metrics: GatewayMetrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value
            for family in metrics.registry.collect() for s in family.samples if s.name == name}


def _state(model: str, status: str, step_index: int) -> dict[str, Any]:
    return RolloutState(
        model=model, deployment=f"{model}--v2-ort", stable=[f"{model}--v1-ort"], steps=[10, 50, 100],
        step_index=step_index, mode="canary", status=status, run_id="manual__1", started_at="2026-11-28T06:00:00+00:00",
        updated_at="2026-11-28T06:10:00+00:00", thresholds={}, interval_s=300.0, routes_revision=3,
    ).to_json()


def test_rollout_status_exports_the_latest_rollout_of_each_model(tmp_path: Path) -> None:
    routes = tmp_path / "repo" / "routes"
    routes.mkdir(parents=True)
    root = Path(rollouts_root(str(routes)))
    assert root == tmp_path / "repo" / "rollouts"
    assert rollouts_root("s3://triton/routes/") == "s3://triton/rollouts"
    root.mkdir()
    (root / "resnet.json").write_text(json.dumps(_state("resnet", "running", 1)))
    (root / "bert.json").write_text(json.dumps(_state("bert", "running", -1)))
    (root / "notes.txt").write_text("not a rollout")
    (root / "broken.json").write_text("{")
    metrics = GatewayMetrics()
    status = RolloutStatus(str(root), metrics, poll_s=0.01)

    asyncio.run(status.poll_once())
    info = _samples(metrics, "modelops_rollout_info")
    key = (("deployment", "resnet--v2-ort"), ("mode", "canary"), ("model", "resnet"), ("status", "running"))
    assert info == {key: 1.0, (("deployment", "bert--v2-ort"), ("mode", "canary"), ("model", "bert"),
                               ("status", "running")): 1.0}
    assert _samples(metrics, "modelops_rollout_canary_weight") == {(("model", "resnet"),): 50.0,
                                                                   (("model", "bert"),): 0.0}
    assert _samples(metrics, "modelops_rollout_updated_timestamp_seconds")[(("model", "resnet"),)] == 1795846200.0
    assert _samples(metrics, "modelops_rollout_step_interval_seconds")[(("model", "resnet"),)] == 300.0

    (root / "resnet.json").write_text(json.dumps(_state("resnet", "rolled_back", 1)))
    (root / "bert.json").unlink()
    asyncio.run(status.poll_once())
    assert _samples(metrics, "modelops_rollout_info") == {key[:3] + (("status", "rolled_back"),): 1.0}
    assert set(_samples(metrics, "modelops_rollout_canary_weight")) == {(("model", "resnet"),)}
    text = metrics.render().decode()
    assert 'modelops_rollout_info{deployment="resnet--v2-ort",mode="canary",model="resnet",status="rolled_back"} 1.0' \
        in text


def test_route_weights_follow_the_served_routes() -> None:
    metrics = GatewayMetrics()
    doc = {"revision": 4, "routes": [{"deployment": "resnet--v1-ort", "weight": 90},
                                     {"deployment": "resnet--v2-ort", "weight": 10}]}
    metrics.set_routes({"resnet": parse_routes("resnet", json.dumps(doc).encode())})
    assert _samples(metrics, "modelops_gateway_route_weight") == {
        (("deployment", "resnet--v1-ort"), ("model", "resnet")): 90.0,
        (("deployment", "resnet--v2-ort"), ("model", "resnet")): 10.0}
    doc = {"revision": 5, "routes": [{"deployment": "resnet--v1-ort", "weight": 100},
                                     {"deployment": "resnet--v2-ort", "weight": 0}]}
    metrics.set_routes({"resnet": parse_routes("resnet", json.dumps(doc).encode())})
    assert _samples(metrics, "modelops_gateway_route_weight") == {
        (("deployment", "resnet--v1-ort"), ("model", "resnet")): 100.0}
    metrics.set_routes({})
    assert _samples(metrics, "modelops_gateway_route_weight") == {}


def test_the_gateway_serves_route_weights_and_rollout_state_on_metrics(tmp_path: Path) -> None:
    """The app's lifespan starts the rollout poller beside the routes watcher; /metrics shows both."""
    routes, rollouts = tmp_path / "routes", tmp_path / "rollouts"
    routes.mkdir()
    rollouts.mkdir()
    (routes / "resnet.json").write_text(json.dumps({"model": "resnet", "revision": 2, "routes": [
        {"deployment": "resnet--v1-ort", "weight": 90}, {"deployment": "resnet--v2-ort", "weight": 10}]}))
    (rollouts / "resnet.json").write_text(json.dumps(_state("resnet", "running", 0)))
    config = GatewayConfig(triton_url="http://127.0.0.1:9", routes_uri=str(routes), keys_db=tmp_path / "keys.db")

    async def scenario() -> str:
        app = create_app(config)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=10) as client:
                response = await client.get("/metrics")
                assert response.status_code == 200
                return response.text

    text = asyncio.run(scenario())
    assert 'modelops_gateway_route_weight{deployment="resnet--v2-ort",model="resnet"} 10.0' in text
    assert 'modelops_rollout_info{deployment="resnet--v2-ort",mode="canary",model="resnet",status="running"} 1.0' in text
    assert 'modelops_rollout_canary_weight{model="resnet"} 10.0' in text
