"""Helpers shared by the integration tests."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_step(settings, step: str, spec_uri: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run a heavy step exactly as the local step operator does (worker env subprocess)."""
    result = tmp_path / f"{step}.json"
    proc = subprocess.run(
        [str(settings.worker_python), "-m", f"modelops.steps.{step}", "--spec", spec_uri, "--result", str(result)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    proc.result = json.loads(result.read_text()) if result.exists() else None
    return proc
