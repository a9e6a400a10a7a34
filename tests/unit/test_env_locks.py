"""The environment locks (constraints/<env>.txt): complete, in step with the requirement files, used by every install.

A fresh clone must install exactly what the tests ran on, whatever the registry published since: each requirement
file's pins appear in its environment's lock at the same version, the orchestrator environment these tests run in
holds only locked packages at their locked versions, and the Makefile passes the lock to every ``pip install -r``.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("modelops_lock", REPO / "scripts" / "lock.py")
lock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lock)


@pytest.mark.parametrize("env", sorted(lock.ENVIRONMENTS))
def test_each_lock_holds_its_requirement_files_pins(env):
    locked = lock.pins(REPO / "constraints" / f"{env}.txt")
    files, nodeps = lock.ENVIRONMENTS[env]
    assert len(locked) >= sum(len(lock.requirement_names(REPO / f)) for f in (*files, *nodeps)) // 2
    for name in (*files, *nodeps):
        for pkg in lock.requirement_names(REPO / name):
            assert pkg in locked, f"{name}: {pkg} is not in constraints/{env}.txt: run `make lock`"
        for pkg, version in lock.pins(REPO / name).items():
            # a local build (torch 2.13.0+cpu) satisfies its public version's pin
            assert locked[pkg].split("+")[0] == version.split("+")[0] or locked[pkg] == version, (
                f"{name} pins {pkg}=={version}, constraints/{env}.txt has {locked[pkg]}: run `make lock`")


VENVS = {"orchestrator": ".venv", "worker": ".venv-worker", "openwebui": ".venv-openwebui", "modelopt": ".venv-modelopt",
         "ma": ".venv-ma", "llamacpp": ".venv-llamacpp"}
LIST_DISTRIBUTIONS = ("import json, importlib.metadata as m; "
                      "print(json.dumps([[d.metadata['Name'], d.version] for d in m.distributions()]))")


@pytest.mark.parametrize("env", sorted(VENVS))
def test_an_installed_environment_is_its_lock(env):
    """Every package a venv `make` built holds is locked, at its locked version (nothing drifted in)."""
    python = REPO / VENVS[env] / "bin" / "python"
    if not (REPO / VENVS[env] / ".installed").exists():
        target = {"ma": "model-analyzer"}.get(env, env)
        pytest.skip(f"{VENVS[env]} is not installed (make {target})")
    listed = subprocess.run([str(python), "-c", LIST_DISTRIBUTIONS], capture_output=True, text=True, check=True,
                            timeout=120)
    locked = lock.pins(REPO / "constraints" / f"{env}.txt")
    drift = []
    for name, version in json.loads(listed.stdout):
        name = lock.canonical(name)
        if name in {"modelops", "pip", "setuptools", "wheel"}:
            continue
        if locked.get(name) != version:
            drift.append(f"{name} {version} (lock: {locked.get(name, 'absent')})")
    assert not drift, f"{VENVS[env]} holds packages outside constraints/{env}.txt: " + ", ".join(sorted(drift))


def test_every_pip_install_of_the_makefile_uses_its_lock():
    makefile = (REPO / "Makefile").read_text()
    installs = [line for line in makefile.splitlines() if re.search(r"pip install .*-r requirements", line)]
    assert len(installs) >= 7, installs
    for line in installs:
        env = re.search(r"\$\(call LOCK,(\w+)\)", line)
        assert env, f"a requirements install without its lock: {line.strip()}"
        assert env.group(1) in lock.ENVIRONMENTS
        for name in re.findall(r"-r (requirements[\w.-]*\.txt)", line):
            files, nodeps = lock.ENVIRONMENTS[env.group(1)]
            assert name in (*files, *nodeps), f"{name} is installed with constraints/{env.group(1)}.txt"


def test_airflow_constraints_constrain_what_our_files_do_not_pin(tmp_path):
    airflow = tmp_path / "constraints-3.11.txt"
    airflow.write_text("# header\nhttpx==0.27.0\nFlask_WTF==1.2.2\nbabel==2.17.0\n")
    out = lock.airflow_overlay(airflow, {"httpx", "flask-wtf"}, tmp_path / "overlay.txt")
    assert out.read_text().split() == ["babel==2.17.0"]  # ours win where both name a package


def test_lock_refuses_a_missing_airflow_constraints_file(tmp_path, capsys):
    with pytest.raises(SystemExit):
        lock.main(["--airflow-constraints", str(tmp_path / "absent.txt")])
    assert "no such file" in capsys.readouterr().err
