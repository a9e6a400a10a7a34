"""Test-wide settings: a private AIRFLOW_HOME so tests never touch ~/airflow or the demo stack."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # modelops, modelops_airflow (the plugin package), operators, model_recipes
    sys.path.insert(0, str(REPO))

if "AIRFLOW_HOME" not in os.environ or "modelops-test-airflow" not in os.environ["AIRFLOW_HOME"]:
    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="modelops-test-airflow-")
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(REPO / "plugins"))
