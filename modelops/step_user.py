"""The unprivileged OS user the heavy steps run as, so untrusted model code cannot read the stack's secrets.

Export, optimize, validate and benchmark load model files a user logged (pickles, custom code, once opted in:
:mod:`modelops.recipes.trust`). When the local step operator runs as root (the embedded stack, most Airflow
images' workers), each step runs as ``MODELOPS_STEP_USER`` (default ``modelops-step``): a system user with no
home, no login shell and no groups, created on first use. It reads the repository and the worker environment
(world-readable) and writes only its own temporary directory and, through its S3 identity, the run's artifacts;
it cannot read the stack folder (mode 700), ``stack.json``, Airflow's or Triton's ``/proc/<pid>/environ``, or
signal their processes.

The worker interpreter must be one the step user can start: :func:`ensure_can_run` checks that and, where it lives
under a private directory (pyenv under ``/root``, mode 700), grants that one user search permission (``x``, no
listing) on exactly the blocking directories with a POSIX ACL; nothing else of the directory becomes visible.

Not root (an Airflow worker that already runs as an unprivileged user): steps run as that user; give the stack
folder and the Airflow secrets another owner, or use ``execution=kubernetes``, whose step pods run as a
non-root user with no service-account token (``docs/operations.md``).
"""

from __future__ import annotations

import errno
import os
import pwd
import shutil
import stat
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

KEEP = "-"  # MODELOPS_STEP_USER=-: steps keep the task's user (a blank variable means the default)
_USERADD_EXISTS = 9  # useradd's exit status when the name is taken (another task created it meanwhile)


class StepUserError(RuntimeError):
    """The step user cannot be used or created (one line)."""


@dataclass(frozen=True)
class StepUser:
    name: str
    uid: int
    gid: int

    def popen_kwargs(self) -> dict[str, object]:
        """``subprocess.Popen`` arguments that drop to this user (no supplementary groups kept)."""
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def env(self, home: str) -> dict[str, str]:
        """``HOME``/``USER``/``LOGNAME`` for a step whose scratch directory is ``home``."""
        return {"HOME": home, "USER": self.name, "LOGNAME": self.name, "XDG_CACHE_HOME": os.path.join(home, ".cache")}


def step_user(name: str, *, create: bool = True) -> StepUser | None:
    """The user steps run as; None when ``name`` is ``-`` or this process is not root (steps keep its user).

    Raises:
        StepUserError: the user is root, or missing and cannot be created.
    """
    if name in ("", KEEP) or os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        if not create:
            raise StepUserError(f"step user {name!r} does not exist") from None
        _create(name)
        entry = pwd.getpwnam(name)
    if entry.pw_uid == 0:
        raise StepUserError(f"MODELOPS_STEP_USER {name!r} is root: name an unprivileged user, or - to keep the task's")
    return StepUser(name, entry.pw_uid, entry.pw_gid)


def _create(name: str) -> None:
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    nologin = shutil.which("nologin") or "/usr/sbin/nologin"
    cmd = [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent", "--shell", nologin,
           name]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StepUserError(f"cannot create step user {name!r}: {exc}") from None
    if proc.returncode not in (0, _USERADD_EXISTS):
        why = (proc.stderr.strip().splitlines() or [f"useradd exited {proc.returncode}"])[-1]
        raise StepUserError(f"cannot create step user {name!r}: {why}")


def ensure_can_run(user: StepUser, python: Path) -> list[str]:
    """Make sure ``user`` can start ``python``; returns the directories it was granted search permission on.

    Raises:
        StepUserError: it still cannot (one line naming the interpreter and the fix).
    """
    if _can_run(user, python):
        return []
    granted = []
    paths = (Path(python).absolute(), Path(os.path.realpath(python)))  # the venv's link and the interpreter
    for directory in dict.fromkeys(d for path in paths for d in _blocking_dirs(user, path)):
        try:
            _grant_search(directory, user.uid)
        except OSError as exc:
            raise StepUserError(f"step user {user.name!r} cannot start {python} ({directory} is private) and a POSIX "
                                f"ACL could not be set there: {exc.strerror}; install Python where other users can "
                                "read it, or set MODELOPS_STEP_USER=- to run steps as the task's user") from None
        granted.append(str(directory))
    if not _can_run(user, python):
        raise StepUserError(f"step user {user.name!r} cannot start {python}: make it and its libraries readable by "
                            "other users, or set MODELOPS_STEP_USER=- to run steps as the task's user")
    return granted


def _can_run(user: StepUser, python: Path) -> bool:
    try:
        proc = subprocess.run([str(python), "-c", "import encodings, json"], cwd="/", env={"PATH": "/usr/bin:/bin"},
                              capture_output=True, timeout=120, check=False, **user.popen_kwargs())  # type: ignore[arg-type]
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def _blocking_dirs(user: StepUser, target: Path) -> list[Path]:
    """Ancestors of ``target`` the user may not search (mode bits only: it has no supplementary groups)."""
    out = []
    for directory in reversed(target.parents):
        st = directory.stat()
        bit = stat.S_IXUSR if st.st_uid == user.uid else stat.S_IXGRP if st.st_gid == user.gid else stat.S_IXOTH
        if not st.st_mode & bit and not _acl_entries(directory).get((_USER, user.uid), 0) & _SEARCH:
            out.append(directory)
    return out


# POSIX ACL extended attribute (linux/posix_acl_xattr.h): version 2, then (tag u16, perm u16, id u32) entries
_ACL_XATTR = "system.posix_acl_access"
_ACL_VERSION = 2
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_NO_ID = 0xFFFFFFFF
_SEARCH = 0o1


def _acl_entries(directory: Path) -> dict[tuple[int, int], int]:
    """``{(tag, id): perm}`` of ``directory``'s access ACL; empty when it has none (or the file system has no ACLs)."""
    try:
        raw = os.getxattr(directory, _ACL_XATTR)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            return {}
        raise
    return {(tag, ident): perm for tag, perm, ident in struct.iter_unpack("<HHI", raw[4:])}


def _grant_search(directory: Path, uid: int) -> None:
    """Add ``user:<uid>:--x`` to ``directory``'s access ACL (keeping any entries it has) and widen the mask to it."""
    mode = directory.stat().st_mode
    entries = _acl_entries(directory) or {(_USER_OBJ, _NO_ID): (mode >> 6) & 7, (_GROUP_OBJ, _NO_ID): (mode >> 3) & 7,
                                          (_OTHER, _NO_ID): mode & 7}  # fmt: skip
    entries[(_USER, uid)] = entries.get((_USER, uid), 0) | _SEARCH
    # without an ACL the group bits were the owning group's; with one they become the mask, which must not shrink it
    entries[(_MASK, _NO_ID)] = entries.get((_MASK, _NO_ID), entries[(_GROUP_OBJ, _NO_ID)]) | _SEARCH
    body = b"".join(struct.pack("<HHI", tag, entries[(tag, ident)], ident) for tag, ident in sorted(entries))
    os.setxattr(directory, _ACL_XATTR, struct.pack("<I", _ACL_VERSION) + body)
