"""Grafana dashboards of ModelOps, as code: ``python monitoring/dashboards/generate.py`` writes ``<name>.json`` here.

Three dashboards on one Prometheus data source (picked by the ``datasource`` variable, so they import into any
Grafana >= 10 unchanged): ``gpu`` (dcgm-exporter), ``triton`` (Triton's metrics port) and ``gateway`` (the
gateway's requests, latency, routes and rollouts). ``--check`` exits 1 when a written file differs from what the
generator makes now (``tests/unit/test_monitoring.py`` runs the same comparison). Every expression uses only
metric names the exporters expose (``monitoring/exporters/``, the gateway's registry); the test checks that and
has promtool parse each expression.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCHEMA_VERSION = 39  # Grafana 10.x / 11.x dashboard JSON
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"


@dataclass
class Panel:
    """One panel: ``targets`` are ``(expr, legend)`` pairs; ``kind`` a Grafana panel type."""

    title: str
    targets: list[tuple[str, str]]
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 12
    height: int = 8
    description: str = ""
    stack: bool = False
    instant: bool = False


@dataclass
class Dashboard:
    uid: str
    title: str
    panels: list[Panel]
    variables: list[tuple[str, str]] = field(default_factory=list)  # (name, label_values query)
    description: str = ""


def _variable(name: str, query: str) -> dict[str, Any]:
    return {
        "name": name, "label": name, "type": "query", "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-values"}, "definition": query,
        "includeAll": True, "allValue": ".*", "multi": True, "refresh": 2, "sort": 1,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "hide": 0,
    }


def _panel(panel: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    targets = [
        {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend,
         "range": not panel.instant, "instant": panel.instant}
        for i, (expr, legend) in enumerate(panel.targets)
    ]
    custom: dict[str, Any] = {}
    options: dict[str, Any] = {}
    if panel.kind == "timeseries":
        custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 30 if panel.stack else 10,
                  "stacking": {"mode": "normal" if panel.stack else "none", "group": "A"}}
        options = {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                   "tooltip": {"mode": "multi", "sort": "desc"}}
    elif panel.kind == "stat":
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                   "colorMode": "value", "graphMode": "none", "textMode": "value_and_name"}
    elif panel.kind == "table":
        options = {"showHeader": True}
    return {
        "id": pid, "type": panel.kind, "title": panel.title, "description": panel.description,
        "datasource": DATASOURCE, "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "targets": targets, "options": options,
        "fieldConfig": {"defaults": {"unit": panel.unit, "custom": custom}, "overrides": []},
        **({"transformations": [{"id": "labelsToFields", "options": {}}]} if panel.kind == "table" else {}),
    }


def render(dashboard: Dashboard) -> dict[str, Any]:
    """The Grafana JSON model of ``dashboard`` (panels laid out left to right, 24 columns a row)."""
    panels, x, y, row_h = [], 0, 0, 0
    for pid, panel in enumerate(dashboard.panels, start=1):
        if x + panel.width > 24:
            x, y, row_h = 0, y + row_h, 0
        panels.append(_panel(panel, pid, x, y))
        x, row_h = x + panel.width, max(row_h, panel.height)
    datasource_var = {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
                      "current": {}, "hide": 0, "refresh": 1, "regex": ""}
    return {
        "uid": dashboard.uid, "title": dashboard.title, "description": dashboard.description,
        "tags": ["modelops"], "schemaVersion": SCHEMA_VERSION, "version": 1, "editable": True,
        "timezone": "browser", "refresh": "30s", "time": {"from": "now-6h", "to": "now"},
        "graphTooltip": 1, "links": [],
        "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                  "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                                  "name": "Annotations & Alerts", "type": "dashboard"}]},
        "templating": {"list": [datasource_var, *(_variable(n, q) for n, q in dashboard.variables)]},
        "panels": panels,
    }


# -- the dashboards ---------------------------------------------------------------------------------------------
def gpu() -> Dashboard:
    sel = '{Hostname=~"$host"}'
    legend = "{{Hostname}} GPU {{gpu}}"
    return Dashboard("modelops-gpu", "ModelOps / GPU",
                     variables=[("host", "label_values(DCGM_FI_DEV_GPU_UTIL, Hostname)")],
                     description="dcgm-exporter series of the GPU nodes (monitoring/rules/gpu.yml alerts on them).",
                     panels=[
        Panel("GPU utilisation", [(f"DCGM_FI_DEV_GPU_UTIL{sel}", legend)], "percent"),
        Panel("Memory copy utilisation", [(f"DCGM_FI_DEV_MEM_COPY_UTIL{sel}", legend)], "percent"),
        Panel("Framebuffer used", [(f"DCGM_FI_DEV_FB_USED{sel} / (DCGM_FI_DEV_FB_USED{sel} + DCGM_FI_DEV_FB_FREE{sel})",
                                    legend)], "percentunit", description="Alert GPUMemoryNearlyFull above 95%."),
        Panel("Framebuffer used (MiB)", [(f"DCGM_FI_DEV_FB_USED{sel}", legend)], "mbytes"),
        Panel("Temperature", [(f"DCGM_FI_DEV_GPU_TEMP{sel}", legend + " core"),
                              (f"DCGM_FI_DEV_MEMORY_TEMP{sel}", legend + " memory")], "celsius"),
        Panel("Power draw and limit", [(f"DCGM_FI_DEV_POWER_USAGE{sel}", legend + " draw"),
                                       (f"DCGM_FI_DEV_POWER_MGMT_LIMIT{sel}", legend + " limit")], "watt"),
        Panel("SM clock", [(f"DCGM_FI_DEV_SM_CLOCK{sel} * 1000000", legend)], "hertz"),
        Panel("Last XID error", [(f"max by (Hostname, gpu) (DCGM_FI_DEV_XID_ERRORS{sel})", legend)], "none",
              kind="stat", width=6, description="0: none since the GPU was reset. See monitoring/RUNBOOK.md."),
        Panel("PCIe replays / s", [(f"rate(DCGM_FI_DEV_PCIE_REPLAY_COUNTER{sel}[{RATE}])", legend)], "ops", width=6),
    ])


def triton() -> Dashboard:
    m = '{model=~"$model"}'

    def per_request(counter: str) -> str:  # microseconds per successful request -> milliseconds
        return (f"sum by (model) (rate({counter}{m}[{RATE}])) "
                f"/ sum by (model) (rate(nv_inference_request_success{m}[{RATE}]) > 0) / 1000")

    return Dashboard("modelops-triton", "ModelOps / Triton",
                     variables=[("model", "label_values(nv_inference_count, model)")],
                     description="Triton's per-model series (a Triton model is a deployment); "
                                 "alerts: rules/triton.yml.",
                     panels=[
        Panel("Successful requests / s", [(f"sum by (model) (rate(nv_inference_request_success{m}[{RATE}]))",
                                           "{{model}}")], "reqps", stack=True),
        Panel("Failed requests / s", [(f"sum by (model, reason) (rate(nv_inference_request_failure{m}[{RATE}]))",
                                       "{{model}} {{reason}}")], "reqps",
              description="A python-backend model's error response counts as a success in Triton 2.51."),
        Panel("Queue time per request", [(per_request("nv_inference_queue_duration_us"), "{{model}}")], "ms",
              description="Alert TritonQueueTimeHigh above 50 ms."),
        Panel("Request duration per request", [(per_request("nv_inference_request_duration_us"), "{{model}} total"),
                                               (per_request("nv_inference_compute_infer_duration_us"),
                                                "{{model}} compute")], "ms"),
        Panel("Inferences per execution (batch size)", [
            ((f"sum by (model) (rate(nv_inference_count{m}[{RATE}])) "
             f"/ sum by (model) (rate(nv_inference_exec_count{m}[{RATE}]) > 0)"), "{{model}}")], "short"),
        Panel("Pending requests", [(f"sum by (model) (nv_inference_pending_request_count{m})", "{{model}}")], "short"),
        Panel("Loaded models", [("count by (model) (nv_inference_count)", "{{model}}")], "short", kind="table",
              instant=True, width=8, description="A loaded model has nv_inference_count series; an unloaded one none."),
        Panel("Routed but not loaded", [
            (('max by (model, deployment) (modelops_gateway_route_weight > 0) unless on (deployment) '
             'label_replace(max by (model) (nv_inference_count), "deployment", "$1", "model", "(.+)")'),
             "{{model}} {{deployment}}")], "percent", kind="table", instant=True, width=8,
              description="Alert TritonModelNotReady after 2 min."),
        Panel("Triton CPU and memory", [("max by (instance) (nv_cpu_utilization)", "{{instance}} CPU"),
                                        (("max by (instance) (nv_cpu_memory_used_bytes "
                                         "/ nv_cpu_memory_total_bytes)"), "{{instance}} memory")],
              "percentunit", width=8),
    ])


def gateway() -> Dashboard:
    m = '{model=~"$model"}'

    def quantile(q: float) -> str:
        return (f"histogram_quantile({q}, sum by (deployment, le) "
                f"(rate(modelops_gateway_request_duration_seconds_bucket{m}[{RATE}])))")

    return Dashboard("modelops-gateway", "ModelOps / Gateway and rollouts",
                     variables=[("model", "label_values(modelops_gateway_requests_total, model)")],
                     description="The gateway's requests per deployment, its routes and the latest rollouts; "
                                 "alerts: rules/gateway.yml and rules/rollout.yml.",
                     panels=[
        Panel("Requests / s by deployment and code", [
            (f"sum by (deployment, code) (rate(modelops_gateway_requests_total{m}[{RATE}]))",
             "{{deployment}} {{code}}")], "reqps", stack=True),
        Panel("5xx ratio by deployment", [
            ((f'sum by (deployment) (rate(modelops_gateway_requests_total{{model=~"$model", code=~"5.."}}[{RATE}])) '
             f"/ sum by (deployment) (rate(modelops_gateway_requests_total{m}[{RATE}]))"), "{{deployment}}")],
              "percentunit", description="Alert GatewayHigh5xxRate above 5% for 5 min."),
        Panel("Latency p50 / p99 by deployment", [(quantile(0.5), "{{deployment}} p50"),
                                                  (quantile(0.99), "{{deployment}} p99")], "s"),
        Panel("In flight", [(f"sum by (deployment) (modelops_gateway_in_flight{m})", "{{deployment}}")], "short"),
        Panel("Route weights", [(f"max by (model, deployment) (modelops_gateway_route_weight{m})",
                                 "{{model}} {{deployment}}")], "percent", stack=True,
              description="Weights of the routes files the gateway serves; a rollout moves them step by step."),
        Panel("Routes revision", [(f"max by (model) (modelops_gateway_routes_revision{m})", "{{model}}")], "none"),
        Panel("Rollouts", [(f"max by (model, deployment, status, mode) (modelops_rollout_info{m})", "")], "none",
              kind="table", instant=True, width=12, description="The latest rollout of each model."),
        Panel("Rollout canary weight", [(f"max by (model) (modelops_rollout_canary_weight{m})", "{{model}}")],
              "percent", width=6),
        Panel("Since the rollout state changed", [
            (f"time() - max by (model) (modelops_rollout_updated_timestamp_seconds{m})", "{{model}}")], "s",
              kind="stat", width=6, description="Alert RolloutStuck when a running rollout stays unchanged."),
    ])


DASHBOARDS = {"gpu": gpu, "triton": triton, "gateway": gateway}


def dashboards() -> dict[str, dict[str, Any]]:
    """``{file stem: dashboard JSON model}`` of every dashboard."""
    return {name: render(make()) for name, make in DASHBOARDS.items()}


def text(model: dict[str, Any]) -> str:
    return json.dumps(model, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the dashboards (or, with ``--check``, report those whose file is stale)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a written dashboard is out of date")
    parser.add_argument("--out", type=Path, default=HERE, help="directory of the JSON files")
    args = parser.parse_args(argv)
    stale = []
    for name, model in dashboards().items():
        path = args.out / f"{name}.json"
        if args.check:
            if not path.exists() or path.read_text() != text(model):
                stale.append(str(path))
        else:
            path.write_text(text(model))
            print(f"wrote {path}")
    if stale:
        print(f"out of date (run python monitoring/dashboards/generate.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
