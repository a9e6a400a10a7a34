"""The recipe interface: every hook the core calls on a recipe, each documented, each optional one defaulted.

A recipe says how to load one family of models, what its inputs look like, which data to score it on
and what accuracy means. The steps call the hooks below and nothing else; a hook that is not abstract
has a default that fits most models, so a recipe overrides only what differs.

When the core calls each hook (``modelops.steps.*``, in the worker environment):

- export: :meth:`Recipe.io_from_model_dir` (default :meth:`Recipe.io`), :meth:`Recipe.load`,
  :meth:`Recipe.sample_inputs`, :meth:`Recipe.predict`, :meth:`Recipe.export_onnx`,
  :meth:`Recipe.write_serving_artifacts`, :meth:`Recipe.library_versions`; ``baseline_kind``.
- optimize: :meth:`Recipe.eval_data` + :meth:`Recipe.metric` (to keep sensitive layers in fp32 for static
  INT8) and :meth:`Recipe.calibration_data`.
- validate: :meth:`Recipe.eval_data`, :meth:`Recipe.metric`, :meth:`Recipe.extra_metrics`, ``metric_name``
  and the gate settings ``task``, ``gate_min_cosine``, ``gate_max_rel_err``, ``gate_mostly``.
- compile (TensorRT): ``max_sequence_length`` / ``opt_sequence_length`` for variable non-batch dims.

Heavy libraries (numpy, torch, onnx) are imported inside the hooks: the Airflow side imports this module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from modelops.recipes.tensors import IOSpec, io_from_signature, random_inputs

if TYPE_CHECKING:
    import numpy as np

__all__ = ["TASKS", "Recipe"]

TASKS = ("classification", "embedding", "regression")


class Recipe(ABC):
    """What the pipeline needs to know about one family of models.

    Subclasses set ``name`` and ``metric_name`` and implement the five abstract hooks (:meth:`load`,
    :meth:`predict`, :meth:`export_onnx`, :meth:`eval_data`, :meth:`metric`). Everything else has a default.
    """

    #: The recipe's registry name (the entry point's name; recorded in specs, tags and manifests).
    name: ClassVar[str] = "base"
    #: What :meth:`metric` measures, e.g. ``accuracy`` or ``cosine`` (metric and report labels).
    metric_name: ClassVar[str] = "metric"
    #: Seed of :meth:`sample_inputs`; the parity check of export runs on these samples.
    sample_seed: ClassVar[int] = 0
    #: The framework the source model runs in (informative: logs, docs).
    framework: ClassVar[str] = "onnx"
    #: Triton model kind serving the source model in its own framework for the baseline benchmark (a key
    #: of ``modelops.serving.triton.model_dir.MODEL_KINDS``). ``onnxruntime`` serves export's ONNX copy.
    baseline_kind: ClassVar[str] = "onnxruntime"
    #: The accuracy gate's task (one of ``classification``, ``embedding``, ``regression``); None: inferred
    #: from the source outputs (integer or labelled ``[N, classes]`` -> classification, wide -> embedding).
    task: ClassVar[str | None] = None
    #: Embedding gate: smallest per-sample cosine to the source; None: ``1 - accuracy_tolerance``.
    gate_min_cosine: ClassVar[float | None] = None
    #: Regression gate: largest per-sample relative error; None: the gate's default (0.05).
    gate_max_rel_err: ClassVar[float | None] = None
    #: Share of samples that must pass the per-sample expectations; None: the gate's default (0.99).
    gate_mostly: ClassVar[float | None] = None
    #: TensorRT profiles: largest / usual size of variable non-batch dims (sequence length); None: 256 / 128.
    max_sequence_length: ClassVar[int | None] = None
    opt_sequence_length: ClassVar[int | None] = None

    # -- I/O ----------------------------------------------------------------------------------------
    def io(self, mlmodel: dict[str, Any]) -> IOSpec:
        """Input/output names, dtypes and dims (without batch). Default: the MLflow tensor signature.

        Raises:
            ValueError: the model has no usable signature (export reports it in one line).
        """
        return io_from_signature(mlmodel)

    def io_from_model_dir(self, model_dir: Path, mlmodel: dict[str, Any]) -> IOSpec:
        """The I/O when the model file itself knows it better than the signature (an ONNX graph).

        Called by export with the downloaded MLflow model directory. Default: :meth:`io` on the MLmodel.
        """
        return self.io(mlmodel)

    # -- source model -------------------------------------------------------------------------------
    @abstractmethod
    def load(self, model_dir: Path) -> Any:
        """Load the source model from a local MLflow model directory (any object :meth:`predict` takes)."""

    @abstractmethod
    def predict(self, model: Any, io: IOSpec, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the source model in its own framework; one array per output, in ``io.outputs`` order."""

    @abstractmethod
    def export_onnx(self, model: Any, io: IOSpec, samples: dict[str, np.ndarray], path: Path, opset: int) -> str:
        """Write ``path`` as an ONNX model with a dynamic batch axis; return the exporter's name.

        Export then folds external data into one file, checks the graph and compares ONNX Runtime with
        :meth:`predict` on ``samples`` and on a batch of one.
        """

    def library_versions(self) -> dict[str, str]:
        """Versions of what produced and will run the ONNX model (recorded in the deployment manifest)."""
        from importlib.metadata import PackageNotFoundError, version

        out: dict[str, str] = {}
        for dist in ("onnx", "onnxruntime"):
            try:
                out[dist] = version(dist)
            except PackageNotFoundError:
                continue
        return out

    def write_serving_artifacts(self, model: Any, reference: list[np.ndarray], out_dir: Path) -> dict[str, Any] | None:
        """For models whose clients send other tensors than the ONNX model takes (raw text in); default None.

        Return ``{"serving_kind", "serving_io", "assets", "samples", "perf_input_data"}``: the Triton
        model kind of the candidates, the client-side I/O dict, a directory shipped next to each model
        (``1/tokenizer/``), an npz of client inputs with the source outputs (``output:<name>``) and
        perf_analyzer's ``--input-data`` JSON. ``reference`` holds the source outputs on the samples.
        """
        return None

    # -- data ---------------------------------------------------------------------------------------
    def sample_inputs(self, io: IOSpec, n: int = 8) -> dict[str, np.ndarray]:
        """Deterministic inputs for export's parity check and serving smoke tests. Default: seeded random."""
        return random_inputs(io, n, self.sample_seed)

    @abstractmethod
    def eval_data(self, io: IOSpec) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """Inputs every candidate is scored on (validate, static INT8), and true labels when there are some."""

    def inputs_from_texts(self, texts: list[str], io: IOSpec) -> dict[str, np.ndarray] | None:
        """The model's inputs for rows of raw text (a user's text dataset: one string column); None (the default):
        this recipe takes tensors, and a text column is refused naming it. Text-in recipes tokenize here."""
        return None

    def calibration_data(self, io: IOSpec, n: int = 128) -> dict[str, np.ndarray]:
        """Inputs for static quantization. Default: the first ``n`` eval rows.

        Override with data of its own where possible: calibrating on rows the gate scores is optimistic.
        """
        return {k: v[:n] for k, v in self.eval_data(io)[0].items()}

    # -- accuracy -----------------------------------------------------------------------------------
    @abstractmethod
    def metric(self, outputs: np.ndarray, labels: np.ndarray | None, source_outputs: np.ndarray) -> float:
        """Score the first output of a candidate against labels or the source's outputs; higher is better.

        Validate gates on ``metric(candidate) >= metric(source) - accuracy_tolerance``.
        """

    def extra_metrics(
        self, outputs: np.ndarray, labels: np.ndarray | None, source_outputs: np.ndarray
    ) -> dict[str, float]:
        """More numbers for the report and MLflow (informative: they never gate; a failure is logged). Default {}."""
        return {}
