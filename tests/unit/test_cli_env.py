"""``modelops --version`` and ``modelops stack env``: what a shell or another tool reads from the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.integration.helpers import REPO

CLI = [sys.executable, "-m", "modelops.local.cli"]


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)


def test_version_is_the_packages():
    from modelops import __version__

    out = _run("--version", env=dict(os.environ))
    assert out.returncode == 0 and out.stdout.strip() == f"modelops {__version__}"


def test_stack_env_exports_evaluate_to_the_stacks_client_settings(tmp_path):
    env = {**os.environ, "MODELOPS_STACK_DIR": str(tmp_path / "stack"), "MODELOPS_PORT_OFFSET": "300"}
    never = _run("stack", "env", env=env)  # no stack made there yet: no credentials to print
    assert never.returncode == 1 and "modelops stack up" in never.stderr and not never.stdout
    from modelops.local.stack.state import StackState

    StackState.new(tmp_path / "stack", 300).save()  # what `stack up` writes first (credentials, ports)
    as_json = _run("stack", "env", "--json", env=env)
    assert as_json.returncode == 0, as_json.stderr
    want = json.loads(as_json.stdout)
    assert want["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5300"
    exports = _run("stack", "env", env=env)
    assert exports.returncode == 0 and exports.stdout.startswith("export ")
    # the shell reads back exactly the values (quoting survives the JSON of the Airflow connections)
    shell = subprocess.run(["bash", "-c", exports.stdout + "\nenv -0"], capture_output=True, text=True, check=True,
                           env={"PATH": os.environ["PATH"]})  # fmt: skip
    got = dict(item.split("=", 1) for item in shell.stdout.split("\0") if "=" in item)
    assert {k: got[k] for k in want} == want
    assert json.loads(got["AIRFLOW_CONN_TRITON_DEFAULT"])["conn_type"] == "modelops_triton"
