"""Any ``mlflow.pytorch`` model with a tensor signature: random inputs, cosine similarity to the source."""

from __future__ import annotations

import numpy as np

from model_recipes.base import TorchRecipe
from modelops.evaluation.metrics import mean_cosine
from modelops.recipes import IOSpec, random_inputs

EVAL_SAMPLES = 256
EVAL_SEED = 1


class PyTorchGeneric(TorchRecipe):
    """Shapes and dtypes from the signature; metric = mean cosine similarity vs the source outputs."""

    name = "pytorch_generic"
    metric_name = "cosine"

    def eval_data(self, io: IOSpec) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        return random_inputs(io, EVAL_SAMPLES, EVAL_SEED), None

    def metric(self, outputs: np.ndarray, labels: np.ndarray | None, source_outputs: np.ndarray) -> float:
        return mean_cosine(outputs, source_outputs)


RECIPE = PyTorchGeneric()
