"""Triton config rendering and model directory layout (pure; no Triton needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelops.serving.triton.config_proto import parse, pb2, target_of
from modelops.serving.triton.model_dir import (
    MODEL_KINDS,
    build_model_dir,
    gpu_accelerator,
    render_config,
    render_onnxruntime_gpu_config,
    render_tensorrt_config,
    rendered_target,
    runtime_parameters,
    triton_dtype,
)

IO = {
    "inputs": [
        {"name": "input", "dtype": "float32", "dims": [1, 8, 8]},
        {"name": "mask", "dtype": "int64", "dims": [-1]},
    ],
    "outputs": [{"name": "output", "dtype": "float32", "dims": [10]}],
}
DT = pb2().DataType


def _legacy(name: str, kind: str, io: dict, max_batch_size: int, count: int = 1, threads: int = 2,
            parameters: dict | None = None) -> str:  # fmt: skip
    """config.pbtxt as the string template rendered it before config_proto (what Triton 2.51 served)."""

    def block(field: str, tensors: list) -> str:
        items = [f'  {{\n    name: "{t["name"]}"\n    data_type: {triton_dtype(t["dtype"])}\n'
                 f'    dims: [ {", ".join(str(d) for d in t["dims"]) or "1"} ]\n  }}' for t in tensors]  # fmt: skip
        return f"{field} [\n" + ",\n".join(items) + "\n]"

    params = {"runtime": kind, "intra_op_threads": threads, **(parameters or {})}
    rendered = ",\n".join(f'  {{\n    key: "{k}"\n    value: {{ string_value: "{v}" }}\n  }}' for k, v in params.items())
    return (f'name: "{name}"\nbackend: "python"\nmax_batch_size: {max_batch_size}\n{block("input", io["inputs"])}\n'
            f'{block("output", io["outputs"])}\n{"dynamic_batching { }" if max_batch_size > 0 else ""}\n'
            f"instance_group [\n  {{\n    kind: KIND_CPU\n    count: {count}\n  }}\n]\nparameters: [\n{rendered}\n]\n")


@pytest.mark.parametrize("kind", sorted(MODEL_KINDS))
@pytest.mark.parametrize("variant", ["ort_fp32", "openvino_int8", "openvino_bf16"])
@pytest.mark.parametrize("max_batch_size", [0, 64])
def test_protobuf_rendering_equals_the_string_one(kind, variant, max_batch_size):
    """Every python-backend kind, with and without batching, ONNX Runtime or OpenVINO parameters: the ModelConfig
    rendering parses to the same message as the string template the stack's Triton 2.51 loaded."""
    params = runtime_parameters(variant)
    text = render_config(name="digits--v3-x", kind=kind, io=IO, max_batch_size=max_batch_size, instance_count=2,
                         threads=3, parameters=params)  # fmt: skip
    assert parse(text) == parse(_legacy("digits--v3-x", kind, IO, max_batch_size, 2, 3, params))
    assert parse(text) != parse(_legacy("digits--v3-x", kind, IO, max_batch_size, 2, 4, params))  # the check can fail


def test_render_onnxruntime_config():
    config = parse(render_config(name="digits--v3-ort_fp32", kind="onnxruntime", io=IO, max_batch_size=64,
                                 instance_count=2, threads=3))  # fmt: skip
    assert (config.name, config.backend, config.max_batch_size) == ("digits--v3-ort_fp32", "python", 64)
    assert [(t.name, DT.Name(t.data_type), list(t.dims)) for t in config.input] == [
        ("input", "TYPE_FP32", [1, 8, 8]), ("mask", "TYPE_INT64", [-1])]  # fmt: skip
    assert [(t.name, DT.Name(t.data_type), list(t.dims)) for t in config.output] == [("output", "TYPE_FP32", [10])]
    assert config.HasField("dynamic_batching")
    assert [(g.kind, g.count) for g in config.instance_group] == [(pb2().ModelInstanceGroup.KIND_CPU, 2)]
    assert {k: v.string_value for k, v in config.parameters.items()} == {"runtime": "onnxruntime",
                                                                          "intra_op_threads": "3"}  # fmt: skip
    assert target_of(config) == ("python", "cpu")


def test_no_batching_means_no_dynamic_batching():
    config = parse(render_config(name="m", kind="pytorch", io=IO, max_batch_size=0))
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")


def test_render_onnxruntime_gpu_config_with_tensorrt_accelerator():
    accel = gpu_accelerator("modelopt_int8")
    assert gpu_accelerator("ort_fp32") is None and gpu_accelerator("modelopt_fp8")["precision_mode"] == "FP16"
    config = parse(render_onnxruntime_gpu_config(name="m", io=IO, max_batch_size=32, instance_count=2, gpus=[0, 1],
                                                 accelerator=accel, preferred_batch_sizes=[8, 16],
                                                 max_queue_delay_us=200))  # fmt: skip
    assert (config.backend, config.platform, config.default_model_filename) == (
        "onnxruntime", "onnxruntime_onnx", "model.onnx")  # fmt: skip
    (group,) = config.instance_group
    assert (group.kind, group.count, list(group.gpus)) == (pb2().ModelInstanceGroup.KIND_GPU, 2, [0, 1])
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16]
    assert config.dynamic_batching.max_queue_delay_microseconds == 200
    (trt,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "INT8"
    assert not config.parameters and target_of(config) == ("onnxruntime", "gpu")
    plain = parse(render_onnxruntime_gpu_config(name="m", io=IO, max_batch_size=0))
    assert not plain.HasField("optimization") and not plain.HasField("dynamic_batching")


def test_render_tensorrt_config_per_compute_capability():
    config = parse(render_tensorrt_config(name="m", io=IO, max_batch_size=16, compute_capabilities=["8.0", "9.0"]))
    assert (config.backend, config.platform, config.default_model_filename) == ("tensorrt", "tensorrt_plan", "model.plan")
    assert dict(config.cc_model_filenames) == {"8.0": "model_8.0.plan", "9.0": "model_9.0.plan"}
    assert config.instance_group[0].kind == pb2().ModelInstanceGroup.KIND_GPU and target_of(config) == ("tensorrt", "gpu")
    assert not parse(render_tensorrt_config(name="m", io=IO, max_batch_size=16)).cc_model_filenames
    with pytest.raises(ValueError, match="is not like '8.9'"):
        render_tensorrt_config(name="m", io=IO, max_batch_size=1, compute_capabilities=["sm_89"])


def test_build_gpu_dirs(tmp_path: Path):
    onnx, plan, plan90 = tmp_path / "c.onnx", tmp_path / "e.plan", tmp_path / "e90.plan"
    for path in (onnx, plan, plan90):
        path.write_bytes(path.name.encode())
    out = build_model_dir(tmp_path / "o", name="o", kind="onnxruntime", model_path=onnx, io=IO, max_batch_size=8,
                          backend="onnxruntime", device="gpu", accelerator=gpu_accelerator("modelopt_int8"))  # fmt: skip
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "1/model.onnx", "config.pbtxt"]  # fmt: skip
    assert rendered_target(out) == ("onnxruntime", "gpu")
    out = build_model_dir(tmp_path / "t", name="t", kind="onnxruntime", model_path=plan, io=IO, max_batch_size=8,
                          backend="tensorrt", device="gpu", plans={"9.0": plan90})  # fmt: skip
    assert (out / "1" / "model.plan").read_bytes() == b"e.plan" and (out / "1" / "model_9.0.plan").read_bytes() == b"e90.plan"
    assert rendered_target(out) == ("tensorrt", "gpu")
    with pytest.raises(ValueError, match="rendered for a GPU Triton"):
        build_model_dir(tmp_path / "x", name="x", kind="onnxruntime", model_path=onnx, io=IO, max_batch_size=8,
                        backend="tensorrt")  # fmt: skip
    with pytest.raises(ValueError, match="python backend only"):
        build_model_dir(tmp_path / "x", name="x", kind="onnxruntime_text", model_path=onnx, io=IO, max_batch_size=8,
                        backend="onnxruntime", device="gpu")  # fmt: skip
    with pytest.raises(ValueError, match="no 'python' backend on 'gpu'"):
        build_model_dir(tmp_path / "x", name="x", kind="onnxruntime", model_path=onnx, io=IO, max_batch_size=8,
                        device="gpu")  # fmt: skip


def test_render_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown model kind"):
        render_config(name="m", kind="tensorrt_plan", io=IO, max_batch_size=1)
    with pytest.raises(ValueError, match="no Triton type"):
        triton_dtype("complex64")
    with pytest.raises(ValueError, match="at least one output"):
        render_config(name="m", kind="pytorch", io={"inputs": IO["inputs"], "outputs": []}, max_batch_size=1)


def test_build_onnxruntime_dir(tmp_path: Path):
    onnx = tmp_path / "candidate.onnx"
    onnx.write_bytes(b"onnx-bytes")
    out = build_model_dir(
        tmp_path / "repo" / "m1", name="m1", kind="onnxruntime", model_path=onnx, io=IO, max_batch_size=8
    )
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "1/model.onnx",
        "1/model.py",
        "1/modelops_serving.py",
        "config.pbtxt",
    ]
    assert (out / "1" / "model.onnx").read_bytes() == b"onnx-bytes"
    assert "model_session(" in (out / "1" / "model.py").read_text()
    assert "ort.InferenceSession" in (out / "1" / "modelops_serving.py").read_text()
    assert "engine" not in (out / "config.pbtxt").read_text()  # ONNX Runtime: the template's default engine
    assert rendered_target(out) == ("python", "cpu")


def test_openvino_variants_render_their_engine_and_precision(tmp_path: Path):
    assert runtime_parameters("ort_int8_dynamic") == {} and runtime_parameters("baseline") == {}
    assert runtime_parameters("openvino_bf16")["ov_inference_precision"] == "bf16"
    onnx = tmp_path / "candidate.onnx"
    onnx.write_bytes(b"onnx-bytes")
    out = build_model_dir(tmp_path / "m", name="m", kind="onnxruntime", model_path=onnx, io=IO, max_batch_size=8,
                          parameters=runtime_parameters("openvino_int8"))  # fmt: skip
    config = parse((out / "config.pbtxt").read_text())
    for key, value in (("engine", "openvino"), ("ov_inference_precision", "f32"), ("intra_op_threads", "2")):
        assert config.parameters[key].string_value == value


def test_build_pytorch_dir_copies_mlflow_model(tmp_path: Path):
    mlflow_dir = tmp_path / "mlmodel"
    (mlflow_dir / "data").mkdir(parents=True)
    (mlflow_dir / "MLmodel").write_text("flavors: {pytorch: {}}\n")
    (mlflow_dir / "data" / "model.pt2").write_bytes(b"pt2")
    out = build_model_dir(
        tmp_path / "repo" / "base", name="base", kind="pytorch", model_path=mlflow_dir, io=IO, max_batch_size=8
    )
    assert (out / "1" / "model" / "data" / "model.pt2").read_bytes() == b"pt2"
    assert "mlflow.pytorch.load_model" in (out / "1" / "model.py").read_text()
    # rebuilding replaces the directory instead of mixing old and new files
    (out / "stale").write_text("x")
    build_model_dir(out, name="base", kind="pytorch", model_path=mlflow_dir, io=IO, max_batch_size=8)
    assert not (out / "stale").exists()


def test_build_checks_name_and_model_path(tmp_path: Path):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"x")
    with pytest.raises(ValueError, match="named like the model"):
        build_model_dir(tmp_path / "other", name="m", kind="onnxruntime", model_path=onnx, io=IO, max_batch_size=1)
    with pytest.raises(ValueError, match="MLflow model directory"):
        build_model_dir(tmp_path / "m", name="m", kind="pytorch", model_path=tmp_path, io=IO, max_batch_size=1)


def test_serving_sessions_disable_what_validation_disables():
    """validate scores candidates with the deployments' ORT options: quantized numerics depend on them."""
    import re

    from modelops.optimization.ort_cpu import SERVING_DISABLED_OPTIMIZERS
    from modelops.serving.triton.model_dir import PYTHON_TEMPLATES, SERVING_HELPERS

    text = (PYTHON_TEMPLATES / SERVING_HELPERS).read_text()
    (default,) = re.findall(r'params\.get\("ort_disabled_optimizers"\) or "([^"]*)"', text)
    assert tuple(default.split(",")) == SERVING_DISABLED_OPTIMIZERS


@pytest.mark.parametrize(
    ("device", "variant", "artifact", "backend", "files"),
    [
        ("cpu", "ort_fp32", "onnx", "python/onnxruntime", ["1/model.onnx", "1/model.py", "1/modelops_serving.py"]),
        ("gpu", "ort_fp32", "onnx", "onnxruntime/onnxruntime", ["1/model.onnx"]),
        ("gpu", "modelopt_int8", "onnx", "onnxruntime/tensorrt", ["1/model.onnx"]),
        ("gpu", "trt_fp16", "plan", "tensorrt/tensorrt", ["1/model.plan"]),
    ],
)
def test_publish_renders_the_registry_backend_of_the_serving_device(s3, device, variant, artifact, backend, files):
    """publish_candidate renders what the variant registry serves on the spec's device; the manifest says so."""
    from modelops.contracts.status import Status
    from modelops.serving.publish import publish_candidate

    spec = {"model_name": "m", "model_version": "3", "recipe": "generic", "model_uri": "models:/m/3",
            "source_uri": "s3://mlflow/m/3", "run_id": "run-1", "serving_device": device}  # fmt: skip
    uri = f"s3://artifacts/{variant}/model.{artifact}"
    s3.write_bytes(uri, b"model-bytes")
    export = {"outputs": {}, "io": IO, "max_batch_size": 8, "versions": {}}
    result = publish_candidate(s3, spec, variant, export, {"candidates": {variant: {"status": Status.DONE,
                                                                                     artifact: uri}}}, "triton")  # fmt: skip
    manifest = result["manifest"]
    assert (manifest["backend"], manifest["target_device"]) == (backend, device)
    assert sorted(manifest["files"]) == sorted([*files, "config.pbtxt"])
    config = parse(s3.read_bytes(f"{result['uri']}/config.pbtxt").decode())
    assert target_of(config) == (backend.split("/")[0], device)
    accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert [a.parameters["precision_mode"] for a in accelerators] == (["INT8"] if variant == "modelopt_int8" else [])


def test_publish_refuses_a_variant_the_device_cannot_serve(s3):
    from modelops.serving.publish import PublishError, publish_candidate

    spec = {"model_name": "m", "model_version": "3", "serving_device": "cpu"}
    with pytest.raises(PublishError, match="not served by a cpu Triton"):
        publish_candidate(s3, spec, "trt_fp16", {}, {}, "triton")
