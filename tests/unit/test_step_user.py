"""Heavy steps run as an unprivileged user of their own when the step operator runs as root (real processes)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from modelops.step_user import StepUserError, step_user

AS_ROOT = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("useradd"), reason="needs root and useradd")

PROBE = """
import json, os, sys
out = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "home": os.environ.get("HOME")}
for what, call in [("stack_json", lambda: open(sys.argv[1]).read()),
                   ("parent_environ", lambda: open(f"/proc/{os.getppid()}/environ").read()),
                   ("signal_parent", lambda: os.kill(os.getppid(), 0))]:
    try:
        call()
        out[what] = "allowed"
    except OSError as exc:
        out[what] = type(exc).__name__
open("probe.json", "w").write(json.dumps(out))
"""


def test_no_user_when_unnamed_or_not_root(monkeypatch):
    assert step_user("-") is None
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert step_user("modelops-step") is None  # the documented fallback: steps keep the task's user


@AS_ROOT
def test_root_is_not_a_step_user():
    with pytest.raises(StepUserError, match="^MODELOPS_STEP_USER 'root' is root"):
        step_user("root")


@AS_ROOT
def test_a_step_runs_as_the_step_user_and_cannot_read_the_stack(tmp_path):
    from modelops_airflow.operators.step_operator import LocalStepOperator

    from modelops.step_user import ensure_can_run

    user = step_user("modelops-step")  # created on first use, then found
    assert user is not None and user.uid != 0 and step_user("modelops-step") == user
    ensure_can_run(user, Path(sys.executable))  # what the operator does first (pyenv may live under /root)
    stack = tmp_path / "stack"
    stack.mkdir(mode=0o700)
    (stack / "stack.json").write_text('{"secret": "x"}')
    with tempfile.TemporaryDirectory() as work:
        os.chown(work, user.uid, user.gid)
        env = {"PATH": os.environ["PATH"], **user.env(work)}
        rc, reason = LocalStepOperator(task_id="probe", step="export", spec="-")._run(
            [sys.executable, "-c", PROBE, str(stack / "stack.json")], env, cwd=work, user=user)
        assert rc == 0, reason
        seen = json.loads((Path(work) / "probe.json").read_text())
    assert (seen["uid"], seen["gid"], seen["groups"], seen["home"]) == (user.uid, user.gid, [], work)
    assert seen["stack_json"] == seen["parent_environ"] == seen["signal_parent"] == "PermissionError"


@AS_ROOT
def test_an_interpreter_under_a_private_directory_is_made_reachable_for_that_user_only(tmp_path):
    """pyenv under /root (mode 700): the step user gets search permission (x) there by an ACL naming only it."""
    from modelops.step_user import _can_run, ensure_can_run

    user = step_user("modelops-step")
    private = Path(tempfile.mkdtemp(prefix="modelops-private-", dir="/var/tmp"))
    try:
        os.chmod(private, 0o700)
        (private / "listing-secret").write_text("x")
        python = private / "python3"
        python.symlink_to(os.path.realpath(sys.executable))
        ensure_can_run(user, Path(os.path.realpath(sys.executable)))  # the interpreter itself, wherever it lives
        assert not _can_run(user, python)
        granted = ensure_can_run(user, python)
        assert granted == [str(private)]
        assert ensure_can_run(user, python) == []  # now it runs: nothing more to grant
        assert os.stat(private).st_mode & 0o007 == 0  # others still get nothing
        seen = []
        with tempfile.TemporaryDirectory() as work:
            os.chown(work, user.uid, user.gid)
            code = "import os, sys; print(os.path.exists(sys.argv[1])); os.listdir(sys.argv[2])"
            import subprocess

            proc = subprocess.run([str(python), "-c", code, str(private / "listing-secret"), str(private)], cwd=work,
                                  capture_output=True, text=True, check=False, **user.popen_kwargs())
            seen = proc.stdout.split()
        assert seen == ["True"] and "PermissionError" in proc.stderr  # search, but no listing
    finally:
        shutil.rmtree(private)
