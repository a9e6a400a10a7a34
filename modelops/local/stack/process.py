"""Detached service processes: spawn, liveness (pid + start time), health waiting and stop.

Liveness and process-group scans go through ``psutil``. A pid is only "ours" when its start time matches
the one recorded at spawn, so a recycled pid never counts as a running service.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import psutil

from modelops.local.stack.state import ServiceRecord, StackError

# Popen objects of services started by this Python process: kept so that they are not garbage-collected
# while running (ResourceWarning) and so that their exit status can be reaped (no zombies).
_CHILDREN: dict[int, subprocess.Popen] = {}


def say(message: str) -> None:
    """A progress line on stderr (never put a secret in it)."""
    print(message, file=sys.stderr, flush=True)


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies under it, else absolute."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


_GONE = (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _ticks(proc: psutil.Process) -> int:
    # psutil's create_time is boot time + start ticks / CLK_TCK: inverting it gives back the exact integer the
    # state file has always stored (``/proc/<pid>/stat`` starttime), so existing .stack/ records stay valid
    return round((proc.create_time() - psutil.boot_time()) * _CLOCK_TICKS)


def _live(pid: int) -> psutil.Process | None:
    """The process ``pid`` when it exists and is not a zombie, else None."""
    try:
        proc = psutil.Process(pid)
        return None if proc.status() in _GONE else proc
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def start_ticks(pid: int) -> int | None:
    """The process start time in clock ticks since boot (from ``psutil``'s create time), or None."""
    try:
        return _ticks(psutil.Process(pid))
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def _reap(pid: int) -> None:
    """Collect the exit status of our own exited child (it stays in _CHILDREN for :func:`exit_code`)."""
    proc = _CHILDREN.get(pid)
    if proc is not None:
        proc.poll()


def is_running(record: ServiceRecord) -> bool:
    """True when the recorded process exists, is not a zombie and is the one we started (same start time)."""
    if not record.pid:
        return False
    _reap(record.pid)
    proc = _live(record.pid)
    if proc is None:
        return False
    try:
        return record.start_ticks is None or _ticks(proc) == record.start_ticks
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def exit_code(pid: int) -> int | None:
    """The exit code of a child this process started and that has exited, else None."""
    proc = _CHILDREN.get(pid)
    return proc.poll() if proc is not None else None


_SECRET_FLAGS = ("--http-restricted-api=", "--grpc-restricted-protocol=")


def redact(cmd: Sequence[str]) -> list[str]:
    """``cmd`` for a log line: the value of Triton's restricted-API flags (``<apis>:<header>=<token>``) hidden."""
    return [f"{arg.rsplit('=', 1)[0]}=***" if arg.startswith(_SECRET_FLAGS) else arg for arg in cmd]


# Every process a stack starts carries these variables (inherited by all it starts in turn, daemons included):
# `down` finds the leftovers that escaped the service's session (double forks, setsid) by reading them back.
STACK_ID_VAR = "MODELOPS_STACK_ID"
STACK_SERVICE_VAR = "MODELOPS_STACK_SERVICE"


def stack_id(stack_dir: Path) -> str:
    """The marker value of the stack in ``stack_dir`` (a digest of its absolute path)."""
    return hashlib.sha256(str(Path(stack_dir).resolve()).encode()).hexdigest()[:16]


def marker(stack_dir: Path, service: str) -> dict[str, str]:
    """The environment variables that mark ``service``'s processes as the stack's (see :func:`leftovers`)."""
    return {STACK_ID_VAR: stack_id(stack_dir), STACK_SERVICE_VAR: service}


def spawn(name: str, cmd: Sequence[str], env: dict[str, str], log_path: Path, cwd: Path,
          mark: dict[str, str] | None = None) -> ServiceRecord:
    """Start ``cmd`` detached (own session = own process group), stdout+stderr appended to ``log_path``.

    ``mark`` (:func:`marker`) is added to ``env`` so that :func:`stop_leftovers` finds every process it starts.
    """
    env = {**env, **(mark or {})}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    with open(log_path, "ab") as log:
        log.write(f"\n===== {now} modelops stack: starting {name}: {' '.join(redact(cmd))}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(
                list(cmd),
                env=env,
                cwd=str(cwd),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise StackError(f"{name} could not be started ({cmd[0]}: {exc.strerror})") from None
    _CHILDREN[proc.pid] = proc
    return ServiceRecord(pid=proc.pid, start_ticks=start_ticks(proc.pid), started_at=now)


def wait_healthy(
    name: str,
    record: ServiceRecord,
    check: Callable[[], bool],
    timeout_s: float,
    log_path: Path,
    interval_s: float = 0.3,
) -> float:
    """Poll ``check`` until it returns True; returns the seconds waited.

    Raises :class:`StackError` (one line, naming the service and its log) when the process exits first or
    when ``timeout_s`` passes.
    """
    start = time.monotonic()
    while True:
        if not is_running(record):
            code = exit_code(record.pid) if record.pid else None
            how = f" with code {code}" if code is not None else ""
            raise StackError(f"{name} exited{how} before becoming healthy; see {display_path(log_path)}")
        try:
            healthy = bool(check())
        except StackError:  # a probe that knows the service will never be healthy says why
            raise
        except Exception:  # noqa: BLE001 - any other failure of a probe means "not healthy yet"
            healthy = False
        if healthy:
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            raise StackError(f"{name} did not become healthy within {timeout_s:.0f} s; see {display_path(log_path)}")
        time.sleep(interval_s)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    members = []
    for proc in psutil.process_iter(["status"]):
        if proc.info["status"] in _GONE:
            continue
        try:
            if os.getpgid(proc.pid) == pgid:
                members.append(proc.pid)
        except (ProcessLookupError, PermissionError):
            continue
    return members


def session_members(sid: int) -> list[int]:
    """Live processes of session ``sid`` (a service's children that moved to a process group of their own)."""
    members = []
    for proc in psutil.process_iter(["status"]):
        if proc.info["status"] in _GONE:
            continue
        try:
            if os.getsid(proc.pid) == sid:
                members.append(proc.pid)
        except (ProcessLookupError, PermissionError):
            continue
    return members


def _own_lineage() -> set[int]:
    """This process and its ancestors: never signalled, even when they carry a stack's marker."""
    pids = {os.getpid()}
    try:
        pids.update(p.pid for p in psutil.Process().parents())
    except psutil.Error:
        pass
    return pids


def leftovers(stack: str, services: Sequence[str] | None = None) -> list[psutil.Process]:
    """Live processes marked with stack id ``stack`` (of ``services`` only, when given), this process excluded.

    The marker is read back from each process's environment (``/proc/<pid>/environ``); processes of other
    users are not readable and never match.
    """
    skip, found = _own_lineage(), []
    for proc in psutil.process_iter(["status"]):
        if proc.pid in skip or proc.info["status"] in _GONE:
            continue
        try:
            env = proc.environ()
        except (psutil.Error, OSError):
            continue
        if env.get(STACK_ID_VAR) == stack and (services is None or env.get(STACK_SERVICE_VAR) in services):
            found.append(proc)
    return found


def stop_leftovers(stack: str, services: Sequence[str] | None = None, grace_s: float = 5.0) -> list[int]:
    """SIGTERM every :func:`leftovers` process, SIGKILL what is left after ``grace_s``; returns their pids."""
    procs = leftovers(stack, services)
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
    return [proc.pid for proc in procs]


def _wait_group_gone(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _reap(pgid)
        if not group_members(pgid):
            return True
        time.sleep(0.2)
    return not group_members(pgid)


def stop(name: str, record: ServiceRecord, grace_s: float = 15.0) -> bool:
    """Stop a recorded service: SIGTERM to its process group, SIGKILL after ``grace_s``.

    Only a process that :func:`is_running` confirms as ours is signalled. Returns True if it was running.
    """
    if not is_running(record):
        return False
    pgid = record.pid
    assert pgid is not None
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    if not _wait_group_gone(pgid, grace_s):
        say(f"{name} did not stop within {grace_s:.0f} s; sending SIGKILL")
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _wait_group_gone(pgid, 5.0)
    for pid in session_members(pgid):  # children that left the service's group but not its session
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    proc = _CHILDREN.pop(pgid, None)
    if proc is not None:
        try:
            proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
    return True
