"""Calibration and the gate on the user's rows (modelops.data) vs on synthetic inputs, with the real step code.

A model fed raw pixel values (0..255) is quantized to static INT8 by the optimize builder twice: calibrated on the
generic recipe's N(0, 1) inputs (what the pipeline did before it read the user's data) and on the user's rows. The
gate on synthetic inputs accepts the noise-calibrated candidate; the gate on the user's rows rejects it and accepts
the one calibrated on them. A run whose data is synthetic skips static INT8 with its reason.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from modelops.contracts.data import EvalDataSource, EvalDataSpec
from modelops.data.bound import bind
from modelops.data.sources import prepare
from modelops.recipes import IOSpec, TensorSpec, get_recipe
from modelops.steps import optimize
from modelops.steps.validate import validate_candidates
from modelops.storage import Storage

IO = IOSpec(inputs=(TensorSpec("x", "float32", (64,)),), outputs=(TensorSpec("y", "float32", (10,)),))
MLMODEL = {"flavors": {"pytorch": {}}, "signature": {"inputs": '[{"name": "x", "type": "tensor", '
                                                                 '"tensor-spec": {"dtype": "float32", "shape": [-1, 64]}}]'}}


def pixel_classifier(path):
    """y = relu(x / 255 @ W1) @ W2: a classifier of raw 8x8 pixel values (its real inputs are 0..255)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((64, 32)) / 255.0).astype(np.float32)
    w2 = rng.standard_normal((32, 10)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")],
        "pixels", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    from sklearn.datasets import load_digits

    tmp = tmp_path_factory.mktemp("pixels")
    src = pixel_classifier(tmp / "source.onnx")
    digits = load_digits()
    frame = pd.DataFrame({"x": [row.tolist() for row in (digits.data * 16.0).astype(np.float32)],
                          "label": digits.target})
    frame.to_parquet(tmp / "eval.parquet")
    storage = Storage()
    real = prepare(storage, str(tmp / "run"), eval_data_uri=str(tmp / "eval.parquet"), datasets=[],
                   recipe_ships_data=False, source_uri=str(tmp), mlmodel=MLMODEL)  # fmt: skip
    return tmp, src, storage, real


def _static(src, out, spec, recipe):
    results = optimize.optimize_model(src, ["ort_int8_static"], out, spec=spec, recipe=recipe, io=IO)
    return results["ort_int8_static"]


def test_the_synthetic_gate_passes_a_candidate_the_users_rows_reject(case):
    tmp, src, storage, real = case
    assert real.source == EvalDataSource.URI and real.calibration_rows > 0 and real.labels
    generic = get_recipe("pytorch_generic")
    spec_real = {"eval_data": real.model_dump(mode="json"), "accuracy_tolerance": 0.01}
    bound = bind(generic, spec_real, storage)
    assert bound.eval_data(IO)[0]["x"].max() > 200  # the user's pixel values reach the gate
    # before: calibrated and scored on the generic recipe's N(0, 1) inputs (eval_data "recipe")
    noise = _static(src, tmp / "noise", {"accuracy_tolerance": 0.01}, generic)
    ours = _static(src, tmp / "real", spec_real, bound)
    assert noise["status"] == ours["status"] == "done", (noise["reason"], ours["reason"])
    io_dict = {**IO.to_dict(), "max_batch_size": IO.max_batch_size}

    def gate(candidate, recipe):
        _, _, results = validate_candidates("pytorch_generic", io_dict, src, {"ort_int8_static": candidate["path"]},
                                            0.03, recipe=recipe)  # fmt: skip
        return results["ort_int8_static"]

    synthetic_verdict, real_verdict = gate(noise, generic), gate(noise, bound)
    assert synthetic_verdict["status"] == "accepted", synthetic_verdict
    assert real_verdict["status"] == "rejected", real_verdict  # the same candidate, judged on the user's rows
    # labelled rows: the gate's metric is accuracy against the labels, the agreement with the source an extra
    assert bound.metric_name == "accuracy" and set(real_verdict["extra_metrics"]) >= {"accuracy", "macro_f1"}
    assert real_verdict["extra_metrics"]["cosine_vs_source"] < synthetic_verdict["metric"] - 0.05
    verdict = gate(ours, bound)
    assert verdict["status"] == "accepted", verdict  # calibrated on the user's rows, it passes on them
    assert verdict["extra_metrics"]["cosine_vs_source"] > 0.99


def test_a_synthetic_run_skips_static_int8_and_says_why(case):
    tmp, src, _, _ = case
    synthetic = EvalDataSpec(source=EvalDataSource.SYNTHETIC, origin="seeded random inputs")
    res = _static(src, tmp / "synthetic", {"eval_data": synthetic.model_dump(mode="json")}, get_recipe("pytorch_generic"))
    assert res["status"] == "skipped"
    assert res["reason"].startswith("no real data to calibrate on (modelops.eval_data=synthetic)")


TEXT_MLMODEL = {"flavors": {"sentence_transformers": {}}, "signature": {"inputs": '[{"type": "string"}]'}}


def test_a_users_labelled_sentences_are_tokenized_and_scored_by_retrieval(tmp_path):
    """Text rows reach a text encoder through its tokenizer; with topic labels the gate's metric is retrieval
    accuracy (nearest other sentence of the same topic), which the source scores high and a broken encoder low."""
    from model_recipes.text_sentences import CALIBRATION_SENTENCES, EVAL_SENTENCES, TOPIC_SIZE

    sentences = EVAL_SENTENCES[:80]
    pd.DataFrame({"sentence": sentences, "label": [i // TOPIC_SIZE for i in range(80)]}).to_parquet(
        tmp_path / "eval.parquet")
    pd.DataFrame({"sentence": CALIBRATION_SENTENCES}).to_parquet(tmp_path / "cal.parquet")
    storage = Storage()
    data = prepare(storage, str(tmp_path / "run"), eval_data_uri=str(tmp_path / "eval.parquet"), datasets=[],
                   recipe_ships_data=True, source_uri=str(tmp_path), mlmodel=TEXT_MLMODEL)  # fmt: skip
    assert data.labels and data.eval_rows + data.calibration_rows == 80
    recipe = get_recipe("text_embedding")
    io = recipe.io({})
    bound = bind(recipe, {"eval_data": data.model_dump(mode="json")}, storage)
    inputs, labels = bound.eval_data(io)
    assert inputs["input_ids"].shape == (data.eval_rows, 128) and inputs["input_ids"].dtype == np.int64
    assert bound.calibration_data(io)["attention_mask"].shape == (data.calibration_rows, 128)
    assert bound.metric_name == "retrieval_accuracy"

    from model_recipes.text_embedding import save_local

    model = recipe.load(save_local(tmp_path / "minilm"))
    (source,) = recipe.predict(model, io, inputs)
    assert bound.metric(source, labels, source) > 0.6  # MiniLM mostly finds a sentence of the same topic (0.75)
    broken = np.random.default_rng(0).standard_normal(source.shape).astype(np.float32)
    assert bound.metric(broken, labels, source) < 0.4  # chance: about 1 in 8 topics
    extra = bound.extra_metrics(source, labels, source)
    assert extra["retrieval_accuracy"] == bound.metric(source, labels, source) and extra["cosine_vs_source"] > 0.999


def test_text_rows_for_a_tensor_recipe_fail_in_one_line(tmp_path):
    pd.DataFrame({"x": ["a photo", "another"] * 8}).to_parquet(tmp_path / "eval.parquet")
    storage = Storage()
    data = prepare(storage, str(tmp_path / "run"), eval_data_uri=str(tmp_path / "eval.parquet"), datasets=[],
                   recipe_ships_data=False, source_uri=str(tmp_path), mlmodel=MLMODEL)  # fmt: skip
    bound = bind(get_recipe("pytorch_generic"), {"eval_data": data.model_dump(mode="json")}, storage)
    from modelops.data import DataError

    with pytest.raises(DataError, match=r"column 'x' holds text, but recipe 'pytorch_generic' takes tensors \['x'\]"):
        bound.eval_data(IO)
