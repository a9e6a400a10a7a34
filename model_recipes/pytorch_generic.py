"""Any ``mlflow.pytorch`` model with a tensor signature: random inputs, cosine similarity to the source."""

from __future__ import annotations

import numpy as np

from model_recipes.base import IOSpec, Recipe, random_inputs

EVAL_SAMPLES = 256
EVAL_SEED = 1


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-sample cosine similarity of two equally shaped arrays (flattened after the first dim)."""
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    # two all-zero rows are identical; one zero row against a non-zero one scores 0
    cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(np.abs(a - b).sum(axis=1) == 0, 1.0, 0.0))
    return float(cos.mean())


class PyTorchGeneric(Recipe):
    """Shapes and dtypes from the signature; metric = mean cosine similarity vs the source outputs."""

    name = "pytorch_generic"
    metric_name = "cosine"

    def eval_data(self, io: IOSpec) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        return random_inputs(io, EVAL_SAMPLES, EVAL_SEED), None

    def metric(self, outputs: np.ndarray, labels: np.ndarray | None, source_outputs: np.ndarray) -> float:
        return mean_cosine(outputs, source_outputs)


RECIPE = PyTorchGeneric()
