"""Row-wise comparison metrics of a candidate's outputs against the source's (pure numpy).

Every function takes outputs with the sample axis first. An output of more than two dimensions is
flattened after the first axis (``[N, C, H, W]`` -> ``[N, C*H*W]``); a 1-D output is one value per row
(``[N]`` -> ``[N, 1]``). Both arrays must have the same number of rows and values per row.

Degenerate rows keep the numbers the recipes, gates and deploy checks always produced:

- zero vectors: the cosine of two identical rows (two all-zero rows included) is 1.0, of a zero row
  against a non-zero row 0.0 (``degenerate`` overrides that score for callers that want another);
- NaN: a row holding NaN scores 0.0 in :func:`row_cosine` (no ``nan`` leaks into a mean); callers that
  must tell "wrong" from "not finite" (the gates) mask non-finite rows themselves;
- top-1 agreement compares numpy's ``argmax`` (the first NaN wins), as every copy did.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "as_rows",
    "is_class_scores",
    "mean_cosine",
    "neighbour_sims",
    "nn_agreement",
    "row_cosine",
    "top1_agreement",
    "top1_agreement_or_none",
    "unit_rows",
]


def as_rows(a: np.ndarray, dtype: type | None = np.float64) -> np.ndarray:
    """``a`` as a 2-D ``[N, values]`` array (flattened after the first axis), cast to ``dtype`` (None: kept).

    Raises:
        ValueError: ``a`` is a scalar (no sample axis).
    """
    arr = np.asarray(a) if dtype is None else np.asarray(a, dtype=dtype)
    if arr.ndim == 0:
        raise ValueError("expected an array with a sample axis first, got a scalar")
    return arr.reshape(len(arr), int(np.prod(arr.shape[1:])))


def _pair(a: np.ndarray, b: np.ndarray, dtype: type | None = np.float64) -> tuple[np.ndarray, np.ndarray]:
    x, y = as_rows(a, dtype), as_rows(b, dtype)
    if x.shape != y.shape:
        raise ValueError(f"cannot compare outputs of shapes {np.shape(a)} and {np.shape(b)} row by row")
    return x, y


def row_cosine(a: np.ndarray, b: np.ndarray, *, degenerate: float | None = None) -> np.ndarray:
    """Cosine similarity of each row of ``a`` with the same row of ``b``, as float64 ``[N]``.

    Args:
        a: candidate outputs ``[N, ...]``.
        b: reference outputs, same shape.
        degenerate: the score of a row where either vector has zero norm; None (default): 1.0 when both
            rows are equal (two zero rows), else 0.0.

    Returns:
        One cosine per row; 0.0 for a row with NaN (and ``degenerate`` is None).

    Raises:
        ValueError: scalars, or shapes that differ.
    """
    x, y = _pair(a, b)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        num = (x * y).sum(axis=1)
        den = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
        if degenerate is None:
            fallback = np.where(np.abs(x - y).sum(axis=1) == 0, 1.0, 0.0)
        else:
            fallback = np.full(len(x), float(degenerate))
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), fallback)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean of :func:`row_cosine` over the rows; NaN when there are no rows."""
    cos = row_cosine(a, b)
    return float(cos.mean()) if len(cos) else float("nan")


def unit_rows(a: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``a`` (float64, flattened) scaled to unit length; a zero row stays zero (norm floored at ``eps``)."""
    x = as_rows(a)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def is_class_scores(a: np.ndarray) -> bool:
    """True for float class scores ``[N, classes > 1]`` (logits or probabilities), where arg-max is a class."""
    arr = np.asarray(a)
    return arr.ndim == 2 and arr.shape[1] > 1 and arr.dtype.kind == "f"


def top1_agreement(candidate: np.ndarray, source: np.ndarray) -> float:
    """Share of rows whose arg-max (after flattening each row) equals the source's; NaN when there are no rows.

    Raises:
        ValueError: scalars, or shapes that differ.
    """
    x, y = _pair(candidate, source, dtype=None)
    if not len(x):
        return float("nan")
    return float((x.argmax(axis=1) == y.argmax(axis=1)).mean())


def top1_agreement_or_none(candidate: np.ndarray, source: np.ndarray) -> float | None:
    """:func:`top1_agreement` for class-score-like outputs ``[N, classes > 1]``; None for anything else."""
    cand = np.asarray(candidate)
    if cand.ndim != 2 or cand.shape[1] < 2:
        return None
    return top1_agreement(cand, source)


def neighbour_sims(unit: np.ndarray) -> np.ndarray:
    """Cosine similarity between rows of unit vectors ``[N, N]``, -inf on the diagonal (a row is not its own neighbour)."""
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    return sims


def nn_agreement(candidate: np.ndarray, source: np.ndarray) -> float:
    """Share of rows whose nearest other row (by cosine) is the same under the candidate and the source.

    Raises:
        ValueError: scalars, or shapes that differ.
    """
    cand, src = _pair(candidate, source)
    if not len(cand):
        return float("nan")
    return float(
        (neighbour_sims(unit_rows(cand)).argmax(axis=1) == neighbour_sims(unit_rows(src)).argmax(axis=1)).mean()
    )


def predicted_classes(outputs: np.ndarray) -> np.ndarray | None:
    """Class ids of a classifier's first output: arg-max of class scores, or integer labels ``[N]``/``[N, 1]``; None
    for anything else (embeddings, regression values)."""
    arr = np.asarray(outputs)
    if is_class_scores(arr):
        return arr.argmax(axis=1)
    if arr.dtype.kind in "iub" and (arr.ndim == 1 or (arr.ndim == 2 and arr.shape[1] == 1)):
        return arr.reshape(len(arr))
    return None


def classification_metrics(outputs: np.ndarray, labels: np.ndarray) -> dict[str, float] | None:
    """``{"accuracy", "macro_f1"}`` against true labels (scikit-learn's macro F1); None when ``outputs`` are not
    class predictions."""
    predicted = predicted_classes(outputs)
    if predicted is None or len(predicted) != len(labels):
        return None
    from sklearn.metrics import f1_score

    truth = np.asarray(labels).reshape(len(labels)).astype(np.int64)
    return {"accuracy": float((predicted.astype(np.int64) == truth).mean()),
            "macro_f1": float(f1_score(truth, predicted.astype(np.int64), average="macro", zero_division=0))}


def regression_mae(outputs: np.ndarray, labels: np.ndarray) -> float | None:
    """Mean absolute error of one value per row against float labels; None when the shapes do not say regression."""
    arr = np.asarray(outputs, dtype=np.float64)
    if arr.ndim > 2 or (arr.ndim == 2 and arr.shape[1] != 1) or len(arr) != len(labels):
        return None
    return float(np.abs(arr.reshape(len(arr)) - np.asarray(labels, dtype=np.float64).reshape(len(arr))).mean())


def retrieval_accuracy(embeddings: np.ndarray, labels: np.ndarray) -> float | None:
    """Share of rows whose nearest other row (by cosine) carries the same label, over the rows whose label some
    other row shares (what a semantic search over the labelled rows gets right); None when no label repeats or
    the shapes are not one embedding per row."""
    arr = np.asarray(embeddings)
    truth = np.asarray(labels).reshape(-1)
    if arr.ndim != 2 or len(arr) != len(truth) or len(arr) < 2:
        return None
    _, inverse, counts = np.unique(truth, return_inverse=True, return_counts=True)
    scored = counts[inverse] > 1
    if not scored.any():
        return None
    nearest = neighbour_sims(unit_rows(as_rows(arr))).argmax(axis=1)
    return float((truth[nearest] == truth)[scored].mean())
