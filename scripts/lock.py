#!/usr/bin/env python3
"""Resolve each Python environment's requirements into a full lock: constraints/<env>.txt.

    python3 scripts/lock.py                      # every environment
    python3 scripts/lock.py orchestrator worker  # some of them
    make lock                                    # the same as the first line

Each lock pins every package the environment installs (transitive ones included), so a fresh clone installs what the
tests ran on, whatever the registry published since. `make` passes the lock with `-c` to every `pip install` of that
environment. A lock is produced by pip's own resolver: a throw-away venv on this Python, `pip install --dry-run
--ignore-installed --report` on the environment's requirement files (nothing is installed), and each resolved
``name==version`` written out sorted. Change a requirement file, run this, and commit both.

``--airflow-constraints FILE`` starts the orchestrator's resolution from the Airflow project's constraints file for
the pinned apache-airflow (https://raw.githubusercontent.com/apache/airflow/constraints-X.Y.Z/constraints-3.11.txt,
downloaded by hand where GitHub is reachable): its pins constrain every package our requirement files do not pin
themselves; ours win where both name a package.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOCKS = REPO / "constraints"

# environment -> (requirement files resolved together, requirement files installed with --no-deps: pinned as written)
ENVIRONMENTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "orchestrator": (("requirements.txt", "requirements-dev.txt"), ()),
    "worker": (("requirements-worker.txt", "requirements-dev.txt"), ("requirements-worker-nodeps.txt",)),
    "openwebui": (("requirements-openwebui.txt",), ()),
    "modelopt": (("requirements-modelopt.txt",), ()),
    "ma": (("requirements-ma.txt",), ()),
    "llamacpp": (("requirements-llamacpp.txt",), ()),
}

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    """PEP 503 normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(path: Path) -> set[str]:
    """Canonical names of the requirements a file lists (comments, options and blank lines skipped)."""
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-") and (m := _NAME.match(line)):
            names.add(canonical(m.group(1)))
    return names


def pins(path: Path) -> dict[str, str]:
    """``{canonical name: version}`` of a lock or requirement file's ``name==version`` lines."""
    found = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*==\s*([^\s;#]+)", line)
        if m:
            found[canonical(m.group(1))] = m.group(2)
    return found


def airflow_overlay(constraints: Path, own: set[str], dest: Path) -> Path:
    """The Airflow constraints less every package our requirement files name (ours win)."""
    kept = [line for line in constraints.read_text().splitlines()
            if (m := _NAME.match(line.split("#", 1)[0])) and canonical(m.group(1)) not in own]
    dest.write_text("\n".join(kept) + "\n")
    return dest


def _pip(cmd: list[str], what: str) -> None:
    """Run pip, passing its stderr on without the lines about this machine's optional local indexes."""
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    noise = "is ignored: it is neither a file nor a directory"
    sys.stderr.write("".join(line for line in proc.stderr.splitlines(keepends=True) if noise not in line))
    if proc.returncode:
        raise SystemExit(f"pip could not {what} (exit {proc.returncode}); see above")


def resolve(files: tuple[str, ...], extra_constraints: Path | None, workdir: Path) -> dict[str, str]:
    """Resolve requirement files with pip in a throw-away venv; ``{name: version}`` of everything it would install."""
    env = workdir / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env)
    pip = [str(env / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    _pip([*pip, "install", "-q", "--upgrade", "pip"], "upgrade pip")
    report = workdir / "report.json"
    cmd = [*pip, "install", "-q", "--dry-run", "--ignore-installed", "--report", str(report)]
    for name in files:
        cmd += ["-r", str(REPO / name)]
    if extra_constraints is not None:
        cmd += ["-c", str(extra_constraints)]
    _pip(cmd, f"resolve {' '.join(files)}")
    resolved = {}
    for item in json.loads(report.read_text())["install"]:
        meta = item["metadata"]
        resolved[meta["name"]] = meta["version"]
    return resolved


def lock(name: str, airflow_constraints: Path | None) -> Path:
    files, nodeps = ENVIRONMENTS[name]
    with tempfile.TemporaryDirectory(prefix=f"modelops-lock-{name}-") as tmp:
        extra = None
        if airflow_constraints is not None and name == "orchestrator":
            own = set().union(*(requirement_names(REPO / f) for f in files))
            extra = airflow_overlay(airflow_constraints, own, Path(tmp) / "airflow-constraints.txt")
        resolved = resolve(files, extra, Path(tmp))
    for extra_file in nodeps:
        resolved.update(pins(REPO / extra_file))
    sources = " ".join([*files, *nodeps])
    lines = [
        f"# Lock of the {name} environment: every package it installs, resolved by pip from {sources}",
        f"# on Python {sys.version_info[0]}.{sys.version_info[1]}"
        + (f" with the Airflow constraints of {airflow_constraints.name}" if extra else "") + ".",
        "# Generated by `make lock` (scripts/lock.py); do not edit by hand: change the requirement file and regenerate.",
    ]
    lines += [f"{pkg}=={version}" for pkg, version in sorted(resolved.items(), key=lambda kv: canonical(kv[0]))]
    LOCKS.mkdir(exist_ok=True)
    out = LOCKS / f"{name}.txt"
    out.write_text("\n".join(lines) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("envs", nargs="*", choices=[*ENVIRONMENTS, []], metavar="ENV",
                        help=f"environments to lock (default: all of {', '.join(ENVIRONMENTS)})")
    parser.add_argument("--airflow-constraints", type=Path, default=None,
                        help="the Airflow project's constraints file for the pinned apache-airflow (a local copy)")
    args = parser.parse_args(argv)
    if args.airflow_constraints is not None and not args.airflow_constraints.is_file():
        parser.error(f"--airflow-constraints: no such file: {args.airflow_constraints}")
    for name in args.envs or list(ENVIRONMENTS):
        out = lock(name, args.airflow_constraints)
        print(f"{name}: {len(pins(out))} packages -> {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
