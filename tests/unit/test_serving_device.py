"""serving_device from the DAG param / MODELOPS_SERVING_DEVICE into the spec, and compile mapped per GPU product."""

from __future__ import annotations

import pytest

from modelops.contracts import SpecError
from modelops.contracts.results import check_result
from modelops.settings import Settings, SettingsError

H100, A100, L4 = "NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-80GB", "NVIDIA-L4"


def _resolved():
    from modelops.tracking.registry import ResolvedVersion

    return ResolvedVersion(name="digits_cnn", version="3", alias=None, source_uri="s3://mlflow/1/abc/artifacts/model",
                           mlmodel={"flavors": {"pytorch": {}}})


def _spec(**kwargs):
    from modelops.tracking.registry import build_spec

    return build_spec(_resolved(), kwargs.pop("recipe", "digits_cnn"), "run123", "modelops-artifacts",
                      triton_bucket="triton", variants=["ort_fp32", "trt_fp16"], latency_slo_ms=100.0,
                      accuracy_tolerance=0.01, **kwargs)


# -- setting and spec ---------------------------------------------------------------------------------------------
def test_serving_device_setting_defaults_to_cpu_and_refuses_others_in_one_line():
    assert Settings.from_env({}).serving_device == "cpu"
    assert Settings.from_env({"MODELOPS_SERVING_DEVICE": "gpu"}).serving_device == "gpu"
    with pytest.raises(SettingsError, match="MODELOPS_SERVING_DEVICE") as err:
        Settings.from_env({"MODELOPS_SERVING_DEVICE": "tpu"})
    assert "\n" not in str(err.value)


def test_spec_carries_the_serving_device():
    assert _spec().serving_device == "cpu"
    assert _spec(serving_device="gpu").to_json()["serving_device"] == "gpu"


def test_gpu_with_a_text_in_recipe_fails_resolve_in_one_line():
    with pytest.raises(SpecError, match="serving_device: gpu .* recipe text_embedding .* use serving_device cpu") as err:
        _spec(recipe="text_embedding", serving_device="gpu", text_in=True)
    assert "\n" not in str(err.value)
    assert _spec(recipe="text_embedding", serving_device="cpu", text_in=True).serving_device == "cpu"


def test_text_in_flag_matches_what_each_recipe_serves():
    """text_in (read at resolve without importing the recipe) is true exactly for recipes with serving artifacts."""
    from modelops.recipes import get_recipe, recipe_infos
    from modelops.recipes.api import Recipe

    infos = recipe_infos()
    assert infos["text_embedding"].text_in and not infos["digits_cnn"].text_in
    checked = 0
    for name, info in infos.items():
        try:
            recipe = get_recipe(name)
        except ImportError:  # torch-only recipes: the worker environment's
            continue
        own = getattr(type(recipe), "write_serving_artifacts", Recipe.write_serving_artifacts)
        assert info.text_in is (own is not Recipe.write_serving_artifacts), name
        checked += 1
    assert checked >= 3


# -- compile targets ----------------------------------------------------------------------------------------------
def _k8s(**env):
    return Settings.from_env({"MODELOPS_EXECUTION": "kubernetes", **env})


def test_compile_targets_param_then_setting_then_single_product_then_any_gpu():
    from modelops_airflow.operators.compile_tasks import compile_targets

    both = _k8s(MODELOPS_GPU_PRODUCTS=f"{H100}, {A100}", MODELOPS_K8S_GPU_PRODUCT=L4)
    assert compile_targets({"gpu_products": [L4, H100]}, both) == [L4, H100]
    assert compile_targets({"gpu_products": None}, both) == [H100, A100]
    assert compile_targets({}, _k8s(MODELOPS_K8S_GPU_PRODUCT=L4)) == [L4]
    assert compile_targets({}, _k8s()) == [""]  # one pod on any GPU (the default selectors)
    # the run requests no engine variant: nothing to map over (Airflow skips compile without a pod)
    assert compile_targets({"gpu_products": [L4, H100]}, both, engine_variants=[]) == []
    assert compile_targets({}, _k8s(), engine_variants=["trt_fp16"]) == [""]
    assert compile_targets({}, Settings.from_env({"MODELOPS_EXECUTION": "local"}), engine_variants=[]) == []


def test_local_compile_builds_on_this_machine_only():
    from modelops_airflow.operators.compile_tasks import compile_targets

    local = Settings.from_env({"MODELOPS_GPU_PRODUCTS": f"{H100},{A100}"})
    assert compile_targets({"gpu_products": [L4]}, local) == [""]


def test_a_bad_product_is_one_line():
    from modelops_airflow.operators.compile_tasks import compile_targets

    with pytest.raises(ValueError, match="'NVIDIA H100' is not a GPU Feature Discovery product") as err:
        compile_targets({"gpu_products": ["NVIDIA H100"]}, _k8s())
    assert "\n" not in str(err.value)


# -- merge of the mapped instances ----------------------------------------------------------------------------------
def _instance(product: str, cc: str, *, fp16: str = "done", previous: dict[str, str] | None = None) -> dict:
    plan = f"s3://a/runs/m/3/r/trt_fp16/{product}/model.plan"
    tag = {"gpu": product.replace("-", " "), "gpu_product": product, "compute_capability": cc, "driver": "550",
           "tensorrt": "10.3.0"}
    fp16_engine = ({"status": "done", "reason": None, "plan": plan, "plans": {**(previous or {}), cc: plan}}
                   if fp16 == "done" else
                   {"status": fp16, "reason": "out of memory", "plan": None, "plans": dict(previous or {})})
    fp8 = {"status": "skipped", "reason": f"fp8 needs compute capability >= 8.9; has {cc}", "plan": None, "plans": {}}
    if cc >= "8.9":
        fp8 = {"status": "done", "reason": None, "plan": plan.replace("fp16", "fp8"),
               "plans": {cc: plan.replace("fp16", "fp8")}}
    return {"status": "done", "step": "compile", "seconds": 12.0, "timing_cache": f"s3://a/{product}.cache", **tag,
            "engines": {"trt_fp16": {**tag, **fp16_engine}, "trt_fp8": {**tag, **fp8}}}


def test_merge_unions_plans_by_compute_capability_and_keeps_each_build():
    from modelops_airflow.operators.compile_tasks import merge_compile_results

    h100, a100 = _instance(H100, "9.0"), _instance(A100, "8.0")
    merged = merge_compile_results([h100, None, a100])  # None: an instance skipped (no XCom)
    check_result("compile", merged)
    fp16 = merged["engines"]["trt_fp16"]
    assert fp16["plans"] == {"8.0": a100["engines"]["trt_fp16"]["plan"], "9.0": h100["engines"]["trt_fp16"]["plan"]}
    assert fp16["status"] == "done" and fp16["gpu_product"] == H100  # the first product listed
    assert set(fp16["builds"]) == {H100, A100}
    fp8 = merged["engines"]["trt_fp8"]  # built on the H100 only, skipped on the A100 with its reason
    assert fp8["status"] == "done" and list(fp8["plans"]) == ["9.0"]
    assert fp8["builds"][A100]["status"] == "skipped" and "8.9" in fp8["builds"][A100]["reason"]
    assert merged["gpu_products"] == [H100, A100]


def test_merge_takes_a_later_product_when_the_first_failed_and_keeps_first_on_a_shared_capability():
    from modelops_airflow.operators.compile_tasks import merge_compile_results

    failed, a100, a100_again = _instance(H100, "9.0", fp16="failed"), _instance(A100, "8.0"), _instance("NVIDIA-A800", "8.0")
    merged = merge_compile_results([failed, a100, a100_again])
    fp16 = merged["engines"]["trt_fp16"]
    assert fp16["status"] == "done" and fp16["gpu_product"] == A100
    assert fp16["plans"] == {"8.0": a100["engines"]["trt_fp16"]["plan"]}  # one plan per capability: the first
    assert fp16["builds"][H100] == {"status": "failed", "reason": "out of memory", "plan": None,
                                    "compute_capability": "9.0"}


def test_merge_of_only_skipped_instances_is_none():
    from modelops_airflow.operators.compile_tasks import merge_compile_results

    assert merge_compile_results([]) is None
    assert merge_compile_results([None, {"status": "skipped", "reason": "no NVIDIA GPU visible"}]) is None


# -- the GPU Triton the benchmark pod serves in (docker/worker-gpu.Dockerfile) --------------------------------------
def test_worker_gpu_image_benchmarks_in_the_serving_triton_with_its_tools():
    """Same NGC release as the serving image; the tool settings the image sets point at what it copies in."""
    from pathlib import Path

    from dockerfile_parse import DockerfileParser

    docker = Path(__file__).resolve().parents[2] / "docker"
    worker = DockerfileParser(path=str(docker / "worker-gpu.Dockerfile"))
    serving = DockerfileParser(path=str(docker / "triton.Dockerfile"))
    bases = [i["value"].split()[0] for i in worker.structure if i["instruction"] == "FROM"]
    serving_base = next(i["value"].split()[0] for i in serving.structure if i["instruction"] == "FROM")
    assert serving_base in bases and f"{serving_base}-sdk" in bases  # server and perf_analyzer of one release
    copied = {i["value"].split()[-1] for i in worker.structure if i["instruction"] == "COPY" and "--from=triton" in i["value"]}
    settings = Settings.from_env({k: v for k, v in worker.envs.items() if k.startswith("MODELOPS_")})  # final stage
    assert settings.tritonserver_bin == Path("/opt/tritonserver/bin/tritonserver")
    assert settings.perf_analyzer_bin.parent == Path("/opt/tritonserver/bin") and "/opt/tritonserver/bin" in copied
    assert {str(settings.triton_backends_dir / b) for b in ("onnxruntime", "tensorrt")} <= copied
    assert set(settings.tool_library_path.split(":")) <= copied  # tritonserver's libraries, on its path only
    assert "LD_LIBRARY_PATH" not in worker.envs  # torch and onnxruntime-gpu keep their own CUDA libraries
    # the compile step's TensorRT must be the served one: the build compares them
    assert "TENSORRT_VERSION" in (docker / "worker-gpu.Dockerfile").read_text()
