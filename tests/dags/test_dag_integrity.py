from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert {"optimize_model", "registry_reconcile", "nightly_reoptimize", "rollout_model", "rollback_model"} <= set(
        dagbag.dags
    )


def test_optimize_model_wiring(dagbag):
    dag = dagbag.dags["optimize_model"]
    order = ["resolve", "export", "optimize", "compile", "validate", "benchmark", "select", "publish", "deploy", "record"]
    assert set(order) <= set(dag.task_ids)
    for up, down in itertools.pairwise(order):
        assert down in dag.get_task(up).downstream_task_ids, f"{up} -> {down}"
    assert dag.get_task("record").trigger_rule == "none_failed"
    assert dag.get_task("validate").trigger_rule == "none_failed"  # compile is skipped on CPU machines
    light = {"resolve", "select", "publish", "deploy", "record"}  # network tasks safe to run again
    for task_id in order:
        task = dag.get_task(task_id)
        if task_id in light:
            assert task.retries == 3 and task.retry_exponential_backoff == 2.0, task_id
            assert task.retry_delay.total_seconds() == 15 and task.max_retry_delay.total_seconds() == 120, task_id
        else:  # heavy steps: a retry would redo minutes to hours of work
            assert task.retries == 0, task_id


def test_params_are_the_contract(dagbag):
    params = dagbag.dags["optimize_model"].params
    for name in ("model_name", "model_version", "model_alias", "variants", "latency_slo_ms", "accuracy_tolerance", "rollout"):
        assert name in params, name
    schema = params.get_param("variants").schema
    assert set(schema["items"]["enum"]) >= {"ort_fp32", "ort_int8_dynamic"}


def test_compile_is_mapped_per_gpu_product_and_merged(dagbag):
    dag = dagbag.dags["optimize_model"]
    compile_ = dag.get_task("compile")
    assert hasattr(compile_, "expand_input") and "gpu_product" in compile_.expand_input.value
    assert {"compile_targets", "optimize"} <= compile_.upstream_task_ids
    merge = dag.get_task("merge_compile")
    # every instance skipped (no GPU) -> merge skipped -> validate still runs; a failed instance fails the run
    assert merge.trigger_rule == "none_failed" and merge.retries == 3
    assert {"compile", "resolve"} <= merge.upstream_task_ids
    assert {"compile", "merge_compile"} <= dag.get_task("validate").upstream_task_ids


def test_serving_device_and_gpu_products_params():
    from airflow.sdk.definitions.param import ParamsDict

    from dags.optimize_model import PARAMS

    assert PARAMS["serving_device"].value is None  # empty: MODELOPS_SERVING_DEVICE
    assert PARAMS["gpu_products"].value is None  # empty: MODELOPS_GPU_PRODUCTS
    params = ParamsDict(PARAMS)
    params["serving_device"], params["gpu_products"] = "gpu", ["NVIDIA-H100-80GB-HBM3", "NVIDIA-L4"]
    params.validate()


@pytest.mark.parametrize("bad", [{"latency_slo_ms": -1}, {"accuracy_tolerance": 2}, {"variants": ["nope"]},
                                 {"model_version": "abc"}, {"rollout": 0}, {"serving_device": "tpu"},
                                 {"gpu_products": ["NVIDIA H100"]}, {"gpu_products": ["A", "A"]}])
def test_bad_params_are_refused_before_any_work(dagbag, bad):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    params = ParamsDict(dagbag.dags["optimize_model"].params)
    for key, value in bad.items():
        with pytest.raises((ParamValidationError, ValueError)):
            params[key] = value
            params.validate()


def test_dag_file_is_cheap_to_import():
    """Parsing must not pull in torch, mlflow, onnx, tritonclient or the Kubernetes provider."""
    code = (
        "import sys; sys.path[:0] = [{!r}, {!r}];"
        "import runpy; runpy.run_path({!r});"
        "heavy = [m for m in ('torch', 'mlflow', 'onnx', 'onnxruntime', 'tritonclient', 'great_expectations',"
        " 'airflow.providers.cncf.kubernetes.operators.pod', 'boto3') if m in sys.modules];"
        "print(heavy); sys.exit(1 if heavy else 0)"
    ).format(str(REPO), str(REPO), str(REPO / "dags" / "optimize_model.py"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
