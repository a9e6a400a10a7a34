"""Prometheus and the periodic reconciler of the embedded stack.

- ``prometheus``: Debian's Prometheus server (``scripts/install_tools.sh`` installs it) scraping Triton's metrics
  port and the gateway's ``/metrics`` every 2 s, from ``<stack dir>/config/prometheus.yml`` (rendered on each
  start), its TSDB in ``<stack dir>/prometheus`` (kept 7 days). Rollout analysis queries it with PromQL. It
  evaluates the alert rules of ``monitoring/rules/*.yml`` (the same files a cluster's Prometheus loads; their
  GPU alerts stay silent without dcgm-exporter); firing alerts show on its ``/alerts`` page.
- ``reconciler``: ``modelops serving reconcile --watch 10`` against this stack, so that a routed deployment that
  Triton no longer serves (Triton restarted, a model unloaded by hand) is loaded again within one interval,
  without a ``stack up``. It reads Triton's admin token from ``stack.json`` (mode 600), never from its argv.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from modelops.local.stack.endpoints import RECONCILE_INTERVAL_S, prometheus_config, prometheus_url
from modelops.local.stack.service_spec import Context, _path_with, http
from modelops.local.stack.state import HOST, StackError, StackState
from modelops.settings import REPO_ROOT

PROMETHEUS_BIN = Path("/usr/bin/prometheus")
SCRAPE_INTERVAL = "2s"
RETENTION = "7d"
RULES_DIR = REPO_ROOT / "monitoring" / "rules"  # alert rules, unit-tested by monitoring/tests (promtool test rules)


# -- Prometheus -------------------------------------------------------------------------------------
def prometheus_binary() -> Path:
    """``/usr/bin/prometheus``, else ``prometheus`` on PATH; a one-line :class:`StackError` when neither exists."""
    if PROMETHEUS_BIN.exists():
        return PROMETHEUS_BIN
    found = shutil.which("prometheus")
    if found is None:
        raise StackError("prometheus not found (/usr/bin/prometheus or PATH); run scripts/install_tools.sh "
                         "(Debian's prometheus package)")
    return Path(found)


def render_prometheus_config(state: StackState, rules_dir: Path = RULES_DIR) -> str:
    """The Prometheus configuration of the stack: jobs ``triton`` (its metrics port) and ``gateway`` (/metrics),
    and the alert rules ``<rules_dir>/*.yml``."""
    ports = state.ports
    return "\n".join([
        "# written by `modelops stack up`; edits are overwritten on the next start of prometheus",
        "global:",
        f"  scrape_interval: {SCRAPE_INTERVAL}",
        f"  evaluation_interval: {SCRAPE_INTERVAL}",
        f"  scrape_timeout: {SCRAPE_INTERVAL}",
        "rule_files:",
        f"  - {json.dumps(str(rules_dir / '*.yml'))}",
        "scrape_configs:",
        "  - job_name: triton",
        "    metrics_path: /metrics",
        "    static_configs:",
        f"      - targets: ['{HOST}:{ports['triton_metrics']}']",
        "  - job_name: gateway",
        "    metrics_path: /metrics",
        "    static_configs:",
        f"      - targets: ['{HOST}:{ports['gateway']}']",
        "",
    ])


def _prometheus_prepare(ctx: Context) -> None:
    prometheus_binary()
    (ctx.state.stack_dir / "prometheus").mkdir(parents=True, exist_ok=True)
    path = prometheus_config(ctx.state)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_prometheus_config(ctx.state))


def _prometheus_command(ctx: Context) -> list[str]:
    state = ctx.state
    return [
        str(prometheus_binary()),
        f"--config.file={prometheus_config(state)}",
        f"--web.listen-address={HOST}:{state.ports['prometheus']}",
        f"--storage.tsdb.path={state.stack_dir / 'prometheus'}",
        f"--storage.tsdb.retention.time={RETENTION}",
        "--log.level=warn",
    ]


def _prometheus_health(ctx: Context) -> bool:
    return http("GET", f"{prometheus_url(ctx.state)}/-/ready")[0] == 200


# -- reconciler -------------------------------------------------------------------------------------
def ready_file(state: StackState) -> Path:
    """Where the reconciler writes its pid once it watches (``--ready-file``): its health check."""
    return state.stack_dir / "reconciler" / "ready"


def _reconciler_prepare(ctx: Context) -> None:
    path = ready_file(ctx.state)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)


def _reconciler_command(ctx: Context) -> list[str]:
    # no --triton/--admin-token-file: the stack form reads endpoints and the token from stack.json (mode 600)
    return [str(ctx.binary("python")), "-m", "modelops.local.cli", "serving", "reconcile",
            "--watch", f"{RECONCILE_INTERVAL_S:g}", "--ready-file", str(ready_file(ctx.state))]


def _reconciler_env(ctx: Context) -> dict[str, str]:
    return {
        **ctx.base_env(),  # MODELOPS_STACK_DIR / MODELOPS_PORT_OFFSET name this stack
        "PATH": _path_with(ctx.orchestrator_bin),
        "PYTHONPATH": str(ctx.settings.repo_root),
        "PYTHONUNBUFFERED": "1",
    }


def _reconciler_health(ctx: Context) -> bool:
    """Healthy once the recorded process has written its pid to the ready file (it watches)."""
    record = ctx.state.services.get("reconciler")
    try:
        return bool(record and record.pid) and ready_file(ctx.state).read_text().strip() == str(record.pid)
    except OSError:
        return False
