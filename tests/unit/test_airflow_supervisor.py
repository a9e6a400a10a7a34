"""The stack's Airflow supervisor restarts a killed component and stops them all on SIGTERM.

Real processes: the supervisor runs as ``python -m modelops.local.stack.airflow_supervisor`` with a stand-in
``airflow`` first on PATH (``db migrate`` exits 0, every component sleeps and records its name), as the stack's
shim would be found.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process signals: Linux")


def _components(sup: psutil.Process) -> dict[str, psutil.Process]:
    found = {}
    for child in sup.children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            env = child.environ()
        except psutil.NoSuchProcess:
            continue
        if "FAKE_COMPONENT_DIR" in env:
            found[child.cmdline()[-1]] = child
    return found


def _all_four(sup: psutil.Process, not_scheduler: int | None = None) -> dict[str, psutil.Process] | None:
    comps = _components(sup)
    if len(comps) != 4 or comps.get("scheduler") is None or comps["scheduler"].pid == not_scheduler:
        return None
    return comps


def _wait(predicate, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


@pytest.fixture
def supervised(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "airflow"
    fake.write_text(textwrap.dedent("""\
        #!/bin/sh
        if [ "$1" = db ]; then echo "$@" >> "$FAKE_COMPONENT_DIR/migrated"; exit 0; fi
        echo "$1" >> "$FAKE_COMPONENT_DIR/started"
        exec python3 -c "import time; time.sleep(300)" "$1"
    """))
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_COMPONENT_DIR": str(tmp_path),
           "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "modelops.local.stack.airflow_supervisor"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    yield proc, tmp_path
    try:  # the supervisor's own descendants, listed before it goes (then they would be re-parented)
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    for child in family:
        try:
            child.kill()
        except psutil.NoSuchProcess:  # already gone (CI once errored here, killing every child of pytest)
            pass


def test_migrates_then_starts_the_four_components(supervised):
    proc, folder = supervised
    comps = _wait(lambda: _all_four(psutil.Process(proc.pid)))
    assert set(comps) == {"scheduler", "dag-processor", "api-server", "triggerer"}
    assert (folder / "migrated").read_text().split() == ["db", "migrate"]


def test_a_killed_scheduler_is_started_again_and_the_others_are_left_alone(supervised):
    proc, folder = supervised
    sup = psutil.Process(proc.pid)
    before = _wait(lambda: _all_four(sup))
    before["scheduler"].send_signal(signal.SIGKILL)
    after = _wait(lambda: _all_four(sup, not_scheduler=before["scheduler"].pid))
    assert {name: p.pid for name, p in after.items() if name != "scheduler"} == \
        {name: p.pid for name, p in before.items() if name != "scheduler"}
    assert (folder / "started").read_text().split().count("scheduler") == 2
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert "scheduler" in out and "exited with status -9" in out, out


def test_sigterm_stops_every_component(supervised):
    proc, _ = supervised
    comps = _wait(lambda: _all_four(psutil.Process(proc.pid)))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    _gone, alive = psutil.wait_procs(list(comps.values()), timeout=10)
    assert not alive, alive
