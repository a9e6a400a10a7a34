"""Processes die with what started them: step process groups, parent-death signals, `stack down` leftovers.

Real processes throughout: a step-like script starts a sleeping grandchild, the task runner (a Python process
running ``LocalStepOperator._run`` with Airflow's SIGTERM -> ``on_kill`` wiring) is killed or times out, and
the grandchild must be gone; a fake stack service double-forks a daemon that escapes its session and
``stack down`` must still stop it.
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

from modelops.local.stack import manager, process
from modelops.local.stack.state import StackState
from modelops.process_tree import die_with_parent, group_alive, kill_group
from modelops.settings import Settings

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and prctl: Linux")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False


def _wait_for(path: Path, timeout_s: float = 30.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"{path} was never written")


def _wait_gone(pid: int, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# A step: starts a grandchild (in the step's group, or in a session of its own with a parent-death signal, as
# TritonProcess does), writes its pid, then sleeps like a long benchmark.
STEP = textwrap.dedent("""
    import subprocess, sys, time
    from modelops.process_tree import die_with_parent
    own_session = sys.argv[2] == "own-session"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=own_session,
                             preexec_fn=die_with_parent() if own_session else None)
    with open(sys.argv[1], "w") as fh:
        fh.write(str(child.pid))
    print("step: started", child.pid, flush=True)
    time.sleep(300)
""")

# The task runner: LocalStepOperator._run with Airflow 3's SIGTERM handler (task_runner: SIGTERM -> on_kill).
RUNNER = textwrap.dedent("""
    import signal, sys
    from modelops_airflow.operators.step_operator import LocalStepOperator
    op = LocalStepOperator(task_id="t", step="benchmark", spec="s3://b/spec.json")
    signal.signal(signal.SIGTERM, lambda *_: op.on_kill())
    timeout = float(sys.argv[4]) if sys.argv[4] != "none" else None
    try:
        rc, why = op._run([sys.executable, sys.argv[1], sys.argv[2], sys.argv[3]], None, ".", timeout_s=timeout,
                          grace_s=2.0)
    except TimeoutError as exc:
        print("TIMEOUT", exc, flush=True)
        sys.exit(3)
    print("RC", rc, flush=True)
""")


def _runner(tmp_path: Path, mode: str, timeout: str = "none") -> tuple[subprocess.Popen, int]:
    (tmp_path / "step.py").write_text(STEP)
    (tmp_path / "runner.py").write_text(RUNNER)
    pid_file = tmp_path / "grandchild.pid"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runner = subprocess.Popen([sys.executable, str(tmp_path / "runner.py"), str(tmp_path / "step.py"), str(pid_file),
                               mode, timeout], env=env, cwd=str(REPO), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        return runner, _wait_for(pid_file)
    except AssertionError:
        runner.kill()
        raise AssertionError(runner.communicate()[0]) from None


def test_sigterm_to_the_task_runner_stops_the_step_and_its_grandchild(tmp_path):
    runner, grandchild = _runner(tmp_path, "same-group")
    try:
        assert _alive(grandchild)
        runner.send_signal(signal.SIGTERM)  # what Airflow's supervisor does to a killed / cleared task
        out = runner.communicate(timeout=30)[0]
        assert _wait_gone(grandchild, 10), f"grandchild {grandchild} survived the killed task"
        assert "RC -15" in out  # the step itself died of the SIGTERM to its group
    finally:
        runner.kill()
        _kill(grandchild)


def test_sigkill_of_the_task_runner_takes_a_server_in_its_own_session_with_it(tmp_path):
    # runner SIGKILLed: no handler runs; the step dies of its parent-death signal, the grandchild (own session,
    # like tritonserver) of its own
    runner, grandchild = _runner(tmp_path, "own-session")
    try:
        assert _alive(grandchild) and os.getsid(grandchild) == grandchild
        runner.kill()
        runner.wait(timeout=10)
        assert _wait_gone(grandchild, 10), f"grandchild {grandchild} outlived its dead step"
    finally:
        runner.kill()
        _kill(grandchild)


def test_a_step_past_its_timeout_is_stopped_with_everything_it_started(tmp_path):
    runner, grandchild = _runner(tmp_path, "same-group", timeout="2")
    try:
        out = runner.communicate(timeout=30)[0]
        assert runner.returncode == 3, out
        assert "ran past its timeout of 2 s" in out
        assert _wait_gone(grandchild, 10)
    finally:
        runner.kill()
        _kill(grandchild)


def test_kill_group_escalates_to_sigkill_and_refuses_our_own_group():
    code = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(300)"
    stubborn = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.PIPE, text=True)
    try:
        assert stubborn.stdout.readline().strip() == "ready"
        started = time.monotonic()
        assert kill_group(stubborn.pid, grace_s=0.5, leader=stubborn)
        assert 0.5 <= time.monotonic() - started < 10
        assert stubborn.returncode == -signal.SIGKILL and not group_alive(stubborn.pid)
    finally:
        stubborn.kill()
        stubborn.wait()
    with pytest.raises(ValueError, match="refusing"):
        kill_group(os.getpgrp())


def test_die_with_parent_signals_the_child_when_its_parent_dies(tmp_path):
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import subprocess, sys, time
        from modelops.process_tree import die_with_parent
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True,
                                 preexec_fn=die_with_parent())
        open({str(pid_file)!r}, "w").write(str(child.pid))
        time.sleep(300)
    """)], env={**os.environ, "PYTHONPATH": str(REPO)})
    child = _wait_for(pid_file)
    try:
        parent.kill()
        parent.wait()
        assert _wait_gone(child, 10)
    finally:
        _kill(child)
    assert die_with_parent() is not None


# A stack service that double-forks a daemon (new session: out of the service's group and session), writes the
# daemon's pid and stays up itself.
SERVICE = textwrap.dedent("""
    import os, sys, time
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            open(sys.argv[1], "w").write(str(os.getpid()))
            time.sleep(300)
        os._exit(0)
    time.sleep(300)
""")


def test_stack_down_stops_a_service_and_the_daemon_it_double_forked(tmp_path):
    stack_dir = tmp_path / "stack"
    stack_dir.mkdir(mode=0o700)
    state = StackState.new(stack_dir, 700)
    (tmp_path / "service.py").write_text(SERVICE)
    record = process.spawn("fake gateway", [sys.executable, str(tmp_path / "service.py"), str(tmp_path / "daemon.pid")],
                           dict(os.environ), state.logs_dir / "gateway.log", cwd=tmp_path,
                           mark=process.marker(stack_dir, "gateway"))
    state.services["gateway"] = record
    state.save()
    daemon = _wait_for(tmp_path / "daemon.pid")
    try:
        assert os.getsid(daemon) != record.pid and os.getpgid(daemon) != record.pid  # escaped group and session
        assert [p.pid for p in process.leftovers(process.stack_id(stack_dir))] in ([record.pid, daemon],
                                                                                    [daemon, record.pid])
        assert process.leftovers(process.stack_id(tmp_path / "other")) == []  # another stack's marker
        manager.down(Settings.from_env({"MODELOPS_STACK_DIR": str(stack_dir), "MODELOPS_PORT_OFFSET": "700"}),
                     services=["gateway"])
        assert _wait_gone(record.pid, 5) and _wait_gone(daemon, 5), "stack down left a process running"
        assert not StackState.load(stack_dir).services["gateway"].pid
    finally:
        _kill(daemon)
        if record.pid:
            _kill(record.pid)


def test_orphaned_python_backend_shared_memory_is_removed_and_nothing_else():
    """A killed tritonserver leaves its stubs' /dev/shm files: the sweep removes an old unmapped one, and keeps one a
    live process maps (here: this one) and one just created (a server maps its region right after creating it)."""
    import mmap
    import uuid

    from modelops.process_tree import PYTHON_SHM_PREFIX, remove_orphan_python_shm

    tag = uuid.uuid4().hex
    orphan, mapped, young = (Path(f"{PYTHON_SHM_PREFIX}test-{tag}-{n}") for n in ("orphan", "mapped", "young"))
    old = time.time() - 3600
    try:
        for path in (orphan, mapped, young):
            path.write_bytes(b"\0" * 4096)
        for path in (orphan, mapped):
            os.utime(path, (old, old))
        with mapped.open("r+b") as fh, mmap.mmap(fh.fileno(), 4096):
            removed = remove_orphan_python_shm(min_age_s=60)
            assert orphan in removed and not orphan.exists()
            assert mapped.exists() and young.exists()
            assert mapped not in removed and young not in removed
    finally:
        for path in (orphan, mapped, young):
            path.unlink(missing_ok=True)
