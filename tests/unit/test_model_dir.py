"""Triton config rendering and model directory layout (pure; no Triton needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelops.serving.triton.model_dir import build_model_dir, render_config, triton_dtype

IO = {
    "inputs": [
        {"name": "input", "dtype": "float32", "dims": [1, 8, 8]},
        {"name": "mask", "dtype": "int64", "dims": [-1]},
    ],
    "outputs": [{"name": "output", "dtype": "float32", "dims": [10]}],
}


def test_render_onnxruntime_config():
    text = render_config(
        name="digits--v3-ort_fp32", kind="onnxruntime", io=IO, max_batch_size=64, instance_count=2, threads=3
    )
    assert 'name: "digits--v3-ort_fp32"' in text
    assert 'backend: "python"' in text
    assert "max_batch_size: 64" in text
    assert 'name: "input"\n    data_type: TYPE_FP32\n    dims: [ 1, 8, 8 ]' in text
    assert 'name: "mask"\n    data_type: TYPE_INT64\n    dims: [ -1 ]' in text
    assert 'name: "output"\n    data_type: TYPE_FP32\n    dims: [ 10 ]' in text
    assert "dynamic_batching { }" in text
    assert "kind: KIND_CPU\n    count: 2" in text
    assert 'key: "intra_op_threads"\n    value: { string_value: "3" }' in text
    assert 'key: "runtime"\n    value: { string_value: "onnxruntime" }' in text
    assert "$" not in text.split("\n", 1)[1]  # every placeholder substituted


def test_no_batching_means_no_dynamic_batching():
    text = render_config(name="m", kind="pytorch", io=IO, max_batch_size=0)
    assert "max_batch_size: 0" in text and "dynamic_batching" not in text


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


def test_openvino_variants_render_their_engine_and_precision(tmp_path: Path):
    from modelops.serving.triton.model_dir import runtime_parameters

    assert runtime_parameters("ort_int8_dynamic") == {} and runtime_parameters("baseline") == {}
    assert runtime_parameters("openvino_bf16")["ov_inference_precision"] == "bf16"
    onnx = tmp_path / "candidate.onnx"
    onnx.write_bytes(b"onnx-bytes")
    out = build_model_dir(tmp_path / "m", name="m", kind="onnxruntime", model_path=onnx, io=IO, max_batch_size=8,
                          parameters=runtime_parameters("openvino_int8"))  # fmt: skip
    config = (out / "config.pbtxt").read_text()
    for key, value in (("engine", "openvino"), ("ov_inference_precision", "f32"), ("intra_op_threads", "2")):
        assert f'key: "{key}"\n    value: {{ string_value: "{value}" }}' in config
    assert config.rstrip().endswith("}\n]")  # still one well-formed parameters list


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
