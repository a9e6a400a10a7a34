"""Every recipe end to end on the real stack, and the models the pipeline must refuse.

Each demo model is registered in MLflow through the flavor a user would use (sentence-transformers,
pytorch, sklearn with skops, onnx) and carried through ``optimize_model`` by Airflow: export, optimize,
validate with the great-expectations gate, benchmark with perf_analyzer in Triton, publish to S3, deploy
to the serving Triton, record in MLflow. The runs are triggered together, as a nightly re-optimization
would; their benchmark tasks take turns in the stack's one-slot ``modelops_benchmark`` pool.

The bad cases go through the same DAG: a PyTorch model with an operator ONNX cannot express fails export
naming the operator, a ``python_function``-only model fails resolve naming its flavor, and MobileNetV2's
calibrated INT8 candidates, built by default for a CNN, are gated on top-1 agreement with the reason recorded.
No run names variants: each gets its recipe's family defaults.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from tests.integration.helpers import REPO

pytestmark = pytest.mark.integration
DAG = "optimize_model"
RECIPES = {"minilm": "text_embedding", "mobilenet": "mobilenet_v2", "tabular": "sklearn_tabular", "onnx": "onnx_generic"}
# the family each model's defaults come from (the ONNX demo is the digits CNN: a [-1, 1, 8, 8] image signature)
KINDS = {"minilm": "text_encoder", "mobilenet": "image", "tabular": "tabular", "onnx": "image"}
FLAVORS = {"minilm": "sentence_transformers", "mobilenet": "pytorch", "tabular": "sklearn", "onnx": "onnx"}
BAD = ("unexportable", "pyfunc")


@dataclass
class Run:
    kind: str
    reg: dict[str, Any]
    run_id: str
    state: str

    def summary(self, airflow) -> dict[str, Any]:
        return airflow.xcom(DAG, self.run_id, "record")


def _register_bad(settings, stack, kind: str) -> dict[str, Any]:
    from modelops.local import stack as stack_mod

    name = f"it_bad_{kind}_{uuid.uuid4().hex[:6]}"
    proc = subprocess.run(
        [str(settings.worker_python), "-m", "tests.bad_models", "register", kind, "--name", name, "--alias", "champion"],
        env={**os.environ, **stack_mod.client_env(stack), "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def runs(register, airflow, stack, settings) -> dict[str, Run]:
    """Register the four recipe models and the two bad ones, trigger six runs at once, wait for all."""
    regs = {kind: register(kind, alias="champion") for kind in RECIPES}
    regs.update({kind: _register_bad(settings, stack, kind) for kind in BAD})
    airflow.wait_for_dag(DAG)
    started = {
        kind: airflow.trigger(DAG, {"model_name": reg["name"], "model_alias": "champion", "model_version": None})
        for kind, reg in regs.items()
    }
    return {
        kind: Run(kind, regs[kind], run["dag_run_id"], airflow.wait_for_run(DAG, run["dag_run_id"], timeout_s=2400))
        for kind, run in started.items()
    }


def test_benchmark_pool_exists_with_one_slot(airflow):
    pool = airflow.request("GET", "/pools/modelops_benchmark")
    assert pool["slots"] == 1


@pytest.mark.parametrize("kind", RECIPES)
def test_recipe_runs_end_to_end_and_is_recorded(runs, kind, airflow, mlflow_client, storage):
    run = runs[kind]
    states = airflow.task_states(DAG, run.run_id)
    assert run.state == "success", states
    assert states["compile"] == "skipped"  # no engine variant requested (else: no GPU here, exit 99)
    spec = storage.read_json(airflow.xcom(DAG, run.run_id, "resolve")["spec_uri"])
    assert (spec["recipe"], spec["flavor"]) == (RECIPES[kind], FLAVORS[kind])  # chosen from the MLmodel
    from modelops.contracts.variants import default_variants

    assert spec["variants"] == default_variants(KINDS[kind])  # no variants requested: the family's defaults
    summary = run.summary(airflow)
    assert summary["chosen"] in spec["variants"]
    assert summary["deployment"] == f"{run.reg['name']}--v{run.reg['version']}-{summary['chosen']}".lower()
    mv = mlflow_client.get_model_version(run.reg["name"], run.reg["version"])
    assert mv.tags["modelops.status"] == "deployed" and mv.tags["modelops.deployment"] == summary["deployment"]
    artifacts = {a.path for a in mlflow_client.list_artifacts(mv.tags["modelops.run_id"])}
    assert {"report.html", "summary.json", "accuracy"} <= artifacts
    baseline = next(r for r in summary["rows"] if r["variant"] == "baseline")
    assert baseline["throughput"] and baseline["throughput"] > 0  # the source framework, served by Triton


def _serving_samples(airflow, storage, run: Run) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(inputs, source outputs) a client sends and expects: raw text for MiniLM, tensors otherwise."""
    from modelops.serving.deploy import load_npz

    spec = storage.read_json(airflow.xcom(DAG, run.run_id, "resolve")["spec_uri"])
    outputs = storage.read_json(f"{spec['run_prefix']}/export/result.json")["outputs"]
    samples = load_npz(storage, outputs.get("serving_samples") or outputs["samples"])
    inputs = {k: v for k, v in samples.items() if not k.startswith("output:")}
    return inputs, {k.removeprefix("output:"): v for k, v in samples.items() if k.startswith("output:")}


@pytest.mark.parametrize("kind", RECIPES)
def test_serving_triton_answers_like_the_source(runs, kind, airflow, storage, triton):
    from modelops.serving.deploy import triton_infer

    run = runs[kind]
    assert run.state == "success"
    deployment = run.summary(airflow)["deployment"]
    assert triton.is_model_ready(deployment)
    inputs, source = _serving_samples(airflow, storage, run)
    got = triton_infer(triton, deployment, inputs, list(source))
    if kind == "minilm":
        assert inputs["text"].dtype.kind in "SUO" and inputs["text"].shape[1:] == (1,)  # raw text in
        a, b = got["embedding"].astype(np.float64), source["embedding"].astype(np.float64)
        cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cosine.mean() >= 0.99 and cosine.min() >= 0.97
    elif kind == "tabular":
        assert np.mean(got["label"] == source["label"]) >= 0.99
    else:  # classifiers: logits
        (name,) = source
        assert np.mean(got[name].argmax(1) == source[name].argmax(1)) >= 0.9


def test_mobilenet_calibrated_int8_is_gated_on_top1_and_the_verdict_recorded(runs, airflow, mlflow_client):
    """A CNN's defaults: static INT8 (QDQ, sensitive convolutions kept in fp32) and OpenVINO INT8, calibrated on
    the recipe's photos and gated on top-1 agreement over other photos; each verdict is in the summary and MLflow."""
    run = runs["mobilenet"]
    summary = run.summary(airflow)
    mv = mlflow_client.get_model_version(run.reg["name"], run.reg["version"])
    mlflow_run = mlflow_client.get_run(mv.tags["modelops.run_id"])
    assert mlflow_run.data.params["variants_from"] == "image defaults"
    for variant in ("ort_int8_static", "openvino_int8"):
        row = next(r for r in summary["rows"] if r["variant"] == variant)
        assert 0.0 < row["metric"] <= 1.0, row
        passed = mlflow_run.data.metrics[f"{variant}.gate_passed"]
        if row["metric"] < 0.99:  # below the fp32 source's 1.0 - tolerance 0.01
            assert row["status"] == "rejected" and "top1_agreement" in row["reason"], row
            assert row["expectations"]["success"] is False and row["expectations"]["failed"]
            assert passed == 0.0
        else:
            assert row["status"] != "rejected" and passed == 1.0, row
    assert mlflow_run.data.metrics["ort_fp32.gate_passed"] == 1.0


def test_unexportable_model_fails_export_naming_the_operator(runs, airflow, mlflow_client, storage, settings):
    from modelops.serving.routes import read_routes

    run = runs["unexportable"]
    states = airflow.task_states(DAG, run.run_id)
    assert run.state == "failed" and states["resolve"] == "success" and states["export"] == "failed", states
    assert "cannot export to ONNX" in airflow.task_log(DAG, run.run_id, "export")
    mv = mlflow_client.get_model_version(run.reg["name"], run.reg["version"])
    assert mv.tags["modelops.status"] == "failed"
    error = mv.tags["modelops.error"]
    assert "linalg_svd" in error and "\n" not in error
    assert read_routes(storage, settings.triton_bucket, run.reg["name"]).weights() == {}  # nothing served


def test_unsupported_flavor_fails_resolve_naming_it(runs, airflow, mlflow_client):
    run = runs["pyfunc"]
    states = airflow.task_states(DAG, run.run_id)
    assert run.state == "failed" and states["resolve"] == "failed", states
    assert states["export"] in ("upstream_failed", None)
    log = airflow.task_log(DAG, run.run_id, "resolve")
    assert "['python_function']" in log and "supported: pytorch" in log
    mv = mlflow_client.get_model_version(run.reg["name"], run.reg["version"])
    assert mv.tags["modelops.status"] == "failed" and "python_function" in mv.tags["modelops.error"]
