"""The stack's AIRFLOW_HOME: ``airflow.cfg`` from the repo's template, the auth passwords file and a PATH shim.

The stack's Airflow supervisor starts ``airflow scheduler`` and ``airflow triggerer`` from PATH, and both then
serve task logs on all interfaces (the log server's host is hard-coded). The shim put first on PATH adds
``--skip-serve-logs`` to those two commands, so that every listener of the stack stays on 127.0.0.1. With
one machine and one log folder nothing is lost: the API server reads task logs from the local files.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from string import Template

from modelops.local.stack.state import HOST, StackState, write_private

TEMPLATE_NAME = "airflow.cfg.template"
PARALLELISM = 4


def airflow_home(state: StackState) -> Path:
    return state.stack_dir / "airflow"


def passwords_file(state: StackState) -> Path:
    return airflow_home(state) / "simple_auth_manager_passwords.json"


def shim_dir(state: StackState) -> Path:
    return airflow_home(state) / "bin"


def api_url(state: StackState) -> str:
    return f"http://{HOST}:{state.ports['airflow']}"


def cfg_values(state: StackState, repo_root: Path) -> dict[str, str]:
    """The ``$placeholders`` of ``airflow.cfg.template`` for this stack."""
    home = airflow_home(state)
    return {
        "airflow_home": str(home),
        "dags_folder": str(repo_root / "dags"),
        "plugins_folder": str(repo_root / "plugins"),
        "parallelism": str(PARALLELISM),
        "max_active_tasks_per_dag": str(PARALLELISM),
        "passwords_file": str(passwords_file(state)),
        "api_port": str(state.ports["airflow"]),
        "api_base_url": api_url(state),
        "execution_api_server_url": f"{api_url(state)}/execution/",
        "refresh_interval": "10",
        "min_file_process_interval": "30",
        "worker_log_server_port": str(state.ports["airflow_worker_log"]),
        "trigger_log_server_port": str(state.ports["airflow_trigger_log"]),
    }


def render_cfg(template_text: str, values: dict[str, str]) -> str:
    """Substitute ``values`` into the template; a missing placeholder raises KeyError."""
    return Template(template_text).substitute(values)


def _shim_text(real_airflow: Path) -> str:
    real = shlex.quote(str(real_airflow))
    return (
        "#!/bin/sh\n"
        "# Written by `modelops stack up`. The Airflow supervisor runs `airflow <component>` from PATH; the\n"
        "# scheduler and triggerer would otherwise serve logs on 0.0.0.0 (see modelops/local/stack/airflow_home.py).\n"
        'case "$1" in\n'
        f'  scheduler|triggerer) exec {real} "$@" --skip-serve-logs ;;\n'
        "esac\n"
        f'exec {real} "$@"\n'
    )


def prepare(state: StackState, repo_root: Path, real_airflow: Path) -> Path:
    """Write airflow.cfg, the passwords file (``{"admin": <generated>}``) and the PATH shim; returns the cfg."""
    home = airflow_home(state)
    home.mkdir(parents=True, exist_ok=True)
    template = (repo_root / TEMPLATE_NAME).read_text()
    cfg = home / "airflow.cfg"
    write_private(cfg, render_cfg(template, cfg_values(state, repo_root)))
    creds = state.credentials
    write_private(passwords_file(state), json.dumps({creds.airflow_username: creds.airflow_password}) + "\n")
    shim = shim_dir(state) / "airflow"
    shim.parent.mkdir(parents=True, exist_ok=True)
    shim.write_text(_shim_text(real_airflow))
    os.chmod(shim, 0o755)
    return cfg
