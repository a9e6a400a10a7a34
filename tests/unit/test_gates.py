"""Accuracy gates, pure parts: the per-sample comparison table, task inference and thresholds.

The great-expectations suite itself runs in the worker environment (``tests/worker/test_gates.py``).
"""

from __future__ import annotations

import numpy as np
import pytest

from modelops.evaluation.gates import (
    GateResult,
    GateThresholds,
    comparison_table,
    describe,
    failed_entry,
    infer_task,
    thresholds_for,
)
from modelops.recipes import Recipe


def test_table_for_classifier_scores():
    src = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], np.float32)
    cand = np.array([[0.2, 0.8], [0.4, 0.6], [np.nan, 0.5]], np.float32)
    table = comparison_table(
        {"out": cand, "aux": np.ones((3, 2), np.float32)}, {"out": src}, labels=np.array([1, 0, 1])
    )
    assert list(table.columns) == [
        "sample", "label", "source_pred", "candidate_pred", "agree", "cosine", "abs_err_max", "is_finite",
    ]  # fmt: skip
    assert table["agree"].tolist() == [1, 0, 1] and table["agree"].dtype == np.int64
    assert table["is_finite"].tolist() == [True, True, False]
    assert table["cosine"].iloc[0] == pytest.approx(
        np.dot(src[0], cand[0]) / np.linalg.norm(src[0]) / np.linalg.norm(cand[0])
    )
    assert np.isnan(table["cosine"].iloc[2])  # a non-finite row never passes a cosine expectation
    assert table["abs_err_max"].iloc[1] == pytest.approx(0.4)


def test_table_for_labels_and_regression():
    labels = comparison_table({"label": np.array([1, 2, 2])}, {"label": np.array([1, 2, 3])})
    assert labels["agree"].tolist() == [1, 1, 0] and "cosine" not in labels
    reg = comparison_table({"y": np.array([[1.0], [2.2], [0.0]])}, {"y": np.array([[1.0], [2.0], [0.0]])})
    assert "agree" not in reg and "cosine" not in reg
    assert reg["rel_err"].tolist() == pytest.approx([0.0, 0.1, 0.0])  # scale = mean |source| guards the zero row


def test_identical_zero_rows_agree():
    zeros = np.zeros((2, 4), np.float32)
    assert comparison_table({"e": zeros}, {"e": zeros})["cosine"].tolist() == [1.0, 1.0]


@pytest.mark.parametrize(
    ("source", "labels", "task"),
    [
        (np.zeros((4, 10), np.float32), np.zeros(4, np.int64), "classification"),
        (np.zeros((4, 384), np.float32), None, "embedding"),
        (np.zeros((4, 1), np.float32), None, "regression"),
        (np.zeros(4, np.int64), None, "classification"),
    ],
)
def test_infer_task(source, labels, task):
    assert infer_task(source, labels) == task


def _recipe(**attrs) -> Recipe:
    """A recipe whose gate settings are ``attrs`` (the data hooks are never called by thresholds_for)."""

    class Stub(Recipe):
        load = predict = export_onnx = eval_data = metric = None  # type: ignore[assignment]

    Stub.__abstractmethods__ = frozenset()
    return type("R", (Stub,), attrs)()


def test_thresholds_follow_tolerance_and_recipe_overrides():
    scores = np.zeros((4, 10), np.float32)
    assert thresholds_for(_recipe(), 0.02, scores, np.zeros(4)) == GateThresholds("classification", min_agreement=0.98)
    assert thresholds_for(_recipe(), 0.02, np.zeros((4, 1)), None).max_rel_err == 0.05

    th = thresholds_for(_recipe(task="embedding", gate_min_cosine=0.995, gate_mostly=0.9), 0.01, scores, None)
    assert th == GateThresholds("embedding", min_cosine=0.995, mostly=0.9)
    assert th.suite_name == "accuracy_gate.embedding.cosine>=0.995@0.9"
    with pytest.raises(ValueError, match="task 'ranking'"):
        thresholds_for(_recipe(task="ranking"), 0.01, scores, None)


def test_failed_entry_for_aggregate_and_per_row_expectations():
    mean = failed_entry(
        {
            "success": False,
            "expectation_config": {
                "type": "expect_column_mean_to_be_between",
                "kwargs": {"column": "agree", "min_value": 0.99},
            },
            "result": {"observed_value": 0.95},
        }
    )
    assert mean == {
        "expectation": "expect_column_mean_to_be_between", "column": "agree", "observed": 0.95,
        "expected": "min_value=0.99", "detail": "observed 0.95",
    }  # fmt: skip
    rows = failed_entry(
        {
            "success": False,
            "expectation_config": {
                "type": "expect_column_values_to_be_between",
                "kwargs": {"column": "cosine", "min_value": 0.99, "mostly": 0.99},
            },
            "result": {
                "element_count": 200,
                "unexpected_count": 3,
                "missing_count": 1,
                "partial_unexpected_list": [0.5],
            },
        }
    )
    assert rows["observed"] == 2.0  # percent of rows unexpected or missing
    assert rows["detail"] == "3 unexpected + 1 missing of 200 rows (e.g. 0.5)"
    assert describe(rows) == (
        "expect_column_values_to_be_between(cosine): 3 unexpected + 1 missing of 200 rows (e.g. 0.5), "
        "expected min_value=0.99, mostly=0.99"
    )
    result = GateResult(False, "s", [mean, rows], evaluated=4, raw={"x": 1})
    assert result.summary() == {"success": False, "suite": "s", "failed": [mean, rows], "evaluated": 4, "seconds": 0.0}
    assert result.reason().startswith("failed expectations: expect_column_mean_to_be_between(agree): observed 0.95")
