"""modelops.evaluation.metrics: the one copy of per-row cosine, top-1 and nearest-neighbour agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest

from modelops.evaluation.metrics import (
    as_rows,
    is_class_scores,
    mean_cosine,
    neighbour_sims,
    nn_agreement,
    row_cosine,
    top1_agreement,
    top1_agreement_or_none,
    unit_rows,
)


def _legacy_mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The copy model_recipes.pytorch_generic carried before the fold (the numbers must not move)."""
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(np.abs(a - b).sum(axis=1) == 0, 1.0, 0.0))
    return float(cos.mean())


def test_row_cosine_values_and_degenerate_rows():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [3.0, 4.0]])
    b = np.array([[0.0, 1.0], [2.0, 2.0], [0.0, 0.0], [1.0, 0.0], [-3.0, -4.0]])
    np.testing.assert_allclose(row_cosine(a, b), [0.0, 1.0, 1.0, 0.0, -1.0])
    # the static-quantization search scores any zero-norm row as "no evidence" (1.0)
    np.testing.assert_allclose(row_cosine(a, b, degenerate=1.0), [0.0, 1.0, 1.0, 1.0, -1.0])
    assert row_cosine(a, b).dtype == np.float64


def test_row_cosine_nan_row_scores_zero_without_warning():
    a = np.array([[np.nan, 1.0], [1.0, 2.0]])
    b = np.array([[1.0, 1.0], [1.0, 2.0]])
    with np.errstate(all="raise"):
        np.testing.assert_allclose(row_cosine(a, b), [0.0, 1.0])


def test_flattening_and_one_value_rows():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 2, 3, 4)).astype(np.float32)
    b = a + 0.1 * rng.standard_normal(a.shape).astype(np.float32)
    assert row_cosine(a, b).shape == (5,)
    np.testing.assert_allclose(row_cosine(a, b), row_cosine(a.reshape(5, -1), b.reshape(5, -1)))
    # 1-D: one value per row, so the cosine is the sign agreement
    np.testing.assert_allclose(row_cosine(np.array([2.0, -1.0, 3.0]), np.array([5.0, 1.0, 0.0])), [1.0, -1.0, 0.0])
    assert as_rows(np.arange(3)).shape == (3, 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mean_cosine_matches_the_copy_it_replaced(seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((64, 10)).astype(np.float32)
    b = a + rng.standard_normal(a.shape).astype(np.float32) * 0.3
    a[3] = 0.0  # zero vs non-zero
    a[4] = b[4] = 0.0  # two zero rows
    b[5, 2] = np.nan
    assert mean_cosine(a, b) == _legacy_mean_cosine(a, b)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="shapes"):
        row_cosine(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="shapes"):
        top1_agreement(np.zeros((3, 4)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="scalar"):
        mean_cosine(np.float64(1.0), np.float64(1.0))


def test_empty_inputs_give_nan():
    assert math.isnan(mean_cosine(np.zeros((0, 4)), np.zeros((0, 4))))
    assert math.isnan(top1_agreement(np.zeros((0, 4)), np.zeros((0, 4))))


def test_top1_agreement():
    src = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    cand = np.array([[0.2, 0.8], [0.4, 0.6], [0.1, 0.9], [0.9, 0.1]])
    assert top1_agreement(cand, src) == 0.75
    assert top1_agreement(src, src) == 1.0
    # rows are flattened: [N, 1, C] scores compare like [N, C]
    assert top1_agreement(cand[:, None, :], src[:, None, :]) == 0.75


def test_top1_agreement_or_none_and_class_scores():
    src = np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)
    assert top1_agreement_or_none(src, src) == 1.0
    assert top1_agreement_or_none(np.zeros((2, 1)), np.zeros((2, 1))) is None  # one value: not classes
    assert top1_agreement_or_none(np.zeros(4), np.zeros(4)) is None
    assert is_class_scores(src)
    assert not is_class_scores(src.astype(np.int64))
    assert not is_class_scores(np.zeros((2, 1), dtype=np.float32))
    assert not is_class_scores(np.zeros((2, 3, 4), dtype=np.float32))


def test_unit_rows_and_neighbours():
    a = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, 2.0]])
    u = unit_rows(a)
    np.testing.assert_allclose(u, [[0.6, 0.8], [0.0, 0.0], [0.0, 1.0]])
    sims = neighbour_sims(u)
    assert np.all(np.isneginf(np.diag(sims)))
    assert sims[0, 2] == pytest.approx(0.8)


def test_nn_agreement():
    src = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    assert nn_agreement(src, src) == 1.0
    # every row now points elsewhere than under the source
    cand = np.array([[1.0, 0.0], [0.9, 0.1], [0.95, 0.05], [0.0, 1.0]])
    np.testing.assert_array_equal(neighbour_sims(unit_rows(cand)).argmax(axis=1), [2, 2, 0, 1])
    assert nn_agreement(cand, src) == 0.0
    assert nn_agreement(cand[[0, 1, 3]], src[[0, 1, 3]]) == 1.0
