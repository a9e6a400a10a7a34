"""Recipe for the demo digits CNN: scikit-learn digits held out exactly as training held them out."""

from __future__ import annotations

import numpy as np

from model_recipes.pytorch_generic import PyTorchGeneric
from modelops.recipes import IOSpec

TEST_SIZE = 0.3
SPLIT_SEED = 0


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, x_test, y_train, y_test)``: images float32 [N, 1, 8, 8] scaled to [0, 1], labels int64.

    Training (``demo_models``) and evaluation both call this, so the held-out 30% is never trained on.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None, :, :]
    y = data.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=y)
    return x_train, x_test, y_train, y_test


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of logits/probabilities ``[N, classes]`` against integer labels."""
    return float((np.asarray(outputs).argmax(axis=1) == np.asarray(labels)).mean())


class DigitsCNN(PyTorchGeneric):
    """Eval data = held-out digits; metric = accuracy against the true labels."""

    name = "digits_cnn"
    metric_name = "accuracy"

    def sample_inputs(self, io: IOSpec, n: int = 8) -> dict[str, np.ndarray]:
        """The first ``n`` held-out digits: export's parity check and the serving smoke test run on real images
        (on random tensors an INT8 candidate's arg-max is a coin toss, whatever its accuracy)."""
        return {k: v[:n] for k, v in self.eval_data(io)[0].items()}

    def eval_data(self, io: IOSpec) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        _, x_test, _, y_test = digits_split()
        return {io.inputs[0].name: x_test.astype(io.inputs[0].dtype)}, y_test

    def calibration_data(self, io: IOSpec) -> dict[str, np.ndarray]:
        """Training digits: static INT8 never calibrates on the rows the accuracy gate scores."""
        x_train, _, _, _ = digits_split()
        return {io.inputs[0].name: x_train[:128].astype(io.inputs[0].dtype)}

    def metric(self, outputs: np.ndarray, labels: np.ndarray | None, source_outputs: np.ndarray) -> float:
        if labels is None:
            return super().metric(outputs, labels, source_outputs)
        return accuracy(outputs, labels)


RECIPE = DigitsCNN()
