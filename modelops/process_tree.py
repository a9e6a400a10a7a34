"""Child processes that never outlive their parent: own process groups, parent-death signals, group kills.

A step runs in a session of its own (``start_new_session``) so that the step operator can signal the step
and everything it started at once (:func:`kill_group`: SIGTERM, a grace period, SIGKILL). Servers a step
starts in a group of their own (``tritonserver`` and its python-backend stubs) or tools in the step's group
(``perf_analyzer``) also get a parent-death signal (:func:`die_with_parent`, Linux ``PR_SET_PDEATHSIG``), so
a step killed with SIGKILL (no ``finally`` runs) still takes them with it. A killed ``tritonserver`` leaves its
python stubs' shared memory in ``/dev/shm`` (only its graceful shutdown removes it): :func:`remove_orphan_python_shm`.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PYTHON_SHM_PREFIX = "/dev/shm/triton_python_backend_shm_region_"  # Triton's python backend: one arena per stub

log = logging.getLogger("modelops.process_tree")


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive ``sig`` when the process that started it dies.

    Linux only (None elsewhere: pass it to ``Popen(preexec_fn=...)`` as is). The signal follows the *thread*
    that forked the child, so start long-lived children from a thread that lives as long as they should
    (the main thread of a step). If the parent is already gone when the child runs, the child gets ``sig``
    at once.
    """
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before the fork: no dlopen in the child

    def preexec() -> None:  # runs between fork and exec: only async-signal-safe calls (prctl, getppid, kill)
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl
            os.kill(os.getpid(), sig)

    return preexec


def group_members(pgid: int) -> list[int]:
    """Pids of the live (non-zombie) processes of group ``pgid``, read from ``/proc`` (Linux)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        # after "(comm)": state, ppid, pgrp, session, ...
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            members.append(int(entry))
    return members


def group_alive(pgid: int) -> bool:
    """True while a live process is in process group ``pgid`` (zombies waiting to be reaped do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return bool(group_members(pgid)) if os.path.isdir("/proc/self") else True


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_gone(pgid: int, leader: subprocess.Popen | None, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if leader is not None:
            leader.poll()  # reap our own child, or it stays a zombie member of the group
        if not group_alive(pgid):
            # the leader is a zombie by now: collect its exit status. poll(), not wait(): on_kill runs in a signal
            # handler that may have interrupted a wait() on the same Popen, whose lock poll() never blocks on
            reap_until = time.monotonic() + 1.0
            while leader is not None and leader.poll() is None and time.monotonic() < reap_until:
                time.sleep(0.01)
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def kill_group(pgid: int, grace_s: float = 10.0, leader: subprocess.Popen | None = None) -> bool:
    """Stop process group ``pgid``: SIGTERM to every member, SIGKILL to what is left after ``grace_s``.

    Args:
        pgid: the group (a child started with ``start_new_session=True`` leads the group of its own pid).
        grace_s: seconds between SIGTERM and SIGKILL.
        leader: the group leader's ``Popen`` when it is our child (reaped while waiting).

    Returns:
        True when the group is gone (after at most ``grace_s`` + 5 s).
    """
    if pgid <= 1 or pgid == os.getpgrp():
        raise ValueError(f"refusing to kill process group {pgid} (our own or init's)")
    if not group_alive(pgid):
        return True
    _signal_group(pgid, signal.SIGTERM)
    if _wait_gone(pgid, leader, grace_s):
        return True
    _signal_group(pgid, signal.SIGKILL)
    return _wait_gone(pgid, leader, 5.0)


def python_shm_regions(pid: int) -> set[Path]:
    """The python backend's shared-memory files process ``pid`` has mapped (``/proc/<pid>/maps``); none when it is
    gone or not readable."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return set()
    return {Path(line[line.index(PYTHON_SHM_PREFIX):].removesuffix(" (deleted)"))
            for line in maps.splitlines() if PYTHON_SHM_PREFIX in line}  # fmt: skip


def remove_orphan_python_shm(min_age_s: float = 60.0) -> list[Path]:
    """Remove the python backend's shared-memory files that no process maps any more: what a tritonserver killed
    without ``TritonProcess.kill`` (a crash, a killed step, a test's SIGKILL) left in ``/dev/shm``.

    Only files of this user, at least ``min_age_s`` old (a server maps a region right after creating it), and
    mapped by no process whose ``/proc/<pid>/maps`` this user can read. Returns the removed files.
    """
    shm, prefix = Path(PYTHON_SHM_PREFIX).parent, Path(PYTHON_SHM_PREFIX).name
    now, uid = time.time(), os.getuid()
    candidates = []
    for path in shm.glob(f"{prefix}*"):
        try:
            st = path.stat()
        except OSError:
            continue
        if st.st_uid == uid and now - st.st_mtime >= min_age_s:
            candidates.append(path)
    if not candidates:
        return []
    mapped: set[Path] = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        mapped |= python_shm_regions(int(maps.parent.name))
    removed = [path for path in candidates if path not in mapped]
    for path in removed:
        path.unlink(missing_ok=True)
    if removed:
        log.info("removed %d orphaned python-backend shared-memory file(s) from %s", len(removed), shm)
    return removed
