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


def _render(op, dag_run=None, gpu_product=""):
    from kubernetes.client import ApiClient

    if hasattr(op, "expand_input"):  # the mapped compile: the instance of one GPU product
        op = op.unmap({"gpu_product": gpu_product})
    ti = SimpleNamespace(xcom_pull=lambda task_ids=None, **_: {"spec_uri": SPEC_URI})
    context = {"ti": ti, "task_instance": ti, "params": {}}
    op.render_template_fields(context)
    if dag_run is not None:  # the run as the task's context holds it when Airflow executes the task
        run_ti = SimpleNamespace(dag_id="optimize_model", task_id=op.task_id, map_index=-1, try_number=1)
        context.update(dag_run=dag_run, run_id=dag_run.run_id, ti=run_ti, task_instance=run_ti,
                       dag=SimpleNamespace(dag_id="optimize_model"))
        return ApiClient().sanitize_for_serialization(op.build_pod_request_obj(context, dry_run=True))
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
    # a failed step's one-line reason is the pod's termination message (KubernetesPodOperator puts it in the error)
    assert {"name": "MODELOPS_TERMINATION_LOG", "value": "/dev/termination-log"} in container["env"]
    # the result comes back through the xcom sidecar
    assert any(c["name"] == "airflow-xcom-sidecar" for c in spec["containers"])
    # untrusted model code: no API token, not root, no privilege escalation, no capabilities
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 10001
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def test_exit_99_is_skip_and_pool_is_per_gpu_type(k8s_dag):
    op = k8s_dag.get_task("benchmark")
    assert op.skip_on_exit_code == [99] or op.skip_on_exit_code == 99 or 99 in op.skip_on_exit_code
    assert op.pool == "gpu"


def test_local_mode_uses_the_subprocess_operator(monkeypatch):
    monkeypatch.setenv("MODELOPS_EXECUTION", "local")
    from modelops_airflow.operators.step_operator import LocalStepOperator, step_operator

    op = step_operator("export", SPEC_URI)
    assert isinstance(op, LocalStepOperator) and op.spec == SPEC_URI
    with pytest.raises(ValueError):
        from modelops_airflow.operators.step_operator import step_command

        step_command("nope", SPEC_URI, "/tmp/r.json")


def test_local_benchmark_runs_in_the_benchmark_pool_when_one_is_set(monkeypatch):
    from modelops_airflow.operators.step_operator import step_operator

    monkeypatch.setenv("MODELOPS_EXECUTION", "local")
    monkeypatch.delenv("MODELOPS_BENCHMARK_POOL", raising=False)
    assert step_operator("benchmark", SPEC_URI).pool == "default_pool"  # a pool that may not exist never hangs it
    monkeypatch.setenv("MODELOPS_BENCHMARK_POOL", "modelops_benchmark")
    assert step_operator("benchmark", SPEC_URI).pool == "modelops_benchmark"
    assert step_operator("export", SPEC_URI).pool == "default_pool"  # only the measurement is serialized


# -- per-trigger placement: priority class, deadline, deferrable, MIG or full GPU --------------------------------
def _runs():
    """One real run id per way optimize_model runs are started (the triggers' own id functions)."""
    from airflow.utils.types import DagRunType

    from modelops.triggers.events import alias_run_id, run_id_for

    return {
        "manual": SimpleNamespace(run_id="manual__2026-11-28T07:00:00+00:00", run_type=DagRunType.MANUAL),
        "event": SimpleNamespace(run_id=alias_run_id("digits_cnn", 3, "champion"), run_type=DagRunType.MANUAL),
        "event-reconcile": SimpleNamespace(run_id=run_id_for("digits_cnn", 3, "stage", "production"),
                                           run_type=DagRunType.MANUAL),
        "nightly": SimpleNamespace(run_id=run_id_for("digits_cnn", 3, "fp", "0123456789ab", prefix="nightly"),
                                   run_type=DagRunType.MANUAL),
        "nightly-backfill": SimpleNamespace(run_id="backfill__2026-11-27T00:00:00+00:00", run_type=DagRunType.BACKFILL_JOB),
    }


@pytest.mark.parametrize("run", ["manual", "event", "event-reconcile", "nightly", "nightly-backfill"])
def test_priority_class_follows_how_the_run_was_triggered(k8s_dag, run):
    kind = run.split("-")[0]
    expected = {"manual": "modelops-interactive", "event": "modelops-gpu", "nightly": "modelops-nightly"}[kind]
    for step in HEAVY:
        pod = _render(k8s_dag.get_task(step), _runs()[run])
        assert pod["spec"]["priorityClassName"] == expected, (step, run)
        assert pod["metadata"]["labels"]["modelops/trigger"] == kind
        assert pod["spec"]["activeDeadlineSeconds"] == 7200
        assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true",
                                               "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]
        op = k8s_dag.get_task(step)
        assert (op.partial_kwargs["deferrable"] if hasattr(op, "expand_input") else op.deferrable) is True


def test_trigger_kind_orders_manual_above_events_above_nightly():
    from modelops_airflow.operators.step_operator import TRIGGER_KINDS, trigger_kind

    assert TRIGGER_KINDS == ("manual", "event", "nightly")
    assert [trigger_kind(r.run_id, r.run_type) for r in _runs().values()] == [
        "manual", "event", "event", "nightly", "nightly"]
    assert trigger_kind("my_own_run_from_the_api") == "manual"
    assert trigger_kind(None, "scheduled") == "event"


def test_priority_classes_deadline_and_deferrable_come_from_settings_and_match_deploy():
    import yaml

    from modelops.settings import Settings
    from modelops_airflow.operators.step_operator import kubernetes_step

    kpo = yaml.safe_load((REPO / "deploy" / "airflow" / "kpo-defaults.yaml").read_text())
    notes = kpo["metadata"]["annotations"]
    k8s = Settings.from_env(kpo["data"]).kubernetes  # the defaults are the ConfigMap's choices
    assert (k8s.priority_class_manual, k8s.priority_class, k8s.priority_class_nightly) == tuple(
        notes[f"modelops.io/priority-class.{kind}"] for kind in ("manual", "event", "nightly"))
    assert k8s.active_deadline_s == int(notes["modelops.io/active-deadline-seconds"])
    assert k8s.deferrable is (notes["modelops.io/deferrable"] == "true")

    env = {**kpo["data"], "MODELOPS_K8S_PRIORITY_CLASS_MANUAL": "team-urgent", "MODELOPS_K8S_ACTIVE_DEADLINE_S": "0",
           "MODELOPS_K8S_DEFERRABLE": "false"}
    op = kubernetes_step("compile", SPEC_URI, Settings.from_env(env).kubernetes, task_id="compile")
    pod = _render(op, _runs()["manual"])
    assert pod["spec"]["priorityClassName"] == "team-urgent"
    assert "activeDeadlineSeconds" not in pod["spec"] and op.deferrable is False
    assert _render(op)["spec"]["priorityClassName"] == "modelops-gpu"  # no run in the context: the event class


def test_full_gpu_or_mig_profile_and_a_bad_resource_is_one_line():
    from modelops.settings import Settings
    from modelops_airflow.operators.step_operator import kubernetes_step

    full = kubernetes_step("export", SPEC_URI, Settings.from_env({"MODELOPS_K8S_GPU_COUNT": "2"}).kubernetes,
                           task_id="export")
    limits = _render(full)["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "2" and not any(k.startswith("nvidia.com/mig-") for k in limits)
    mig = kubernetes_step("export", SPEC_URI, Settings.from_env(
        {"MODELOPS_K8S_GPU_RESOURCE": "nvidia.com/mig-3g.40gb"}).kubernetes, task_id="export")
    assert _render(mig)["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/mig-3g.40gb"] == "1"
    with pytest.raises(ValueError, match="neither nvidia.com/gpu nor a MIG profile") as err:
        kubernetes_step("export", SPEC_URI, Settings.from_env({"MODELOPS_K8S_GPU_RESOURCE": "nvidia/gpu"}).kubernetes,
                        task_id="export")
    assert "\n" not in str(err.value)


# -- compile mapped over GPU products ---------------------------------------------------------------------------
@pytest.mark.parametrize("product", ["NVIDIA-A100-SXM4-80GB", "NVIDIA-L4"])
def test_mapped_compile_instance_selects_its_gpu_product(k8s_dag, product):
    compile_ = k8s_dag.get_task("compile")
    assert hasattr(compile_, "expand_input") and compile_.map_index_template  # mapped, instances named by product
    assert "compile_targets" in compile_.upstream_task_ids
    pod = _render(compile_, _runs()["manual"], gpu_product=product)
    spec, container = pod["spec"], pod["spec"]["containers"][0]
    # the instance's product replaces MODELOPS_K8S_GPU_PRODUCT; the other selectors, the MIG slice, the
    # toleration and the priority class stay the step operator's
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": product}
    assert pod["metadata"]["labels"]["modelops/gpu-product"] == product
    assert container["resources"]["limits"]["nvidia.com/mig-1g.10gb"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["priorityClassName"] == "modelops-interactive"
    assert container["args"][:2] == ["-m", "modelops.steps.compile"]
    assert compile_.partial_kwargs["skip_on_exit_code"] == 99  # a node without TensorRT skips its instance


def test_mapped_compile_serializes_for_the_scheduler(k8s_dag):
    """The DAG processor stores the mapped pod operator; the scheduler reads it back with its expansion."""
    from airflow.serialization.serialized_objects import DagSerialization

    dag = DagSerialization.from_dict(DagSerialization.to_dict(k8s_dag))
    task = dag.get_task("compile")
    assert "gpu_product" in task.expand_input.value
    assert task.partial_kwargs["pool"] == "gpu" and task.partial_kwargs["map_index_template"]
    assert "compile" in dag.get_task("merge_compile").upstream_task_ids
    assert {"merge_compile", "compile"} <= dag.get_task("validate").upstream_task_ids


def test_local_compile_is_mapped_on_the_subprocess_operator(monkeypatch):
    monkeypatch.setenv("MODELOPS_EXECUTION", "local")
    from modelops_airflow.operators.step_operator import LocalStepOperator, mapped_step_operator

    mapped = mapped_step_operator("compile", SPEC_URI, ["", "NVIDIA-L4"])
    assert mapped.operator_class is LocalStepOperator
    op = mapped.unmap({"gpu_product": "NVIDIA-L4"})
    assert isinstance(op, LocalStepOperator) and op.step == "compile" and op.gpu_product == "NVIDIA-L4"
