"""The compile step against a FAKE ``tensorrt`` module that follows the documented Python API.

TensorRT cannot be installed here (ENVIRONMENT.md), so the fake records what the step asks of it: network
creation flags, ONNX parsing, builder flags, optimization profiles, the timing cache. The real build is the
``gpu``-marked test at the end (skipped without a GPU and TensorRT).
"""

from __future__ import annotations

import enum
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelops.steps import EXIT_SKIPPED
from modelops.steps import compile as compile_step
from modelops.steps._common import StepSkipped, run_step
from modelops.steps.compile import ENGINES, EngineBuildError, GpuInfo, build_engine, detect_gpu, profile_shapes
from modelops.storage import Storage
from tests.worker.fakes.polygraphy_trt import FAKE_PLAN_MAGIC  # + the ONNX bytes a fake engine was "built" from
from tests.worker.stepkit import export_result, run_spec

onnx = pytest.importorskip("onnx")

H100 = GpuInfo("NVIDIA H100 80GB HBM3", "9.0", "570.1")
A100 = GpuInfo("NVIDIA A100-SXM4-40GB", "8.0", "570.1")


# ------------------------------------------------------------------------------------------ the fake


class FakeTRT:
    """A stand-in for ``import tensorrt as trt`` (TensorRT 10 names and call shapes), with a call log."""

    __version__ = "10.13.0.35"

    class NetworkDefinitionCreationFlag(enum.IntEnum):
        EXPLICIT_BATCH = 0
        STRONGLY_TYPED = 1

    class BuilderFlag(enum.IntEnum):
        FP16 = 0
        INT8 = 2
        FP8 = 12

    class MemoryPoolType(enum.IntEnum):
        WORKSPACE = 0

    def __init__(
        self, *, parse_ok: bool = True, build_ok: bool = True, strongly_typed: bool = True, embed_onnx: bool = False
    ) -> None:
        """``embed_onnx``: the plan is :data:`FAKE_PLAN_MAGIC` + the parsed ONNX bytes, so a fake runtime
        (``tests/worker/fakes/polygraphy_trt.py``) can compute what the engine would, through ONNX Runtime."""
        self.calls: list[tuple[str, Any]] = []
        self.parse_ok, self.build_ok, self.embed_onnx = parse_ok, build_ok, embed_onnx
        if not strongly_typed:  # TensorRT < 9 has no STRONGLY_TYPED
            self.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0})
        fake = self

        class Logger:
            WARNING = 2

            def __init__(self, severity: int = 2) -> None:
                self.severity = severity

        class Tensor:
            def __init__(self, name: str, shape: tuple[int, ...]) -> None:
                self.name, self.shape = name, shape

        class Network:
            def __init__(self, flags: int) -> None:
                self.flags, self.inputs, self.onnx = flags, [], b""

            @property
            def num_inputs(self) -> int:
                return len(self.inputs)

            def get_input(self, index: int) -> Tensor:
                return self.inputs[index]

        class OnnxParser:
            def __init__(self, network: Network, logger: Logger) -> None:
                self.network, self.errors = network, []

            def parse(self, model: bytes, path: str | None = None) -> bool:
                fake.calls.append(("parse", len(model)))
                self.network.onnx = bytes(model)
                try:
                    proto = onnx.load_from_string(model)
                except Exception as exc:  # noqa: BLE001
                    self.errors = [f"ModelImporter: failed to parse protobuf ({type(exc).__name__})"]
                    return False
                if not fake.parse_ok:
                    self.errors = [
                        "In node 3 (importFancyOp): UNSUPPORTED_NODE: No importer registered for op: FancyOp"
                    ]
                    return False
                for value in proto.graph.input:
                    dims = tuple(
                        d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim
                    )
                    self.network.inputs.append(Tensor(value.name, dims))
                return True

            @property
            def num_errors(self) -> int:
                return len(self.errors)

            def get_error(self, index: int) -> str:
                return self.errors[index]

        class Profile:
            def __init__(self) -> None:
                self.shapes: dict[str, tuple] = {}

            def set_shape(self, name: str, min: tuple, opt: tuple, max: tuple) -> None:
                assert all(a <= b <= c for a, b, c in zip(min, opt, max, strict=True)), (min, opt, max)
                self.shapes[name] = (tuple(min), tuple(opt), tuple(max))

        class TimingCache:
            def __init__(self, data: bytes) -> None:
                self.data = data

            def serialize(self) -> bytes:
                return self.data + b"+entries"

        class Config:
            def __init__(self) -> None:
                self.flags: set[str] = set()
                self.profiles: list[Profile] = []
                self.cache: TimingCache | None = None

            def set_memory_pool_limit(self, pool: Any, size: int) -> None:
                fake.calls.append(("set_memory_pool_limit", (pool, size)))

            def set_flag(self, flag: enum.IntEnum) -> None:
                self.flags.add(flag.name)

            def add_optimization_profile(self, profile: Profile) -> int:
                self.profiles.append(profile)
                return len(self.profiles) - 1

            def create_timing_cache(self, data: bytes) -> TimingCache:
                fake.calls.append(("create_timing_cache", bytes(data)))
                return TimingCache(bytes(data))

            def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
                self.cache = cache
                return True

            def get_timing_cache(self) -> TimingCache:
                assert self.cache is not None
                return self.cache

        class Builder:
            def __init__(self, logger: Logger) -> None:
                self.logger = logger

            def create_network(self, flags: int = 0) -> Network:
                return Network(flags)

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
                assert config.cache is not None, "timing cache not set before the build"
                assert len(config.profiles) == 1
                fake.calls.append(("build", {"network_flags": network.flags, "config": config}))
                if fake.embed_onnx and fake.build_ok:
                    return FAKE_PLAN_MAGIC + network.onnx
                return b"PLAN:" + json.dumps(sorted(config.flags)).encode() if fake.build_ok else None

        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, OnnxParser

    def builds(self) -> list[dict[str, Any]]:
        return [args for name, args in self.calls if name == "build"]


def flag_bit(name: str) -> int:
    return 1 << int(FakeTRT.NetworkDefinitionCreationFlag[name])


# ------------------------------------------------------------------------------------------ fixtures


def tiny_onnx(path: Path, *, seq: bool = False) -> Path:
    """A MatMul model with a dynamic batch (and, for ``seq``, a dynamic second dim)."""
    from onnx import TensorProto, helper, numpy_helper

    shape = ["batch", "sequence", 4] if seq else ["batch", 4]
    weight = numpy_helper.from_array(np.ones((4, 2), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [*shape[:-1], 2])],
        [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture()
def run_dir(tmp_path: Path) -> dict[str, Any]:
    """A run prefix with export's and optimize's results (local paths as URIs)."""
    prefix = tmp_path / "run"
    src = tiny_onnx(tmp_path / "export.onnx")
    qdq = tiny_onnx(tmp_path / "qdq.onnx")
    storage = Storage()
    storage.write_json(str(prefix / "export" / "result.json"),
                       export_result(src, [{"name": "x", "dtype": "float32", "dims": [4]}]))  # fmt: skip
    storage.write_json(str(prefix / "optimize" / "result.json"), {"status": "done", "candidates": {
        "modelopt_int8": {"status": "done", "onnx": str(qdq), "runtime": "tensorrt"},
        "modelopt_fp8": {"status": "done", "onnx": str(qdq), "runtime": "tensorrt"},
    }})  # fmt: skip
    spec = run_spec(prefix, variants=["ort_fp32", *ENGINES])
    return {"spec": spec, "storage": storage, "prefix": prefix, "tmp": tmp_path}


# ------------------------------------------------------------------------------------------ pure parts


def test_profile_shapes_batch_and_sequence():
    assert profile_shapes((-1, 1, 8, 8), True, (1, 8, 64), (1, 128, 256)) == ((1, 1, 8, 8), (8, 1, 8, 8), (64, 1, 8, 8))
    assert profile_shapes((-1, -1), True, (1, 8, 64), (1, 128, 256)) == ((1, 1), (8, 128), (64, 256))
    assert profile_shapes((3, -1), False, (1, 8, 64), (1, 16, 32)) == ((3, 1), (3, 16), (3, 32))


def test_batch_and_variable_triples():
    assert compile_step.batch_triple({}, 64) == (1, 8, 64)
    assert compile_step.batch_triple({}, 4) == (1, 4, 4)
    assert compile_step.batch_triple({"engine": {"opt_batch": 16, "max_batch": 32}}, 64) == (1, 16, 32)
    assert compile_step.variable_triple({}) == (1, 128, 256)
    assert compile_step.variable_triple({"engine": {"variable_dim": [8, 64, 512]}}) == (8, 64, 512)

    class Recipe:
        max_sequence_length = 512
        opt_sequence_length = 64

    assert compile_step.variable_triple({}, Recipe()) == (1, 64, 512)


def test_detect_gpu_parses_nvidia_smi():
    class Proc:
        def __init__(self, rc: int, out: str) -> None:
            self.returncode, self.stdout = rc, out

    calls = []

    def runner(cmd, **kwargs):
        calls.append(cmd)
        return Proc(0, "NVIDIA H100 80GB HBM3, 9.0, 570.86.15\nNVIDIA H100 80GB HBM3, 9.0, 570.86.15\n")

    gpu = detect_gpu(runner)
    assert gpu == GpuInfo("NVIDIA H100 80GB HBM3", "9.0", "570.86.15")
    assert gpu.capability() == (9, 0) and gpu.slug() == "nvidia-h100-80gb-hbm3"
    assert calls[0][:2] == ["nvidia-smi", "--query-gpu=name,compute_cap,driver_version"]
    # an old driver without compute_cap: retry with fewer fields
    old = iter([Proc(2, ""), Proc(0, "Tesla T4, 470.1\n")])
    assert detect_gpu(lambda cmd, **kw: next(old)) == GpuInfo("Tesla T4", None, "470.1")

    def missing(cmd, **kwargs):
        raise FileNotFoundError("nvidia-smi")

    assert detect_gpu(missing) is None


# ------------------------------------------------------------------------------------------ build_engine


def test_build_engine_fp16_flags_profile_and_timing_cache(tmp_path):
    trt = FakeTRT()
    src = tiny_onnx(tmp_path / "m.onnx")
    cache = tmp_path / "timing.cache"
    build = build_engine(trt, src, tmp_path / "a" / "model.plan", ENGINES["trt_fp16"], batched=True,
                         batch=(1, 8, 64), variable=(1, 128, 256), timing_cache=cache)  # fmt: skip
    (first,) = trt.builds()
    assert first["network_flags"] == flag_bit("EXPLICIT_BATCH")  # explicit batch, weakly typed
    assert first["config"].flags == {"FP16"}
    assert first["config"].profiles[0].shapes == {"x": ((1, 4), (8, 4), (64, 4))}
    assert ("set_memory_pool_limit", (FakeTRT.MemoryPoolType.WORKSPACE, 4 << 30)) in trt.calls
    assert build.flags == ["FP16"] and build.profiles == {"x": [[1, 4], [8, 4], [64, 4]]}
    assert (tmp_path / "a" / "model.plan").read_bytes() == b'PLAN:["FP16"]' and build.tensorrt == "10.13.0.35"
    # the timing cache started empty, was written after the build, and is read back by the next build
    assert [c for n, c in trt.calls if n == "create_timing_cache"] == [b""]
    assert cache.read_bytes() == b"+entries"
    build_engine(trt, src, tmp_path / "b" / "model.plan", ENGINES["trt_int8"], batched=True,
                 batch=(1, 8, 64), variable=(1, 128, 256), timing_cache=cache)  # fmt: skip
    assert [c for n, c in trt.calls if n == "create_timing_cache"] == [b"", b"+entries"]
    assert trt.builds()[1]["config"].flags == {"INT8", "FP16"}


def test_build_engine_fp8_is_strongly_typed(tmp_path):
    trt = FakeTRT()
    build = build_engine(trt, tiny_onnx(tmp_path / "m.onnx", seq=True), tmp_path / "model.plan", ENGINES["trt_fp8"],
                         batched=True, batch=(1, 8, 64), variable=(1, 128, 256), timing_cache=tmp_path / "t.cache")  # fmt: skip
    (b,) = trt.builds()
    assert b["network_flags"] == flag_bit("EXPLICIT_BATCH") | flag_bit("STRONGLY_TYPED")
    assert b["config"].flags == set()  # a strongly typed network takes no precision flags
    assert build.strongly_typed and build.profiles == {"x": [[1, 1, 4], [8, 128, 4], [64, 256, 4]]}
    # TensorRT without STRONGLY_TYPED: FP8 + FP16 flags instead
    old = FakeTRT(strongly_typed=False)
    build = build_engine(old, tmp_path / "m.onnx", tmp_path / "old.plan", ENGINES["trt_fp8"], batched=True,
                         batch=(1, 8, 64), variable=(1, 128, 256), timing_cache=tmp_path / "t2.cache")  # fmt: skip
    assert not build.strongly_typed and old.builds()[0]["config"].flags == {"FP8", "FP16"}


def test_build_engine_reports_parser_errors_and_empty_builds(tmp_path):
    src = tiny_onnx(tmp_path / "m.onnx")
    common = {"batched": True, "batch": (1, 8, 64), "variable": (1, 128, 256), "timing_cache": tmp_path / "t.cache"}
    with pytest.raises(
        EngineBuildError, match="cannot parse m.onnx: In node 3 .*No importer registered for op: FancyOp"
    ):
        build_engine(FakeTRT(parse_ok=False), src, tmp_path / "p.plan", ENGINES["trt_fp16"], **common)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff\xfe not a protobuf")
    with pytest.raises(EngineBuildError, match="failed to parse protobuf"):
        build_engine(FakeTRT(), garbage, tmp_path / "g.plan", ENGINES["trt_fp16"], **common)
    with pytest.raises(EngineBuildError, match="built no fp16 engine"):
        build_engine(FakeTRT(build_ok=False), src, tmp_path / "n.plan", ENGINES["trt_fp16"], **common)
    assert not (tmp_path / "n.plan").exists()


# ------------------------------------------------------------------------------------------ the step


def test_run_builds_tags_and_reuses_the_timing_cache(run_dir):
    spec, storage, prefix = run_dir["spec"], run_dir["storage"], run_dir["prefix"]
    trt = FakeTRT()
    result = compile_step.run(spec, storage, gpu=A100, trt=trt)
    engines = result["engines"]
    assert {v: e["status"] for v, e in engines.items()} == {
        "trt_fp16": "done",
        "trt_int8": "done",
        "trt_fp8": "skipped",
    }
    assert engines["trt_fp8"]["reason"] == "fp8 needs compute capability >= 8.9; NVIDIA A100-SXM4-40GB has 8.0"
    fp16 = engines["trt_fp16"]
    # per GPU product: the GFD nvidia.com/gpu.product value and the compute capability, the plan under the product
    plan = prefix / "trt_fp16" / "NVIDIA-A100-SXM4-40GB" / "model.plan"
    assert fp16["plan"] == str(plan) and plan.is_file() and fp16["plans"] == {"8.0": str(plan)}
    assert fp16["gpu_product"] == "NVIDIA-A100-SXM4-40GB" and fp16["compute_capability"] == "8.0"
    assert engines["trt_fp8"]["gpu_product"] == "NVIDIA-A100-SXM4-40GB" and engines["trt_fp8"]["plans"] == {}
    assert fp16["gpu"] == "NVIDIA A100-SXM4-40GB" and fp16["tensorrt"] == "10.13.0.35" and fp16["runtime"] == "tensorrt"
    assert fp16["source_onnx"].endswith("export.onnx") and engines["trt_int8"]["source_onnx"].endswith("qdq.onnx")
    sidecar = json.loads((plan.parent / "engine.json").read_text())
    assert sidecar["gpu"] == "NVIDIA A100-SXM4-40GB" and sidecar["compute_capability"] == "8.0"
    assert sidecar["gpu_product"] == "NVIDIA-A100-SXM4-40GB"
    assert sidecar["tensorrt"] == "10.13.0.35" and sidecar["profiles"] == {"x": [[1, 4], [8, 4], [64, 4]]}
    script = (prefix / "trt_int8" / "NVIDIA-A100-SXM4-40GB" / "reproduce_engine.sh").read_text()
    assert "trtexec --onnx=model.onnx --saveEngine=model.plan" in script and "--int8 --fp16" in script
    assert "--minShapes=x:1x4 --optShapes=x:8x4 --maxShapes=x:64x4" in script
    # one timing cache per GPU model + TensorRT version under the run prefix, shared by both builds ...
    cache = prefix / "compile" / "timing-nvidia-a100-sxm4-40gb-trt10.13.0.35.cache"
    assert result["timing_cache"] == str(cache) and cache.read_bytes() == b"+entries+entries"
    assert [c for n, c in trt.calls if n == "create_timing_cache"] == [b"", b"+entries"]
    # ... and reused by a re-run
    again = FakeTRT()
    compile_step.run(spec, storage, gpu=A100, trt=again)
    assert next(c for n, c in again.calls if n == "create_timing_cache") == b"+entries+entries"


def test_gfd_product_label_values():
    assert compile_step.gfd_product("NVIDIA A100-SXM4-40GB") == "NVIDIA-A100-SXM4-40GB"
    assert compile_step.gfd_product("NVIDIA H100 80GB HBM3") == "NVIDIA-H100-80GB-HBM3"
    assert compile_step.gfd_product("Tesla T4 (rev a1)") == "Tesla-T4--rev-a1"


def test_compile_per_gpu_product_keeps_the_other_capabilities(run_dir):
    """One compile per GPU product on the same run prefix: the second keeps the first one's plans by capability."""
    spec, storage, prefix = run_dir["spec"], run_dir["storage"], run_dir["prefix"]
    spec = {**spec, "variants": ["trt_fp16"]}
    first = compile_step.run(spec, storage, gpu=A100, trt=FakeTRT())
    storage.write_json(str(prefix / "compile" / "result.json"), first)  # what run_step writes after the step
    second = compile_step.run(spec, storage, gpu=H100, trt=FakeTRT())
    fp16 = second["engines"]["trt_fp16"]
    a100 = str(prefix / "trt_fp16" / "NVIDIA-A100-SXM4-40GB" / "model.plan")
    h100 = str(prefix / "trt_fp16" / "NVIDIA-H100-80GB-HBM3" / "model.plan")
    assert fp16["plan"] == h100 and fp16["plans"] == {"8.0": a100, "9.0": h100}
    assert Path(a100).is_file() and Path(h100).is_file() and fp16["gpu_product"] == "NVIDIA-H100-80GB-HBM3"


def test_run_on_fp8_gpu_and_missing_sources(run_dir):
    spec, storage, prefix = run_dir["spec"], run_dir["storage"], run_dir["prefix"]
    optimize = storage.read_json(str(prefix / "optimize" / "result.json"))
    optimize["candidates"]["modelopt_int8"] = {
        "status": "skipped",
        "reason": "ModelOpt environment not installed: make modelopt",
        "runtime": "tensorrt",
    }
    del optimize["candidates"]["modelopt_fp8"]
    storage.write_json(str(prefix / "optimize" / "result.json"), optimize)
    result = compile_step.run(spec, storage, gpu=H100, trt=FakeTRT())
    engines = result["engines"]
    assert engines["trt_fp16"]["status"] == "done"
    assert engines["trt_int8"] == {**engines["trt_int8"], "status": "skipped",
        "reason": "source candidate modelopt_int8 is skipped: ModelOpt environment not installed: make modelopt"}  # fmt: skip
    assert engines["trt_fp8"]["reason"] == "needs the modelopt_fp8 candidate, which optimize did not build"
    # a failing build fails that engine only
    result = compile_step.run(spec, storage, gpu=H100, trt=FakeTRT(parse_ok=False))
    assert result["status"] == "done" and result["engines"]["trt_fp16"]["status"] == "failed"
    assert result["engines"]["trt_fp16"]["reason"].startswith("EngineBuildError: TensorRT cannot parse model.onnx")


def test_run_skips_without_engines_gpu_or_tensorrt(run_dir, monkeypatch):
    spec, storage = run_dir["spec"], run_dir["storage"]
    with pytest.raises(StepSkipped, match="no TensorRT engine variant requested"):
        compile_step.run({**spec, "variants": ["ort_fp32"]}, storage, gpu=H100, trt=FakeTRT())
    monkeypatch.setattr(compile_step, "detect_gpu", lambda: None)
    with pytest.raises(StepSkipped, match="no NVIDIA GPU visible"):
        compile_step.run(spec, storage)
    monkeypatch.setattr(compile_step, "detect_gpu", lambda: H100)
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(StepSkipped, match="TensorRT Python package not available"):
        compile_step.run(spec, storage)


def test_cli_exits_99_on_this_machine(run_dir, monkeypatch):
    """On a machine without a GPU (or without TensorRT) the step is skipped: exit 99, reason in the result."""
    spec_path = run_dir["tmp"] / "spec.json"
    spec_path.write_text(json.dumps(run_dir["spec"]))
    monkeypatch.setattr(compile_step, "detect_gpu", lambda: None)
    result_path = run_dir["tmp"] / "result.json"
    rc = run_step("compile", compile_step.run, ["--spec", str(spec_path), "--result", str(result_path)])
    assert rc == EXIT_SKIPPED
    result = json.loads(result_path.read_text())
    assert result["status"] == "skipped" and result["reason"].startswith("no NVIDIA GPU visible")


# ------------------------------------------------------------------------------------------ the real thing


@pytest.mark.gpu
def test_real_tensorrt_fp16_engine(tmp_path):
    """Builds a real fp16 engine from the tiny model (GPU worker image only)."""
    trt = pytest.importorskip("tensorrt")
    gpu = detect_gpu()
    if gpu is None or shutil.which("nvidia-smi") is None:
        pytest.skip("no NVIDIA GPU")
    src = tiny_onnx(tmp_path / "m.onnx", seq=True)
    cache = tmp_path / "timing.cache"
    build = build_engine(trt, src, tmp_path / "model.plan", ENGINES["trt_fp16"], batched=True,
                         batch=(1, 2, 4), variable=(1, 8, 16), timing_cache=cache)  # fmt: skip
    assert build.plan_bytes > 0 and cache.stat().st_size > 0
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine((tmp_path / "model.plan").read_bytes())
    assert engine is not None and engine.num_io_tensors == 2


@pytest.mark.gpu
def test_real_engine_through_the_gate_runner(tmp_path):
    """The validate runner (Polygraphy's TrtRunner) on a real fp16 engine matches ONNX Runtime (GPU worker image)."""
    trt = pytest.importorskip("tensorrt")
    pytest.importorskip("polygraphy")
    if detect_gpu() is None:
        pytest.skip("no NVIDIA GPU")
    from modelops.evaluation.trt_gate import run_engine
    from modelops.optimization import ort_cpu

    src = tiny_onnx(tmp_path / "m.onnx")
    build_engine(trt, src, tmp_path / "model.plan", ENGINES["trt_fp16"], batched=True, batch=(1, 4, 8),
                 variable=(1, 8, 16), timing_cache=tmp_path / "t.cache")  # fmt: skip
    x = np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32)
    got = run_engine(tmp_path / "model.plan", {"x": x}, chunk=8)  # 8, 8, 4 rows: within the profile
    np.testing.assert_allclose(got["y"], ort_cpu.run(src, {"x": x})["y"], rtol=1e-2, atol=1e-2)
