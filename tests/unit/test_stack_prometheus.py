"""Prometheus and the reconciler in the embedded stack: config rendering (checked by promtool), ports, commands,
status keys and Airflow connections; the reconciler's watch loop run for real against a stopped stack."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelops.local.stack import process
from modelops.local.stack.endpoints import build_status, client_env
from modelops.local.stack.monitoring_service import RULES_DIR, ready_file, render_prometheus_config
from modelops.local.stack.service_spec import Context
from modelops.local.stack.services import SPECS
from modelops.local.stack.state import DEFAULT_PORTS, ServiceRecord, StackState, allocate_ports
from modelops.settings import REPO_ROOT, Settings


@pytest.fixture()
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("MODELOPS_STACK_DIR", str(tmp_path / "stack"))
    monkeypatch.delenv("MODELOPS_PORT_OFFSET", raising=False)
    return Settings.from_env()


def test_prometheus_port_is_distinct_in_each_stack_and_across_the_usual_offsets() -> None:
    assert DEFAULT_PORTS["prometheus"] == 9090
    for offset in (0, 100, 300):
        ports = allocate_ports(offset)
        assert ports["prometheus"] == 9090 + offset
        assert len(set(ports.values())) == len(ports), f"offset {offset}: two services share a port"
    for a, b in ((0, 100), (0, 300), (100, 300)):
        assert not set(allocate_ports(a).values()) & set(allocate_ports(b).values()), (a, b)


def _promtool_check_config(path: Path, text: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    # `make test` installs Debian's prometheus (scripts/install_tools.sh): a missing promtool is a broken setup
    assert Path(promtool).exists(), "promtool not installed: run `make tools` (scripts/install_tools.sh)"
    path.write_text(text)
    return subprocess.run([promtool, "check", "config", str(path)], check=False, capture_output=True, text=True,
                          timeout=60)


def test_rendered_config_scrapes_triton_and_the_gateway_and_promtool_accepts_it(tmp_path: Path) -> None:
    state = StackState.new(tmp_path / "stack", 300)
    text = render_prometheus_config(state)
    assert "scrape_interval: 2s" in text and "evaluation_interval: 2s" in text
    assert "- job_name: triton" in text and "targets: ['127.0.0.1:8302']" in text
    assert "- job_name: gateway" in text and "targets: ['127.0.0.1:9300']" in text
    assert f'rule_files:\n  - "{RULES_DIR}/*.yml"' in text
    proc = _promtool_check_config(tmp_path / "prometheus.yml", text)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    # promtool check config also parses every rule file the config names: the same files as monitoring/rules
    rule_files = sorted(RULES_DIR.glob("*.yml"))
    assert {p.name for p in rule_files} >= {"gpu.yml", "triton.yml", "gateway.yml", "rollout.yml"}
    assert f"SUCCESS: {len(rule_files)} rule files found" in out
    for rules in rule_files:
        assert f"Checking {rules}\n  SUCCESS:" in out, out


def test_promtool_check_config_fails_on_a_broken_rule_file(tmp_path: Path) -> None:
    """The config check covers the rules: a rule file with a bad expression fails it."""
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "bad.yml").write_text("groups:\n  - name: bad\n    rules:\n      - alert: Bad\n"
                                       "        expr: rate(modelops_gateway_requests_total) > 1\n")
    proc = _promtool_check_config(tmp_path / "prometheus.yml",
                                  render_prometheus_config(StackState.new(tmp_path / "stack", 300), rules_dir))
    assert proc.returncode != 0
    assert "bad.yml" in proc.stdout + proc.stderr


def test_prometheus_command_listens_on_the_stack_port_and_keeps_its_tsdb_in_the_stack(settings: Settings) -> None:
    state = StackState.new(settings.stack_dir, 300)
    ctx = Context(state, settings)
    spec = SPECS["prometheus"]
    assert spec.ports == ("prometheus",) and spec.requires == ()
    spec.prepare(ctx)
    config = settings.stack_dir / "config" / "prometheus.yml"
    assert config.read_text() == render_prometheus_config(state)
    assert (settings.stack_dir / "prometheus").is_dir()
    cmd = spec.command(ctx)
    assert Path(cmd[0]).name == "prometheus"
    assert cmd[1:5] == [f"--config.file={config}", "--web.listen-address=127.0.0.1:9390",
                        f"--storage.tsdb.path={settings.stack_dir / 'prometheus'}",
                        "--storage.tsdb.retention.time=7d"]


def test_status_and_connections_name_prometheus_the_gateway_and_the_reconciler(settings: Settings) -> None:
    state = StackState.new(settings.stack_dir, 300)
    status = build_status(state, settings, running={"prometheus": True})
    assert status["prometheus"]["url"] == "http://127.0.0.1:9390" and status["prometheus"]["port"] == 9390
    assert status["prometheus"]["running"] is True and status["prometheus"]["state"] == "running"
    assert status["prometheus"]["log"] == str(settings.stack_dir / "logs" / "prometheus.log")
    assert status["reconciler"]["log"] == str(settings.stack_dir / "logs" / "reconciler.log")
    assert status["reconciler"]["state"] == "stopped" and status["reconciler"]["pid"] is None
    env = client_env(status)
    assert json.loads(env["AIRFLOW_CONN_PROMETHEUS_DEFAULT"]) == {"conn_type": "modelops_prometheus", "host": "127.0.0.1",
                                                                  "port": 9390, "schema": "http"}
    assert json.loads(env["AIRFLOW_CONN_GATEWAY_DEFAULT"]) == {"conn_type": "modelops_gateway", "host": "127.0.0.1",
                                                               "port": 9300, "schema": "http"}


def test_reconciler_command_carries_no_secret(settings: Settings) -> None:
    state = StackState.new(settings.stack_dir, 300)
    ctx = Context(state, settings)
    spec = SPECS["reconciler"]
    assert spec.requires == ("s3", "triton") and spec.ports == ()
    cmd = spec.command(ctx)
    assert cmd[1:] == ["-m", "modelops.local.cli", "serving", "reconcile", "--watch", "10",
                       "--ready-file", str(ready_file(state))]
    env = spec.env(ctx)
    secrets = [state.credentials.triton_admin_token, state.credentials.s3_secret_key]
    assert not any(secret in " ".join(cmd) for secret in secrets)
    assert not any(secret in value for secret in secrets for value in env.values())
    assert (env["MODELOPS_STACK_DIR"], env["MODELOPS_PORT_OFFSET"]) == (str(settings.stack_dir), "300")


def test_reconciler_runs_watches_and_reports_a_stopped_triton(settings: Settings) -> None:
    """The real watcher process against a stack whose Triton is not running: healthy, then a one-line warning."""
    state = StackState.new(settings.stack_dir, 300)
    state.save()
    ctx = Context(state, settings)
    spec = SPECS["reconciler"]
    spec.prepare(ctx)
    cmd = [sys.executable, *spec.command(ctx)[1:]]
    cmd[cmd.index("--watch") + 1] = "0.5"
    log = state.logs_dir / "reconciler.log"
    env = {**spec.env(ctx), "PATH": os.environ["PATH"], "PYTHONPATH": str(REPO_ROOT)}
    record = process.spawn("reconciler", cmd, env, log, cwd=settings.stack_dir)
    state.services["reconciler"] = record
    try:
        assert process.wait_healthy("reconciler", record, lambda: spec.health(ctx), 60, log) < 60
        deadline = time.monotonic() + 30
        while "the stack's Triton is not running" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "the stack's Triton is not running" in log.read_text()
        assert process.is_running(record), "a failed pass does not end the watch"
    finally:
        assert process.stop("reconciler", record, grace_s=5)
    state.services["reconciler"] = ServiceRecord(pid=(record.pid or 0) + 1)
    assert not spec.health(ctx), "the ready file of an earlier process does not make a new one healthy"
