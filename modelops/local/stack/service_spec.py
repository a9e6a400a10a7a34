"""What every service definition of the embedded stack shares: its context, its spec, an HTTP probe.

:mod:`modelops.local.stack.services` (SeaweedFS, MLflow, Triton) and
:mod:`modelops.local.stack.airflow_service` build on these.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelops.local.stack.endpoints import build_status
from modelops.local.stack.state import StackError, StackState
from modelops.settings import Settings

# Variables of the caller's environment that must not leak into a service (they would point it at
# another stack, another venv or another Airflow home). MODELOPS_* settings are passed through.
_SCRUBBED_PREFIXES = ("AIRFLOW_", "AIRFLOW__", "MLFLOW_", "AWS_")
_SCRUBBED_NAMES = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "CONDA_PREFIX", "LD_LIBRARY_PATH")


@dataclass
class Context:
    """What a service definition needs: the stack state and the installation settings."""

    state: StackState
    settings: Settings

    @property
    def status(self) -> dict[str, Any]:
        return build_status(self.state, self.settings, running={})

    @property
    def orchestrator_bin(self) -> Path:
        """bin/ of the orchestrator venv (weed, mlflow, airflow): MODELOPS_ORCHESTRATOR_BIN, <repo>/.venv/bin
        or the running interpreter's bin/."""
        explicit = self.settings.stack.orchestrator_bin
        if explicit is not None:
            return explicit
        repo_venv = self.settings.repo_root / ".venv" / "bin"
        return repo_venv if (repo_venv / "airflow").exists() else Path(sys.executable).parent

    def binary(self, name: str) -> Path:
        path = self.orchestrator_bin / name
        if not path.exists():
            raise StackError(f"{name} not found at {path}; install the orchestrator environment (requirements.txt)")
        return path

    def base_env(self) -> dict[str, str]:
        """The caller's environment minus stack-sensitive variables, plus MODELOPS_STACK_DIR/PORT_OFFSET."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(_SCRUBBED_PREFIXES) and key not in _SCRUBBED_NAMES
        }
        env["MODELOPS_STACK_DIR"] = str(self.state.stack_dir)
        env["MODELOPS_PORT_OFFSET"] = str(self.state.port_offset)
        return env


@dataclass(frozen=True)
class ServiceSpec:
    """How to run and probe one service."""

    name: str
    ports: tuple[str, ...]
    requires: tuple[str, ...]
    timeout_s: float
    command: Callable[[Context], list[str]]
    env: Callable[[Context], dict[str, str]]
    health: Callable[[Context], bool]
    prepare: Callable[[Context], None]
    stop_grace_s: float = 15.0  # SIGTERM -> SIGKILL
    configure: Callable[[Context], None] | None = None  # after healthy, on every `up` (idempotent)


# -- HTTP probing -----------------------------------------------------------------------------------
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never proxy 127.0.0.1


def http(
    method: str, url: str, body: Any = None, timeout: float = 3.0, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """One HTTP request; returns (status, body) for any status, raises only on connection errors."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {**({"Content-Type": "application/json"} if data is not None else {}), **(headers or {})}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _path_with(*dirs: Path) -> str:
    return os.pathsep.join([*(str(d) for d in dirs), os.environ.get("PATH", "/usr/bin:/bin")])
