"""The wheel installs into a fresh Airflow environment and is a provider there (issue 23).

Built from the checkout's files (``git ls-files``: nothing stale from a build dir), installed with the ``airflow``
extra under the orchestrator lock into a new venv whose ``sys.path`` holds no checkout, then asked, from a directory
outside the repository: ``airflow providers list`` / ``hooks`` / ``widgets`` show the provider, its connection
types and the Triton token as a sensitive field; the hooks import; the packaged templates and recipe data are
there; no generic top-level ``operators`` package is installed; and the five DAG files parse from a copy of
``dags/`` alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.integration.helpers import REPO

pytestmark = pytest.mark.integration
DAGS = {"optimize_model", "nightly_reoptimize", "registry_reconcile", "rollout_model", "rollback_model"}

PROBE = """
import importlib, importlib.util, json, sys
from pathlib import Path
from airflow.dag_processing.dagbag import DagBag
import modelops, modelops_airflow.hooks as hooks
from modelops.serving.triton.model_dir import PYTHON_TEMPLATES
import model_recipes
bag = DagBag(sys.argv[1])  # AIRFLOW__CORE__LOAD_EXAMPLES=False: only these
print(json.dumps({
    "dags": sorted(bag.dag_ids), "errors": {k: v.splitlines()[-1] for k, v in bag.import_errors.items()},
    "modelops_file": modelops.__file__, "hooks": sorted(hooks.__all__),
    "templates": sorted(p.name for p in PYTHON_TEMPLATES.glob("*.py")),
    "recipe_data": (Path(model_recipes.__file__).parent / "data" / "llm_heldout.json").is_file(),
    "operators_top_level": importlib.util.find_spec("operators") is not None,
    "sys_path_has_repo": any(p.rstrip("/") == sys.argv[2] for p in sys.path),
}))
"""


def _sources(dest: Path) -> Path:
    """The checkout's files (tracked and new, not ignored), links kept, copied to ``dest``."""
    names = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")  # fmt: skip
    archive = dest.parent / "src.tar"
    with tarfile.open(archive, "w") as tar:
        for name in filter(None, names):
            if os.path.lexists(REPO / name):
                tar.add(REPO / name, arcname=name, recursive=False)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="tar")
    return dest


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False, **kwargs)
    assert out.returncode == 0, f"{cmd[:3]} exited {out.returncode}: {(out.stderr or out.stdout)[-2000:]}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("install")
    src = _sources(tmp / "src")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"),
          str(src)])  # fmt: skip
    (wheel,) = (tmp / "dist").glob("modelops-*.whl")
    _run([sys.executable, "-m", "venv", str(tmp / "venv")])
    _run([str(tmp / "venv/bin/pip"), "install", "-q", "--disable-pip-version-check", "-c",
          str(REPO / "constraints/orchestrator.txt"), f"{wheel}[airflow]"])  # fmt: skip
    dags = tmp / "dags_only"
    dags.mkdir()
    for f in (REPO / "dags").glob("*.py"):
        (dags / f.name).write_text(f.read_text())
    env = {"PATH": f"{tmp / 'venv/bin'}:{os.environ['PATH']}", "HOME": str(tmp), "AIRFLOW_HOME": str(tmp / "airflow"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__DAGS_FOLDER": str(dags)}  # fmt: skip
    return {"tmp": tmp, "wheel": wheel, "dags": dags, "env": env, "python": str(tmp / "venv/bin/python"),
            "airflow": str(tmp / "venv/bin/airflow")}


def _airflow_json(installed: dict, *args: str) -> list[dict]:
    out = _run([installed["airflow"], *args, "-o", "json"], env=installed["env"], cwd=installed["tmp"])
    return json.loads(out.stdout[out.stdout.index("["):])


def test_airflow_lists_the_provider_and_its_connection_types(installed):
    providers = {p["package_name"]: p for p in _airflow_json(installed, "providers", "list")}
    assert "modelops" in providers, sorted(providers)
    hooks = {h["connection_type"]: h["class"] for h in _airflow_json(installed, "providers", "hooks")}
    assert hooks["modelops_triton"] == "modelops_airflow.hooks.triton.TritonHook"
    assert {"modelops_mlflow", "modelops_gateway", "modelops_prometheus", "modelops_openwebui", "modelops_grafana"} <= set(hooks)
    widgets = {w["connection_parameter_name"]: w for w in _airflow_json(installed, "providers", "widgets")}
    assert "extra__modelops_triton__admin_token" in widgets
    links = {x["extra_link_class_name"] for x in _airflow_json(installed, "providers", "links")}
    assert {f"modelops_airflow.links.{n}" for n in ("MlflowRunLink", "TritonModelLink", "GrafanaDashboardLink")} <= links


def test_the_installed_package_stands_alone_and_the_dags_parse(installed):
    out = _run([installed["python"], "-c", PROBE, str(installed["dags"]), str(REPO)], env=installed["env"],
               cwd=installed["tmp"])  # fmt: skip
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert "site-packages" in got["modelops_file"] and not got["sys_path_has_repo"]
    assert got["errors"] == {} and set(got["dags"]) == DAGS
    assert "TritonHook" in got["hooks"] and "onnxruntime_model.py" in got["templates"] and got["recipe_data"]
    assert not got["operators_top_level"]  # the operators live under modelops_airflow.operators
