"""Eval/calibration rows from the user's data (modelops.data): reading, checks, the choice of source, the split."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from modelops.contracts.data import EvalDataSource, EvalDataSpec
from modelops.data.bound import BoundRecipe, bind, calibration_skip_reason
from modelops.data.sources import LoggedDataset, _pick, _source_uri, prepare
from modelops.data.tables import LABEL, DataError, model_inputs, read_table, split
from modelops.recipes import IOSpec, TensorSpec

PREFIX = "s3://modelops-artifacts/runs/m/1/r1"
TENSOR_MLMODEL = {"flavors": {"pytorch": {}}, "signature": {"inputs": json.dumps([
    {"name": "pixels", "type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 1, 8, 8]}}])}}
COLUMN_MLMODEL = {"flavors": {"sklearn": {}}, "signature": {"inputs": json.dumps([
    {"name": "f0", "type": "double"}, {"name": "f1", "type": "double"}, {"name": "f2", "type": "double"}])}}
IO = IOSpec(inputs=(TensorSpec("pixels", "float32", (1, 8, 8)),), outputs=())


def _pixels(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"pixels": [rng.integers(0, 256, 64).astype(np.float32).tolist() for _ in range(n)],
                         "label": rng.integers(0, 10, n)})


def _put(s3, uri: str, data: bytes) -> str:
    s3.write_bytes(uri, data)
    return uri


def _parquet(frame: pd.DataFrame) -> bytes:
    import io

    buf = io.BytesIO()
    frame.to_parquet(buf)
    return buf.getvalue()


def _prepare(s3, **kwargs):
    args = {"eval_data_uri": None, "datasets": [], "recipe_ships_data": False, "source_uri": "s3://mlflow/m/1",
            "mlmodel": TENSOR_MLMODEL}
    return prepare(s3, PREFIX, **{**args, **kwargs})


def test_a_parquet_uri_is_split_into_disjoint_gate_and_calibration_rows(s3):
    uri = _put(s3, "s3://data/eval.parquet", _parquet(_pixels(200)))
    spec = _prepare(s3, eval_data_uri=uri)
    assert (spec.source, spec.origin, spec.labels) == (EvalDataSource.URI, uri, True)
    assert (spec.eval_rows, spec.calibration_rows) == (150, 50)
    evals, cals = (read_table(s3, u) for u in (spec.eval_uri, spec.calibration_uri))
    assert "label" not in cals and evals["pixels"].shape == (150, 64)
    as_rows = lambda t: {tuple(r) for r in t["pixels"]}
    assert not as_rows(evals) & as_rows(cals)  # calibration never sees a row the gate scores
    assert len(as_rows(evals) | as_rows(cals)) == 200
    assert _prepare(s3, eval_data_uri=uri).eval_uri == spec.eval_uri  # deterministic: the same rows again
    assert np.array_equal(read_table(s3, spec.eval_uri)["pixels"], evals["pixels"])


@pytest.mark.parametrize(("name", "data", "message"), [
    ("bad.parquet", b"PAR1 this is not parquet", "is not a readable Parquet file"),
    ("empty.csv", b"", "is empty (0 bytes)"),
    ("header.csv", b"pixels,label\n", "is empty (no rows)"),
    ("rows.txt", b"1,2\n", "unknown format '.txt'"),
])  # fmt: skip
def test_an_unusable_file_fails_with_one_line_naming_it(s3, name, data, message):
    uri = _put(s3, f"s3://data/{name}", data)
    with pytest.raises(DataError) as err:
        _prepare(s3, eval_data_uri=uri)
    assert message in str(err.value) and uri in str(err.value) and "\n" not in str(err.value)


def test_a_column_missing_from_the_signature_is_named(s3):
    uri = _put(s3, "s3://data/wrong.parquet", _parquet(_pixels(20).rename(columns={"pixels": "image"})))
    with pytest.raises(DataError) as err:
        _prepare(s3, eval_data_uri=uri)
    assert str(err.value) == (f"eval data {uri} has no column 'pixels' of the signature's inputs ['pixels'] "
                              "(it has ['image'])")
    with pytest.raises(DataError, match="not found"):
        _prepare(s3, eval_data_uri="s3://data/absent.parquet")


def test_csv_jsonl_and_npz_read_alike(s3, tmp_path):
    frame = pd.DataFrame({"f0": [1.0, 2.0, 3.0, 4.0], "f1": [0.5, 0.1, 0.2, 0.3], "f2": [9, 8, 7, 6],
                          "label": [0, 1, 0, 1]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_json(tmp_path / "t.jsonl", orient="records", lines=True)
    np.savez(tmp_path / "t.npz", **{c: frame[c].to_numpy() for c in frame})
    tables = [read_table(s3, str(tmp_path / f"t.{ext}")) for ext in ("csv", "jsonl", "npz")]
    io = IOSpec(inputs=(TensorSpec("input", "float32", (3,)),), outputs=())
    stacked = [model_inputs(t, io, ["f0", "f1", "f2"]) for t in tables]
    for inputs, labels in stacked:  # a column signature: the features stacked in signature order
        assert inputs["input"].dtype == np.float32 and inputs["input"].shape == (4, 3)
        np.testing.assert_allclose(inputs["input"][1], [2.0, 0.1, 8.0], rtol=1e-6)
        assert labels.tolist() == [0, 1, 0, 1]


def test_logged_datasets_feed_the_gate_by_context():
    ev = LoggedDataset("eval", "d1", "evaluation", "s3://d/e.parquet")
    tr = LoggedDataset("train", "d2", "training", "s3://d/t.parquet")
    code = LoggedDataset("df", "d3", "evaluation", None)  # from_pandas without a file source: not loadable
    assert _pick([tr, ev]) == (ev, tr)
    assert _pick([code, tr]) == (tr, None)  # only training data: split it
    assert _pick([code]) == (None, None)
    assert _source_uri(json.dumps({"uri": "mlflow-artifacts:/1/abc/artifacts/e.parquet"}), "mlflow") == (
        "s3://mlflow/1/abc/artifacts/e.parquet")
    assert _source_uri(json.dumps({"tags": {"mlflow.source.name": "nb"}}), "mlflow") is None


def test_a_logged_eval_dataset_wins_over_the_recipe_and_calibration_takes_the_training_set(s3):
    ev = LoggedDataset("eval", "d1", "evaluation", _put(s3, "s3://d/e.parquet", _parquet(_pixels(40, 1))))
    tr = LoggedDataset("train", "d2", "training", _put(s3, "s3://d/t.parquet", _parquet(_pixels(500, 2))))
    spec = _prepare(s3, datasets=[ev, tr], recipe_ships_data=True)
    assert spec.source == EvalDataSource.MLFLOW_DATASET and spec.origin == "eval@d1 + train@d2"
    assert (spec.eval_rows, spec.calibration_rows) == (40, 256)
    uri = _put(s3, "s3://d/asked.parquet", _parquet(_pixels(8)))
    assert _prepare(s3, datasets=[ev], eval_data_uri=uri).source == EvalDataSource.URI  # asked for: it wins


def test_no_data_at_all_is_synthetic_and_calibration_is_skipped(s3):
    spec = _prepare(s3)
    assert spec.source == EvalDataSource.SYNTHETIC and spec.eval_uri is None and not spec.real
    assert "synthetic" in spec.note
    assert "synthetic" in calibration_skip_reason(spec)
    assert _prepare(s3, recipe_ships_data=True).source == EvalDataSource.RECIPE
    assert calibration_skip_reason(_prepare(s3, recipe_ships_data=True)) is None


def test_the_input_example_is_used_when_nothing_else_exists_and_said_to_be_small(s3):
    example = {"inputs": np.arange(3 * 64, dtype=np.float32).reshape(3, 1, 8, 8).tolist()}
    _put(s3, "s3://mlflow/m/1/input_example.json", json.dumps(example).encode())
    mlmodel = {**TENSOR_MLMODEL, "saved_input_example_info": {"artifact_path": "input_example.json", "type": "ndarray"}}
    spec = _prepare(s3, mlmodel=mlmodel)
    assert spec.source == EvalDataSource.INPUT_EXAMPLE and spec.eval_rows == 3 and "3 row(s)" in spec.note
    assert calibration_skip_reason(spec)  # 3 rows: none left for calibration apart from the gate's


class _Recipe:
    name = "fake"

    def eval_data(self, io):
        raise AssertionError("the recipe's own rows must not be used")


def test_bound_recipe_answers_with_the_runs_rows(s3):
    uri = _put(s3, "s3://data/eval.parquet", _parquet(_pixels(64)))
    spec = _prepare(s3, eval_data_uri=uri)
    bound = bind(_Recipe(), {"eval_data": spec.model_dump(mode="json")}, s3)
    assert isinstance(bound, BoundRecipe) and bound.name == "fake"
    inputs, labels = bound.eval_data(IO)
    assert inputs["pixels"].shape == (48, 1, 8, 8) and inputs["pixels"].dtype == np.float32 and len(labels) == 48
    assert inputs["pixels"].max() > 10  # pixel values, not N(0, 1) noise
    assert bound.calibration_data(IO, n=8)["pixels"].shape == (8, 1, 8, 8)
    plain = _Recipe()
    assert bind(plain, {"eval_data": EvalDataSpec().model_dump()}, s3) is plain  # the recipe's own data


def test_split_caps_rows_deterministically():
    table = {"x": np.arange(10_000)}
    evals, cals = split(table)
    assert len(evals["x"]) == 1024 and len(cals["x"]) == 256 and not set(evals["x"]) & set(cals["x"])
    again, _ = split(table)
    assert np.array_equal(evals["x"], again["x"])


def test_a_cell_that_does_not_fit_the_input_is_refused():
    table = {"pixels": np.zeros((4, 63), dtype=np.float32)}
    with pytest.raises(DataError, match="does not fit the input's dims"):
        model_inputs(table, IO)


def test_a_small_table_goes_to_the_gate_whole():
    evals, cals = split({"x": np.arange(20)})
    assert len(evals["x"]) == 20 and len(cals["x"]) == 0
    evals, cals = split({"x": np.arange(40)})
    assert (len(evals["x"]), len(cals["x"])) == (30, 10)


class _Classifier:
    name, metric_name, task = "clf", "agreement", None

    def metric(self, outputs, labels, source_outputs):
        return float((np.asarray(outputs).argmax(1) == np.asarray(source_outputs).argmax(1)).mean())

    def extra_metrics(self, outputs, labels, source_outputs):
        return {}


def test_labelled_rows_gate_a_classifier_on_accuracy_and_report_macro_f1():
    labels = np.array([0, 1, 2, 1, 0, 2, 1, 1])
    rows_ = {"x": np.zeros((8, 3), np.float32), LABEL: labels}
    bound = BoundRecipe(_Classifier(), EvalDataSpec(source=EvalDataSource.URI, eval_uri="s3://x", labels=True), rows_,
                        None)
    source = np.eye(3, dtype=np.float32)[labels]  # the source is right on every row
    candidate = source.copy()
    candidate[:2] = np.eye(3, dtype=np.float32)[[2, 2]]  # wrong on two rows
    assert bound.metric_name == "accuracy"
    assert bound.metric(candidate, labels, source) == 0.75 and bound.metric(source, labels, source) == 1.0
    extra = bound.extra_metrics(candidate, labels, source)
    assert extra["accuracy"] == 0.75 and extra["agreement_vs_source"] == 0.75 and 0 < extra["macro_f1"] < 1
    regression = BoundRecipe(_Classifier(), EvalDataSpec(source=EvalDataSource.URI, eval_uri="s3://x", labels=True),
                             {"x": np.zeros((3, 1)), LABEL: np.array([1.0, 2.0, 3.0])}, None)
    assert regression.metric_name == "agreement"  # float labels: no accuracy
    assert regression.extra_metrics(np.array([[1.5], [2.0], [2.0]]), np.array([1.0, 2.0, 3.0]),
                                    np.zeros((3, 1)))["mae"] == pytest.approx(0.5)


def test_retrieval_accuracy_counts_nearest_neighbours_of_the_same_label():
    from modelops.evaluation.metrics import retrieval_accuracy

    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    embeddings = np.stack([a, a * 0.9 + b * 0.1, b, b * 0.8 + a * 0.2, a + b])
    assert retrieval_accuracy(embeddings, np.array([0, 0, 1, 1, 2])) == 1.0  # label 2 appears once: not scored
    assert retrieval_accuracy(embeddings, np.array([0, 1, 0, 1, 2])) == 0.0
    assert retrieval_accuracy(embeddings, np.array([0, 1, 2, 3, 4])) is None  # no label repeats
    assert retrieval_accuracy(np.zeros(5), np.zeros(5)) is None  # not one embedding per row


def test_one_unnamed_string_input_takes_the_one_text_column(s3):
    """A sentence-transformers signature (one unnamed string column) takes a file's one text column."""
    from modelops.data.tables import Signature, check_columns

    signature = Signature.from_mlmodel({"signature": {"inputs": '[{"type": "string", "required": true}]'}})
    check_columns({"sentence": np.array(["a", "b"]), LABEL: np.array([0, 1])}, signature, "f.parquet")
    with pytest.raises(DataError, match="no column '\\(unnamed input\\)'"):
        check_columns({"a": np.array(["x"]), "b": np.array(["y"])}, signature, "f.parquet")
