"""TensorRT end to end on a real tiny model: export -> optimize -> compile -> validate -> benchmark (GPU Triton) ->
select -> publish -> deploy, with only the GPU-only pieces faked, each at its documented boundary:

- ``tensorrt`` (compile): the fake of ``test_compile_fake_trt.py`` (TensorRT 10's builder API); its "plan" embeds
  the ONNX it was parsed from;
- ``polygraphy.backend.trt`` (validate): ``tests/worker/fakes/polygraphy_trt.py`` deserializes that plan and computes
  through ONNX Runtime, so the accuracy gate scores a real computation (a wrong engine is rejected);
- the GPU ``tritonserver`` and ``perf_analyzer`` binaries (benchmark): programs at ``MODELOPS_TRITONSERVER`` /
  ``MODELOPS_PERF_ANALYZER`` (``tests/worker/fakes/``) that take the real command lines, parse the rendered
  config.pbtxt with Triton's protobuf, answer KServe v2 HTTP and write perf_analyzer's CSV (parsed by the real parser).

Everything else is the real code: the step frames, the gate (recipe metric + great-expectations suite), rendering,
selection, publish (in-memory S3 with conditional writes) and deploy against a real CPU tritonserver over HTTP, where
the GPU deployment must fail loudly and leave what is served untouched.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from model_recipes.demo_models import save_local
from modelops.contracts.status import Status
from modelops.optimization import gpu as gpu_module
from modelops.optimization.gpu import GpuInfo
from modelops.serving.triton.config_proto import parse, pb2
from modelops.steps import compile as compile_step
from modelops.steps import validate as validate_step
from modelops.steps._common import run_step
from modelops.storage import Storage
from tests.unit.conftest import MemoryS3Storage
from tests.worker.fakes import polygraphy_trt
from tests.worker.fakes.polygraphy_trt import FAKE_PLAN_MAGIC
from tests.worker.stepkit import step, write_spec
from tests.worker.test_compile_fake_trt import FakeTRT

H100 = GpuInfo("NVIDIA H100 80GB HBM3", "9.0", "570.1")
PRODUCT = "NVIDIA-H100-80GB-HBM3"
FAKES = Path(__file__).parent / "fakes"
BUCKET = "triton"


def _spec(tmp: Path, model_dir: Path) -> dict[str, Any]:
    import yaml

    return {
        "model_name": "wine", "model_version": "1", "model_uri": "models:/wine/1", "source_uri": str(model_dir),
        "flavor": "pytorch", "recipe": "pytorch_generic", "mlmodel": yaml.safe_load((model_dir / "MLmodel").read_text()),
        "variants": ["ort_fp32", "trt_fp16"], "latency_slo_ms": 50.0, "accuracy_tolerance": 0.01, "run_id": "t1",
        "run_prefix": str(tmp / "run"), "serving_device": "gpu", "engine": {"max_batch": 32},
        "benchmark": {"concurrency": [1, 4], "batch_size": 1, "measurement_interval_ms": 500, "max_trials": 4},
    }  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Any]:
    """export and optimize (real), compile on a fake H100 with the fake TensorRT, validate with the fake Polygraphy."""
    tmp = tmp_path_factory.mktemp("trt-e2e")
    save_local("wine", str(tmp / "wine"), "pickle")
    spec_path = write_spec(tmp, _spec(tmp, tmp / "wine"))
    out: dict[str, Any] = {"tmp": tmp, "spec_path": spec_path, "spec": json.loads(spec_path.read_text())}
    out.update({name: step(name, spec_path) for name in ("export", "optimize")})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(compile_step, "detect_gpu", lambda: H100)
        mp.setitem(sys.modules, "tensorrt", FakeTRT(embed_onnx=True))  # `import tensorrt as trt` in the step
        result_path = tmp / "compile.result.json"
        assert run_step("compile", compile_step.run, ["--spec", str(spec_path), "--result", str(result_path)]) == 0
        out["compile"] = json.loads(result_path.read_text())
        polygraphy_trt.install(mp)
        out["validate"] = step("validate", spec_path)
        out["trt_batches"] = list(polygraphy_trt.TrtRunner.batches)
    return out


def test_compile_records_the_gpu_product_of_each_engine(run):
    engine = run["compile"]["engines"]["trt_fp16"]
    assert engine["status"] == "done" and engine["gpu_product"] == PRODUCT and engine["compute_capability"] == "9.0"
    assert engine["plans"] == {"9.0": engine["plan"]} and f"/trt_fp16/{PRODUCT}/model.plan" in engine["plan"]
    assert Path(engine["plan"]).read_bytes().startswith(FAKE_PLAN_MAGIC)
    assert engine["profiles"]["input"] == [[1, 13], [8, 13], [32, 13]]  # engine.max_batch 32


def test_the_engine_passes_the_same_gate_as_the_onnx_candidates(run):
    verdicts = run["validate"]["candidates"]
    engine, onnx_fp32 = verdicts["trt_fp16"], verdicts["ort_fp32"]
    assert engine["status"] == onnx_fp32["status"] == "accepted"
    assert engine["metric"] == pytest.approx(run["validate"]["source_metric"], abs=1e-6)
    assert engine["expectations"]["success"] and Path(engine["comparison"]).is_file()
    assert engine["built_from"] == run["export"]["outputs"]["onnx"] and engine["gpu_product"] == PRODUCT
    assert engine["plan"] == run["compile"]["engines"]["trt_fp16"]["plan"] and engine["tensorrt"] == "10.13.0.35"
    assert engine["built_from_max_abs_diff"] < 1e-5  # the engine against the ONNX it was built from, on the samples
    with np.load(engine["sample_outputs"]) as npz:
        assert npz["output"].shape[1] == 3
    assert run["trt_batches"] and max(run["trt_batches"]) <= 32  # chunks the engine profile allows


def _perturbed_plan(run: dict[str, Any], dest: Path) -> Path:
    """A fake plan of the model with its weights scrambled (what a broken engine computes)."""
    model = onnx.load(run["export"]["outputs"]["onnx"])
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:
        array = onnx.numpy_helper.to_array(init)
        if array.dtype == np.float32 and array.size > 3:
            init.CopyFrom(onnx.numpy_helper.from_array(rng.permutation(array.ravel()).reshape(array.shape), init.name))
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(FAKE_PLAN_MAGIC + model.SerializeToString())
    return dest


def test_a_wrong_engine_is_rejected_a_foreign_one_fails_and_no_runtime_skips(run, tmp_path, monkeypatch):
    spec = {**run["spec"], "run_prefix": str(tmp_path / "run")}
    shutil.copytree(Path(run["spec"]["run_prefix"]) / "export", tmp_path / "run" / "export")
    shutil.copytree(Path(run["spec"]["run_prefix"]) / "optimize", tmp_path / "run" / "optimize")
    storage = Storage()

    def compiled(plan: Path) -> None:
        engine = {**run["compile"]["engines"]["trt_fp16"], "plan": str(plan), "plans": {"9.0": str(plan)}}
        storage.write_json(str(tmp_path / "run" / "compile" / "result.json"),
                           {**run["compile"], "engines": {"trt_fp16": engine}})  # fmt: skip

    polygraphy_trt.install(monkeypatch)
    compiled(_perturbed_plan(run, tmp_path / "bad" / "model.plan"))
    verdict = validate_step.run(spec, storage)["candidates"]["trt_fp16"]
    assert verdict["status"] == "rejected" and "is below source" in verdict["reason"]
    assert verdict["built_from_max_abs_diff"] > 0.1
    foreign = tmp_path / "foreign" / "model.plan"
    foreign.parent.mkdir()
    foreign.write_bytes(b"\x00real plan of another TensorRT")
    compiled(foreign)
    verdict = validate_step.run(spec, storage)["candidates"]["trt_fp16"]
    assert verdict["status"] == "failed" and "magic tag does not match" in verdict["reason"]
    monkeypatch.setitem(sys.modules, "polygraphy.backend.trt", None)  # the CPU machine: no Polygraphy/TensorRT
    verdict = validate_step.run(spec, storage)["candidates"]["trt_fp16"]
    assert verdict["status"] == "skipped" and verdict["reason"] == "needs TensorRT (GPU) to run"
    # an engine compile could not build is reported with compile's reason
    storage.write_json(str(tmp_path / "run" / "compile" / "result.json"), {**run["compile"], "engines": {
        "trt_fp16": {"status": "failed", "reason": "EngineBuildError: TensorRT cannot parse model.onnx", "plan": None}}})
    verdict = validate_step.run(spec, storage)["candidates"]["trt_fp16"]
    assert verdict["status"] == "skipped" and verdict["reason"] == (
        "compile failed: EngineBuildError: TensorRT cannot parse model.onnx")  # fmt: skip


def _program(tmp: Path, name: str, script: Path) -> Path:
    """An executable at ``tmp/name`` that runs ``script`` with this interpreter (the binary the step starts)."""
    path = tmp / name
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n')
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def benchmarked(run, tmp_path_factory) -> dict[str, Any]:
    """The benchmark step with serving_device gpu, against the fake GPU tritonserver and perf_analyzer binaries."""
    tmp = tmp_path_factory.mktemp("gpu-bench")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODELOPS_TRITONSERVER", str(_program(tmp, "tritonserver", FAKES / "tritonserver_gpu.py")))
        mp.setenv("MODELOPS_PERF_ANALYZER", str(_program(tmp, "perf_analyzer", FAKES / "perf_analyzer.py")))
        mp.setenv("FAKE_GPU_CC", "9.0")
        mp.setenv("FAKE_PA_THROUGHPUT", json.dumps({"baseline": 400, "ort_fp32": 500, "trt_fp16": 1500}))
        mp.setenv("FAKE_PA_LOG", str(tmp / "perf_analyzer.calls"))
        mp.setattr(gpu_module, "detect_gpu", lambda *a: H100)
        result = step("benchmark", run["spec_path"])
    return {"result": result, "pa_calls": (tmp / "perf_analyzer.calls").read_text().splitlines()}


def test_benchmark_on_a_gpu_triton_serves_native_backends(run, benchmarked):
    variants = benchmarked["result"]["variants"]
    assert {v: (m["status"], m["kind"]) for v, m in variants.items()} == {
        "baseline": ("done", "onnxruntime_onnx"), "ort_fp32": ("done", "onnxruntime_onnx"),
        "trt_fp16": ("done", "tensorrt_plan")}  # fmt: skip
    assert [p["concurrency"] for p in variants["trt_fp16"]["points"]] == [1, 4]
    assert variants["trt_fp16"]["points"][0]["throughput"] == 1500.0  # perf_analyzer's CSV, parsed
    assert variants["trt_fp16"]["triton_max_abs_diff"] < 1e-5  # the smoke check compared with validate's run
    assert variants["trt_fp16"]["plan"] == run["compile"]["engines"]["trt_fp16"]["plan"]
    log = Path(variants["trt_fp16"]["log"]).read_text()
    assert "loaded trt_fp16: platform=tensorrt_plan kind=KIND_GPU max_batch_size=32 file=model.plan" in log
    assert "loaded ort_fp32: platform=onnxruntime_onnx kind=KIND_GPU max_batch_size=" in (
        Path(variants["ort_fp32"]["log"]).read_text())  # fmt: skip
    settings = benchmarked["result"]["settings"]
    assert settings["device"] == "gpu" and settings["compute_capability"] == "9.0"
    assert any(c.startswith("-m trt_fp16 ") and "--concurrency-range 1:4:3" in c for c in benchmarked["pa_calls"])


def test_select_and_publish_the_engine(run, benchmarked):
    """The engine row is selected like any other and published as 1/model.plan for tensorrt_plan on KIND_GPU (deploy
    on the CPU stack refusing it is tests/unit/test_gpu_deploy.py, in the orchestrator environment)."""
    from modelops.evaluation.selection import select
    from modelops.serving.publish import publish_candidate

    chosen = select(run["validate"], benchmarked["result"], run["spec"]["latency_slo_ms"])
    assert chosen.chosen == "trt_fp16" and chosen.speedup == pytest.approx(1500 / 400)
    s3 = MemoryS3Storage()
    gpu = publish_candidate(s3, run["spec"], "trt_fp16", run["export"], run["optimize"], BUCKET)
    assert (gpu["manifest"]["backend"], gpu["manifest"]["target_device"]) == ("tensorrt/tensorrt", "gpu")
    config = parse(s3.read_bytes(f"{gpu['uri']}/config.pbtxt").decode())
    assert config.platform == "tensorrt_plan" and config.instance_group[0].kind == pb2().ModelInstanceGroup.KIND_GPU
    assert config.max_batch_size == 32 and [t.name for t in config.input] == ["input"]
    plan = Path(run["compile"]["engines"]["trt_fp16"]["plan"]).read_bytes()
    assert s3.read_bytes(f"{gpu['uri']}/1/model.plan") == plan
    assert run["validate"]["candidates"]["trt_fp16"]["status"] == Status.ACCEPTED
