"""Static QDQ with automatic layer exclusion, the ModelOpt subprocess, and their optimize variants.

Worker environment: ``.venv-worker/bin/python -m pytest tests/worker/test_quantization.py``. The models are
built with ``onnx.helper`` in milliseconds; the ModelOpt round trip runs only where ``.venv-modelopt`` exists.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from modelops.optimization import modelopt_cli
from modelops.optimization.ort_cpu import run_list
from modelops.optimization.static_quant import (
    ArrayDataReader,
    Sensitivity,
    StaticQuantConfig,
    calibration_inputs,
    greedy_exclusion,
    measure_sensitivity,
    output_error,
    quantizable_nodes,
    quantize_static_auto,
    rank,
)
from modelops.recipes import IOSpec, TensorSpec
from modelops.steps import optimize
from modelops.steps._common import StepError
from modelops.storage import Storage
from tests.worker.stepkit import export_result

HAS_MODELOPT = modelopt_cli.modelopt_python() is not None


# ------------------------------------------------------------------------------------------ models


def outlier_mlp(path: Path) -> Path:
    """x[N,16] -> MatMul ``mm_in`` -> Mul (channel 0 scaled x300) -> MatMul ``mm_out`` -> Relu -> MatMul ``mm_head``.

    ``mm_out`` reads an activation whose range one channel dominates (like the GELU outputs BERT's FFN
    down-projections read): a per-tensor uint8 scale leaves the other channels a handful of levels, so
    quantizing ``mm_out`` costs far more accuracy than the other two.
    """
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w_in = rng.standard_normal((16, 32)).astype(np.float32) / 4
    scale = np.ones(32, np.float32)
    scale[0] = 300.0
    w_out = rng.standard_normal((32, 32)).astype(np.float32) / 6
    w_out[0] /= 300.0  # channel 0 is large but contributes like the others
    w_head = rng.standard_normal((32, 8)).astype(np.float32) / 6
    inits = [
        numpy_helper.from_array(a, n)
        for a, n in ((w_in, "w_in"), (scale, "scale"), (w_out, "w_out"), (w_head, "w_head"))
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w_in"], ["h"], name="mm_in"),
        helper.make_node("Mul", ["h", "scale"], ["hs"], name="spread"),
        helper.make_node("MatMul", ["hs", "w_out"], ["o"], name="mm_out"),
        helper.make_node("Relu", ["o"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w_head"], ["y"], name="mm_head"),
    ]
    graph = helper.make_graph(
        nodes, "outlier_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], inits,
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def small_cnn(path: Path) -> Path:
    """The digits CNN's shape: 1x8x8 -> Conv 16 -> Relu -> Conv 32 -> Relu -> Flatten -> Gemm 10."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    w1 = rng.standard_normal((16, 1, 3, 3)).astype(np.float32) / 3
    w2 = rng.standard_normal((32, 16, 3, 3)).astype(np.float32) / 12
    wf = rng.standard_normal((10, 32 * 8 * 8)).astype(np.float32) / 45
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (w2, "w2"), (wf, "wf"))]
    pads = {"pads": [1, 1, 1, 1], "kernel_shape": [3, 3]}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", **pads),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", **pads),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Flatten", ["r2"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "wf"], ["y"], name="head", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "small_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])], inits,
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


class CosineRecipe:
    """The slice of the Recipe interface the variants use: eval data and a cosine metric."""

    name = "cosine_test"
    metric_name = "cosine"

    def __init__(self, dims: tuple[int, ...], rows: int = 96, calibration: bool = False) -> None:
        self.dims, self.rows = dims, rows
        if calibration:
            self.calibration_data = lambda io: {"x": self._data(7, 64)}

    def _data(self, seed: int, rows: int) -> np.ndarray:
        return np.abs(np.random.default_rng(seed).standard_normal((rows, *self.dims))).astype(np.float32)

    def eval_data(self, io: Any) -> tuple[dict[str, np.ndarray], None]:
        return {"x": self._data(3, self.rows)}, None

    def metric(self, outputs: np.ndarray, labels: Any, source_outputs: np.ndarray) -> float:
        return 1.0 - output_error(outputs, source_outputs)


def io_of(dims: tuple[int, ...]) -> IOSpec:
    return IOSpec(inputs=(TensorSpec("x", "float32", dims),), outputs=(TensorSpec("y", "float32", (-1,)),))


# ------------------------------------------------------------------------------------------ pure functions


def test_reader_batches_and_ranges():
    reader = ArrayDataReader({"a": np.arange(10)[:, None], "b": np.arange(10)[:, None]}, batch=4)
    assert [len(f["a"]) for f in reader] == [4, 4, 2] and len(reader) == 10
    reader.set_range(2, 6)
    assert [f["b"][:, 0].tolist() for f in reader] == [[2, 3, 4, 5]]
    from onnxruntime.quantization import CalibrationDataReader

    assert isinstance(reader, CalibrationDataReader)  # duck-typed, no onnxruntime import at module level


def test_output_error():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert output_error(a, a * 3) == pytest.approx(0.0)
    assert output_error(a, np.array([[0.0, 1.0], [0.0, 2.0]])) == pytest.approx(0.5)
    assert output_error(np.array([[np.nan, 1.0]]), np.array([[1.0, 1.0]])) == math.inf


def test_rank_and_greedy_exclusion():
    table = [Sensitivity("a", "MatMul", 0.01, 0), Sensitivity("b", "MatMul", 0.2, 0), Sensitivity("c", "Conv", None, 0)]
    assert rank(table) == ["b", "a", "c"]
    metrics = {("b",): 0.97, ("b", "a"): 0.995}
    excluded, metric, trials = greedy_exclusion(["b", "a", "c"], lambda ex: metrics[tuple(ex)], 1.0, 0.01, cap=3)
    assert excluded == ["b", "a"] and metric == 0.995 and [t["excluded"] for t in trials] == [1, 2]
    # the cap stops the walk; the best set tried is kept (fewest nodes on ties)
    excluded, metric, trials = greedy_exclusion(
        ["b", "a", "c"], lambda ex: 0.9 + 0.001 * (len(ex) == 1), 1.0, 0.01, cap=2
    )
    assert excluded == ["b"] and metric == pytest.approx(0.901) and len(trials) == 2


def test_sensitivity_respects_the_time_budget():
    ticks = iter(range(100))
    table = measure_sensitivity([(f"n{i}", "MatMul") for i in range(5)], lambda n: 0.1, budget_s=3.5,
                                clock=lambda: float(next(ticks)))  # fmt: skip
    assert [s.error for s in table] == [0.1, 0.1, None, None, None]


def test_config_from_spec_and_cap():
    assert StaticQuantConfig.from_spec(None) == StaticQuantConfig()
    assert StaticQuantConfig.from_spec({"max_excluded": 2, "op_types": ["MatMul"]}).op_types == ("MatMul",)
    assert StaticQuantConfig().cap(36) == 9 and StaticQuantConfig().cap(3) == 1
    with pytest.raises(ValueError, match="unknown static_quant option"):
        StaticQuantConfig.from_spec({"per_chanel": True})


def test_calibration_inputs_prefers_the_recipe_method():
    io = io_of((16,))
    data, source = calibration_inputs(CosineRecipe((16,)), io, rows=32)
    assert source == "eval_data[:32]" and data["x"].shape == (32, 16)
    data, source = calibration_inputs(CosineRecipe((16,), calibration=True), io, rows=128)
    assert source == "cosine_test.calibration_data[:64]" and data["x"].shape == (64, 16)


def test_modelopt_helpers():
    spec, rows = modelopt_cli.calibration_shapes({"ids": np.zeros((70, 128)), "mask": np.zeros((70, 128))})
    assert spec == "ids:16x128,mask:16x128" and rows == 64
    assert modelopt_cli.calibration_shapes({"x": np.zeros((5, 1, 8, 8))}) == ("x:5x1x8x8", 5)
    tb = "Traceback (most recent call last):\n  File x\nValueError: FP8 needs opset 19\nINFO done\n"
    assert modelopt_cli.last_error_line(tb) == "ValueError: FP8 needs opset 19"


# ------------------------------------------------------------------------------------------ the policy, for real


def test_quantizable_nodes_skip_activation_matmuls(tmp_path):
    assert quantizable_nodes(outlier_mlp(tmp_path / "m.onnx")) == [
        ("mm_in", "MatMul"), ("mm_out", "MatMul"), ("mm_head", "MatMul"),
    ]  # fmt: skip


def test_auto_exclusion_finds_the_outlier_layer(tmp_path):
    src = outlier_mlp(tmp_path / "m.onnx")
    recipe = CosineRecipe((16,))
    eval_inputs, _ = recipe.eval_data(None)
    reference = run_list(src, eval_inputs)[0]

    def score(model: Path) -> float:
        return recipe.metric(run_list(model, eval_inputs)[0], None, reference)

    calibration, _ = calibration_inputs(recipe, io_of((16,)))
    out = quantize_static_auto(src, tmp_path / "q.onnx", calibration, score, metric_name="cosine", source_metric=1.0,
                               tolerance=1e-4, workdir=tmp_path / "work")  # fmt: skip
    assert out.metric_all_quantized < 1 - 1e-4, "the test model should miss the tolerance fully quantized"
    assert out.sensitivity[0].node == "mm_out" and out.sensitivity[0].error > 10 * out.sensitivity[1].error
    assert out.excluded_nodes == ["mm_out"] and out.met_tolerance and out.metric >= 1 - 1e-4
    assert out.reason.startswith("all-quantized cosine") and "excluding the 1 most sensitive node(s)" in out.reason
    # the written model keeps mm_out in float and quantizes the others
    model = onnx.load(str(tmp_path / "q.onnx"))
    dq_fed = {
        i for n in model.graph.node if n.op_type == "MatMul" for i in n.input if "DequantizeLinear" in i or "_dq" in i
    }
    mm = {n.name: n for n in model.graph.node if n.op_type == "MatMul"}
    assert not any(i.endswith("_DequantizeLinear_Output") for i in mm["mm_out"].input)
    assert any(i.endswith("_DequantizeLinear_Output") for i in mm["mm_in"].input), dq_fed
    assert json.loads(json.dumps(out.to_dict()))["excluded_nodes"] == ["mm_out"]


def test_auto_exclusion_is_a_no_op_when_within_tolerance(tmp_path):
    src = outlier_mlp(tmp_path / "m.onnx")
    recipe = CosineRecipe((16,))
    calibration, _ = calibration_inputs(recipe, io_of((16,)))
    out = quantize_static_auto(src, tmp_path / "q.onnx", calibration, lambda p: 0.999, metric_name="cosine",
                               source_metric=1.0, tolerance=0.01, workdir=tmp_path / "work")  # fmt: skip
    assert out.excluded_nodes == [] and out.sensitivity == [] and out.met_tolerance
    assert out.reason.startswith("every MatMul/Gemm/Conv node quantized")


# ------------------------------------------------------------------------------------------ optimize variants


@pytest.fixture()
def no_modelopt(monkeypatch, tmp_path):
    monkeypatch.setenv(modelopt_cli.ENV_VAR, str(tmp_path / "nowhere" / "python"))


def test_optimize_static_dynamic_and_skipped_modelopt(tmp_path, no_modelopt):
    src = outlier_mlp(tmp_path / "m.onnx")
    results = optimize.optimize_model(
        src, ["ort_int8_dynamic", "ort_int8_static", "modelopt_int8", "trt_fp8"], tmp_path / "out",
        spec={"accuracy_tolerance": 1e-4}, recipe=CosineRecipe((16,)), io=io_of((16,)),
    )  # fmt: skip
    # trt_fp8 is compile's; optimize builds the Q/DQ candidate it needs (modelopt_fp8)
    assert list(results) == ["ort_int8_dynamic", "ort_int8_static", "modelopt_int8", "modelopt_fp8"]
    static = results["ort_int8_static"]
    assert static["status"] == "done" and static["runtime"] == "onnxruntime"
    assert static["quantization"]["excluded_nodes"] == ["mm_out"]
    assert static["quantization"]["format"] == "QDQ" and static["quantization"]["activation_type"] == "QUInt8"
    for v in ("modelopt_int8", "modelopt_fp8"):
        assert (
            results[v]["status"] == "skipped"
            and results[v]["reason"] == "ModelOpt environment not installed: make modelopt"
        )
    assert results["ort_int8_dynamic"]["status"] == "done"


def test_static_without_recipe_fails_alone(tmp_path, no_modelopt):
    src = outlier_mlp(tmp_path / "m.onnx")
    results = optimize.optimize_model(src, ["ort_fp32", "ort_int8_static"], tmp_path / "out", recipe_error="boom")
    assert results["ort_fp32"]["status"] == "done"
    assert results["ort_int8_static"]["status"] == "failed"
    assert results["ort_int8_static"]["reason"] == "RuntimeError: needs the recipe's data: boom"
    with pytest.raises(StepError, match="unknown variant.*trt_fp16"):
        optimize.check_variants(["ort_fp32", "magic"])


def test_optimize_run_uploads_candidates_with_runtime(tmp_path, no_modelopt, monkeypatch):
    src = outlier_mlp(tmp_path / "m.onnx")
    prefix = tmp_path / "run"
    storage = Storage()
    storage.write_json(str(prefix / "export" / "result.json"),
                       export_result(src, [{"name": "x", "dtype": "float32", "dims": [16]}]))  # fmt: skip
    monkeypatch.setattr(optimize, "load_recipe", lambda spec, export: (CosineRecipe((16,)), io_of((16,)), None))
    spec = {
        "run_prefix": str(prefix),
        "recipe": "x",
        "variants": ["ort_int8_static", "modelopt_int8"],
        "accuracy_tolerance": 1e-4,
    }
    result = optimize.run(spec, storage)
    static, mo = result["candidates"]["ort_int8_static"], result["candidates"]["modelopt_int8"]
    assert static["onnx"] == str(prefix / "ort_int8_static" / "model.onnx") and Path(static["onnx"]).is_file()
    assert static["runtime"] == "onnxruntime" and static["quantization"]["excluded_nodes"] == ["mm_out"]
    assert mo == {**mo, "status": "skipped", "onnx": None, "artifacts": {}}
    json.dumps(result)  # the result is plain JSON


@pytest.mark.skipif(not HAS_MODELOPT, reason="ModelOpt environment not installed (make modelopt)")
def test_modelopt_int8_and_fp8_on_a_small_cnn(tmp_path):
    """INT8 Q/DQ on CPU works and ORT can run it; FP8 leaves this CNN's <=16-channel convs alone and fails."""
    src = small_cnn(tmp_path / "cnn.onnx")
    results = optimize.optimize_model(src, ["modelopt_int8", "modelopt_fp8"], tmp_path / "out", spec={},
                                      recipe=CosineRecipe((1, 8, 8)), io=io_of((1, 8, 8)))  # fmt: skip
    int8 = results["modelopt_int8"]
    assert int8["status"] == "done" and int8["runtime"] == "tensorrt" and int8["cpu_loadable"] is True
    assert int8["modelopt"]["quantize_linear"] > 0 and int8["modelopt"]["calibration_eps"] == ["cpu"]
    assert int8["artifacts"]["modelopt.log"].is_file()
    fp8 = results["modelopt_fp8"]
    assert fp8["status"] == "failed" and fp8["reason"].startswith("RuntimeError: ModelOpt fp8 quantized no node: ")
    assert "unsupported Conv" in fp8["reason"]


def test_modelopt_exclusions_come_from_the_spec_or_the_static_policy(tmp_path):
    ctx = optimize.VariantContext(tmp_path / "m.onnx", tmp_path / "q.onnx", {}, None, None, tmp_path)
    assert optimize.modelopt_exclusions(ctx, "int8") == ([], None)
    ctx.shared["static_excluded"] = ["/encoder/layer.0/output/dense/MatMul"]
    assert optimize.modelopt_exclusions(ctx, "int8") == (
        ["/encoder/layer.0/output/dense/MatMul"],
        "ort_int8_static sensitivity",
    )
    assert optimize.modelopt_exclusions(ctx, "fp8") == ([], None)
    ctx.spec = {"modelopt": {"nodes_to_exclude": ["head"]}}
    assert optimize.modelopt_exclusions(ctx, "fp8") == (["head"], "spec.modelopt.nodes_to_exclude")
