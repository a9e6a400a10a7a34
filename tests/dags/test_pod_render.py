"""Kubernetes mode: every heavy step renders to a GPU pod without a cluster (KPO dry run)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("export", "optimize", "compile", "validate", "benchmark")
SPEC_URI = "s3://modelops-artifacts/runs/digits_cnn/3/abc123/spec.json"


@pytest.fixture(scope="module")
def k8s_dag():
    mp = pytest.MonkeyPatch()
    mp.setenv("MODELOPS_EXECUTION", "kubernetes")
    mp.setenv("MODELOPS_K8S_NAMESPACE", "ml-serving")
    mp.setenv("MODELOPS_K8S_IMAGE", "registry.local/modelops-worker:1.2.3")
    mp.setenv("MODELOPS_K8S_GPU_RESOURCE", "nvidia.com/mig-1g.10gb")
    mp.setenv("MODELOPS_K8S_GPU_PRODUCT", "NVIDIA-H100-80GB-HBM3")
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    yield bag.dags["optimize_model"]
    mp.undo()


def _render(op):
    from kubernetes.client import ApiClient

    ti = SimpleNamespace(xcom_pull=lambda task_ids=None, **_: {"spec_uri": SPEC_URI})
    op.render_template_fields({"ti": ti, "task_instance": ti, "params": {}})
    return ApiClient().sanitize_for_serialization(op.build_pod_request_obj(dry_run=True))


@pytest.mark.parametrize("step", HEAVY)
def test_heavy_step_renders_a_gpu_pod(k8s_dag, step):
    pod = _render(k8s_dag.get_task(step))
    spec = pod["spec"]
    container = spec["containers"][0]
    assert pod["metadata"]["namespace"] == "ml-serving"
    assert container["image"] == "registry.local/modelops-worker:1.2.3"
    assert container["command"] == ["python"]
    assert container["args"] == ["-m", f"modelops.steps.{step}", "--spec", SPEC_URI, "--result", "/airflow/xcom/return.json"]
    assert container["resources"]["limits"]["nvidia.com/mig-1g.10gb"] == "1"
    assert container["resources"]["requests"]["nvidia.com/mig-1g.10gb"] == "1"
    assert spec["nodeSelector"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["priorityClassName"] == "modelops-gpu"
    assert any(src.get("secretRef", {}).get("name") == "modelops-s3" for src in container.get("envFrom", []))
    # the result comes back through the xcom sidecar
    assert any(c["name"] == "airflow-xcom-sidecar" for c in spec["containers"])


def test_exit_99_is_skip_and_pool_is_per_gpu_type(k8s_dag):
    op = k8s_dag.get_task("benchmark")
    assert op.skip_on_exit_code == [99] or op.skip_on_exit_code == 99 or 99 in op.skip_on_exit_code
    assert op.pool == "gpu"


def test_local_mode_uses_the_subprocess_operator(monkeypatch):
    monkeypatch.setenv("MODELOPS_EXECUTION", "local")
    from operators.step_operator import LocalStepOperator, step_operator

    op = step_operator("export", SPEC_URI)
    assert isinstance(op, LocalStepOperator) and op.spec == SPEC_URI
    with pytest.raises(ValueError):
        from operators.step_operator import step_command

        step_command("nope", SPEC_URI, "/tmp/r.json")


def test_local_benchmark_runs_in_the_benchmark_pool_when_one_is_set(monkeypatch):
    from operators.step_operator import step_operator

    monkeypatch.setenv("MODELOPS_EXECUTION", "local")
    monkeypatch.delenv("MODELOPS_BENCHMARK_POOL", raising=False)
    assert step_operator("benchmark", SPEC_URI).pool == "default_pool"  # a pool that may not exist never hangs it
    monkeypatch.setenv("MODELOPS_BENCHMARK_POOL", "modelops_benchmark")
    assert step_operator("benchmark", SPEC_URI).pool == "modelops_benchmark"
    assert step_operator("export", SPEC_URI).pool == "default_pool"  # only the measurement is serialized
