"""Helpers shared by the integration tests."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_step(settings, step: str, spec_uri: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run a heavy step exactly as the local step operator does (worker env subprocess)."""
    result = tmp_path / f"{step}.json"
    proc = subprocess.run(
        [str(settings.worker_python), "-m", f"modelops.steps.{step}", "--spec", spec_uri, "--result", str(result)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    proc.result = json.loads(result.read_text()) if result.exists() else None
    return proc


def resolve(params: dict, run_id: str | None = None) -> dict:
    """The pipeline's resolve task on ``params`` (over the DAG's defaults for the rest), as one Airflow run."""
    import uuid

    from modelops_airflow.operators import pipeline_tasks

    base = {"variants": ["ort_fp32", "ort_int8_dynamic"], "latency_slo_ms": 100.0, "accuracy_tolerance": 0.01,
            "rollout": 100, "model_version": None, "model_alias": None}
    return pipeline_tasks.resolve({**base, **params}, run_id or f"test__{uuid.uuid4().hex[:8]}")


RANDOMIZE = """
import sys, numpy as np, onnx
from onnx import numpy_helper
model = onnx.load(sys.argv[1])
rng = np.random.default_rng(0)
for init in model.graph.initializer:
    arr = numpy_helper.to_array(init)
    if arr.dtype == np.float32 and arr.size > 8:
        init.CopyFrom(numpy_helper.from_array(rng.normal(size=arr.shape).astype(np.float32), init.name))
onnx.save(model, sys.argv[2])
"""


def randomize_weights(settings, src: Path, dest: Path) -> Path:
    """An ONNX model with the same graph and random weights: a candidate that must fail any accuracy gate."""
    subprocess.run([str(settings.worker_python), "-c", RANDOMIZE, str(src), str(dest)], check=True, timeout=120)
    return dest


def deploy_chat_llm(stack: dict, settings, storage, triton, register, name: str) -> dict:
    """Register SmolLM2 as ``name`` (demo CLI: tags ``modelops.task=chat``, ``openwebui.groups=demo-users``),
    publish it as its ``hf_eager`` LLM deployment, load it and route ``name`` 100% to it.

    Returns ``{"name", "version", "deployment"}``; undo with :func:`undeploy_chat_llm`.
    """
    from modelops.serving.routes import Routes, write_routes
    from modelops.serving.triton.llm_dir import publish_registered

    del stack  # the session's stack fixture has set MLFLOW_TRACKING_URI etc. (MLflow's artifact download reads them)
    reg = register("smollm2", alias="champion", name=name)
    published = publish_registered(storage, model_name=name, model_version=reg["version"],
                                   triton_bucket=settings.triton_bucket)  # fmt: skip
    triton.load_model(published["deployment"])
    write_routes(storage, settings.triton_bucket, Routes(model=name), {published["deployment"]: 100}, by="tests")
    return {"name": name, "version": reg["version"], "deployment": published["deployment"]}


def undeploy_chat_llm(settings, storage, triton, llm: dict) -> None:
    """Remove the routes of a :func:`deploy_chat_llm` model and unload its deployment."""
    storage.delete(f"s3://{settings.triton_bucket}/routes/{llm['name']}.json")
    triton.unload_model(llm["deployment"])
