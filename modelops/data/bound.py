"""The steps' view of a run's rows: the recipe, with ``eval_data``/``calibration_data`` answering from resolve's files.

When resolve wrote rows (``uri``, ``mlflow_dataset``, ``input_example``), every hook that scores or calibrates a
candidate (validate's gate, static INT8's calibration and sensitivity search, OpenVINO/ModelOpt calibration) reads
them through :class:`BoundRecipe`; for ``recipe`` and ``synthetic`` the recipe is used as it is.
"""

from __future__ import annotations

import io as _io
from typing import TYPE_CHECKING, Any

import numpy as np

from modelops.contracts.data import EvalDataSpec
from modelops.data.tables import LABEL, DataError, model_inputs
from modelops.evaluation.metrics import classification_metrics, regression_mae, retrieval_accuracy

if TYPE_CHECKING:
    from modelops.recipes import IOSpec
    from modelops.storage import Storage


def eval_data_of(spec: dict[str, Any] | None) -> EvalDataSpec:
    """The spec's ``eval_data`` block (a spec written before it existed: the recipe's own data)."""
    return EvalDataSpec.model_validate((spec or {}).get("eval_data") or {})


def calibration_skip_reason(data: EvalDataSpec) -> str | None:
    """Why a calibrated variant cannot be built on this run's rows; None when it can."""
    if not data.real:
        return "no real data to calibrate on (modelops.eval_data=synthetic): log a dataset or give eval_data_uri"
    if data.eval_uri and not data.calibration_uri:
        return (f"{data.eval_rows} row(s) of {data.source} data leave none for calibration apart from the gate's "
                "(they never overlap): give more rows or a calibration dataset")  # fmt: skip
    return None


def _load(storage: Storage, uri: str) -> dict[str, np.ndarray]:
    with np.load(_io.BytesIO(storage.read_bytes(uri)), allow_pickle=False) as npz:
        return {k: np.asarray(npz[k]) for k in npz.files}


def _text_columns(table: dict[str, np.ndarray]) -> list[str]:
    """The columns of ``table`` that hold text (not the labels)."""
    return [k for k, v in table.items() if k != LABEL and v.dtype.kind in "US"]


class BoundRecipe:
    """A recipe whose data hooks return the run's rows; every other attribute is the recipe's own."""

    def __init__(self, recipe: Any, data: EvalDataSpec, evals: dict[str, np.ndarray],
                 calibration: dict[str, np.ndarray] | None) -> None:  # fmt: skip
        self._recipe, self.data, self._eval, self._calibration = recipe, data, evals, calibration

    def __getattr__(self, name: str) -> Any:
        return getattr(self._recipe, name)

    def __repr__(self) -> str:
        return f"BoundRecipe({self._recipe!r}, {self.data.source}: {self.data.eval_rows} rows)"

    # -- task metrics: with true labels the gate's metric is the task's (the tolerance applies to it) -----------
    @property
    def classifies(self) -> bool:
        """The rows carry integer class labels and the recipe is not an embedder: the gate scores accuracy."""
        labels = self._eval.get(LABEL)
        return (labels is not None and labels.dtype.kind in "iub"
                and getattr(self._recipe, "task", None) in (None, "classification"))  # fmt: skip

    @property
    def retrieves(self) -> bool:
        """An embedder's rows with labels (e.g. topic or paraphrase-group ids): the gate scores retrieval accuracy."""
        return LABEL in self._eval and getattr(self._recipe, "task", None) == "embedding"

    @property
    def metric_name(self) -> str:
        if self.classifies:
            return "accuracy"
        return "retrieval_accuracy" if self.retrieves else self._recipe.metric_name

    def metric(self, outputs: np.ndarray, labels: np.ndarray | None, source_outputs: np.ndarray) -> float:
        """Accuracy against the true labels for a classifier with labelled rows, retrieval accuracy for an embedder
        with labelled rows (the tolerance then applies to it); otherwise the recipe's own metric (agreement with
        the source)."""
        if labels is not None and self.classifies:
            scores = classification_metrics(outputs, labels)
            if scores is not None:
                return scores["accuracy"]
        if labels is not None and self.retrieves and (found := retrieval_accuracy(outputs, labels)) is not None:
            return found
        return self._recipe.metric(outputs, labels, source_outputs)

    def extra_metrics(self, outputs: np.ndarray, labels: np.ndarray | None,
                      source_outputs: np.ndarray) -> dict[str, float]:  # fmt: skip
        """The recipe's extra metrics, plus the task metrics the labels allow: ``accuracy``/``macro_f1``
        (classifiers), ``retrieval_accuracy`` (embedders), each with the recipe's agreement with the source
        (``<metric>_vs_source``); ``mae`` (one float per row)."""
        out = dict(self._recipe.extra_metrics(outputs, labels, source_outputs))
        if labels is None:
            return out
        scores = classification_metrics(outputs, labels) if self.classifies else None
        if scores is None and self.retrieves and (found := retrieval_accuracy(outputs, labels)) is not None:
            scores = {"retrieval_accuracy": found}
        if scores is not None:
            out.update(scores)
            out[f"{self._recipe.metric_name}_vs_source"] = float(self._recipe.metric(outputs, labels, source_outputs))
        elif np.asarray(labels).dtype.kind == "f" and (mae := regression_mae(outputs, labels)) is not None:
            out["mae"] = mae
        return out

    def _inputs(self, table: dict[str, np.ndarray], io: IOSpec) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """The model's inputs for ``table``: a text column through the recipe's tokenizer, tensors as they are."""
        texts = _text_columns(table)
        if texts:
            encoded = self._recipe.inputs_from_texts([str(t) for t in table[texts[0]]], io)
            if encoded is None:
                raise DataError(f"eval data column {texts[0]!r} holds text, but recipe {self._recipe.name!r} takes "
                                f"tensors {io.input_names}")  # fmt: skip
            labels = table.get(LABEL)
            return encoded, None if labels is None else np.asarray(labels)
        return model_inputs(table, io, self.data.columns)

    def eval_data(self, io: IOSpec) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        return self._inputs(self._eval, io)

    def sample_inputs(self, io: IOSpec, n: int = 8) -> dict[str, np.ndarray]:
        """The first ``n`` eval rows (export's parity check and tracing); the recipe's own for text rows (a text-in
        recipe's serving samples are its own sentences, paired with these outputs) or fewer than two (a batch of
        two keeps an exported batch dimension dynamic)."""
        if _text_columns(self._eval):
            return self._recipe.sample_inputs(io, n)
        inputs, _ = self.eval_data(io)
        if min((len(v) for v in inputs.values()), default=0) < 2:
            return self._recipe.sample_inputs(io, n)
        return {k: v[:n] for k, v in inputs.items()}

    def calibration_data(self, io: IOSpec, n: int = 128) -> dict[str, np.ndarray]:
        if not self._calibration:
            raise DataError(calibration_skip_reason(self.data) or "no calibration rows")
        inputs, _ = self._inputs(self._calibration, io)
        return {k: v[:n] for k, v in inputs.items()}


def bind(recipe: Any, spec: dict[str, Any] | None, storage: Storage) -> Any:
    """``recipe`` bound to the run's rows when resolve wrote some, else ``recipe`` itself."""
    data = eval_data_of(spec)
    if recipe is None or not data.eval_uri:
        return recipe
    calibration = _load(storage, data.calibration_uri) if data.calibration_uri else None
    return BoundRecipe(recipe, data, _load(storage, data.eval_uri), calibration)
