"""The recipe interface: load a model, describe its tensors, make sample/eval data, score outputs.

A recipe is data plus a few pure functions. :class:`Recipe` implements what every ``mlflow.pytorch``
recipe shares (loading, I/O from the MLflow tensor signature, seeded sample inputs); subclasses add
eval data and a metric. Heavy libraries (torch, mlflow) are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

DEFAULT_MAX_BATCH_SIZE = 64
# a variable non-batch dimension (-1) gets this size in sample/eval data
VARIABLE_DIM_SIZE = 8

_NAME_OK = re.compile(r"[^A-Za-z0-9_]+")


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output. ``dims`` exclude the batch dimension when the model batches."""

    name: str
    dtype: str  # numpy dtype name: float32, int64, ...
    dims: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "dims": list(self.dims)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(
            name=str(data["name"]), dtype=str(np.dtype(data["dtype"]).name), dims=tuple(int(d) for d in data["dims"])
        )


@dataclass(frozen=True)
class IOSpec:
    """Inputs and outputs of a model as Triton and ONNX see them.

    ``max_batch_size > 0`` means the first dimension of every tensor is a batch dimension that is not
    part of ``dims`` (Triton's convention); ``0`` means no batching and ``dims`` are full shapes.
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE

    def to_dict(self) -> dict[str, Any]:
        """``{"inputs": [{"name","dtype","dims"}], "outputs": [...]}`` (the step results' ``io``)."""
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}

    @classmethod
    def from_dict(cls, data: dict[str, Any], max_batch_size: int | None = None) -> IOSpec:
        mbs = data.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE) if max_batch_size is None else max_batch_size
        return cls(
            inputs=tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in data.get("outputs", [])),
            max_batch_size=int(mbs),
        )

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def shape(self, spec: TensorSpec, batch: int) -> tuple[int, ...]:
        """A concrete array shape for ``spec`` with ``batch`` rows (variable dims get a fixed size)."""
        dims = tuple(VARIABLE_DIM_SIZE if d < 0 else d for d in spec.dims)
        return (batch, *dims) if self.max_batch_size > 0 else dims


def _clean_name(name: str) -> str:
    return _NAME_OK.sub("_", name).strip("_") or "tensor"


def _tensor_specs(raw: Any, default_prefix: str) -> list[tuple[str, str, list[int]]]:
    """(name, dtype, full shape) per MLflow tensor spec; the signature stores a JSON string."""
    items = json.loads(raw) if isinstance(raw, str) else (raw or [])
    out = []
    for index, item in enumerate(items):
        if item.get("type") != "tensor" or "tensor-spec" not in item:
            raise ValueError(f"signature {default_prefix} {index} is not a tensor spec: {item}")
        tspec = item["tensor-spec"]
        default = default_prefix if len(items) == 1 else f"{default_prefix}_{index}"
        name = _clean_name(item.get("name") or default)
        out.append((name, str(np.dtype(tspec["dtype"]).name), [int(d) for d in tspec["shape"]]))
    return out


def io_from_signature(mlmodel: dict[str, Any], max_batch_size: int = DEFAULT_MAX_BATCH_SIZE) -> IOSpec:
    """Build an :class:`IOSpec` from the MLflow tensor signature of a parsed ``MLmodel``.

    A leading ``-1`` on every input means "batch": those dims are dropped and ``max_batch_size`` kept.
    Outputs without a signature are left empty; export fills them from the model's real outputs.
    """
    signature = mlmodel.get("signature") or {}
    if not signature.get("inputs"):
        raise ValueError("model has no signature inputs")
    inputs = _tensor_specs(signature["inputs"], "input")
    outputs = _tensor_specs(signature["outputs"], "output") if signature.get("outputs") else []
    batched = all(shape and shape[0] == -1 for _, _, shape in inputs)
    if not batched:
        max_batch_size = 0

    def spec(name: str, dtype: str, shape: list[int]) -> TensorSpec:
        return TensorSpec(name, dtype, tuple(shape[1:] if batched and shape else shape))

    return IOSpec(
        inputs=tuple(spec(*t) for t in inputs),
        outputs=tuple(spec(*t) for t in outputs),
        max_batch_size=max_batch_size,
    )


def random_inputs(io: IOSpec, n: int, seed: int) -> dict[str, np.ndarray]:
    """Seeded random inputs: standard normal for floats, small non-negative integers otherwise."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for spec in io.inputs:
        shape = io.shape(spec, n)
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            out[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            out[spec.name] = rng.integers(0, 2, shape).astype(dtype)
        else:
            out[spec.name] = rng.integers(0, 10, shape).astype(dtype)
    return out


class Recipe(ABC):
    """Base recipe for ``mlflow.pytorch`` models with a tensor signature.

    Subclasses set ``name``/``metric_name`` and implement :meth:`eval_data` and :meth:`metric`. Recipes
    for other frameworks override :meth:`load`, :meth:`predict`, :meth:`export_onnx`,
    :meth:`library_versions` and set ``baseline_kind`` (the Triton model kind that serves the source
    model in its own framework: a key of ``modelops.serving.triton.model_dir.MODEL_KINDS``).
    """

    name: str = "base"
    metric_name: str = "metric"
    sample_seed: int = 0
    framework: str = "pytorch"
    baseline_kind: str = "pytorch"

    def load(self, model_dir: Path) -> torch.nn.Module:
        """Load an MLflow pytorch model directory (pt2 or pickle serialization) on CPU, in eval mode."""
        import mlflow.pytorch

        model = mlflow.pytorch.load_model(str(model_dir), map_location="cpu")
        try:
            model.eval()
        except (NotImplementedError, RuntimeError):
            # torch.export modules (pt2) refuse train()/eval(); they are already in inference form
            pass
        return model

    def predict(self, model: Any, io: IOSpec, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the source model in its own framework; outputs in ``io.outputs`` order."""
        from model_recipes.torch_export import torch_outputs

        return torch_outputs(model, io, inputs)

    def export_onnx(self, model: Any, io: IOSpec, samples: dict[str, np.ndarray], path: Path, opset: int) -> str:
        """Write a single-file ONNX model with a dynamic batch axis; return the exporter's name."""
        from model_recipes.torch_export import export_torch

        return export_torch(model, io, samples, path, opset)

    def library_versions(self) -> dict[str, str]:
        """Versions of what produced and will run the ONNX model (recorded in manifests)."""
        import onnx
        import onnxruntime
        import torch

        return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}

    def io(self, mlmodel: dict[str, Any]) -> IOSpec:
        """Input/output names, dtypes and dims (without batch) from the MLflow signature."""
        return io_from_signature(mlmodel)

    def sample_inputs(self, io: IOSpec, n: int = 8) -> dict[str, np.ndarray]:
        """Deterministic inputs for parity and smoke checks."""
        return random_inputs(io, n, self.sample_seed)

    def calibration_data(self, io: IOSpec, n: int = 128) -> dict[str, np.ndarray]:
        """Inputs for static quantization. Recipes with their own data override this to keep calibration
        apart from the rows the accuracy gate scores; the default reuses the first ``n`` eval rows."""
        return {k: v[:n] for k, v in self.eval_data(io)[0].items()}

    @abstractmethod
    def eval_data(self, io: IOSpec) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """Inputs to score candidates on, and true labels when the recipe has them."""

    @abstractmethod
    def metric(self, outputs: np.ndarray, labels: np.ndarray | None, source_outputs: np.ndarray) -> float:
        """Score the first output of a candidate; higher is better."""


def registration_record(
    info: Any, run: Any, name: str, alias: str | None, *, accuracy: float | None, serialization: str | None
) -> dict[str, Any]:
    """Point ``alias`` at the version ``log_model`` registered and describe it (what demo registration prints)."""
    from mlflow import MlflowClient

    version = str(info.registered_model_version)
    if alias:
        MlflowClient().set_registered_model_alias(name, alias, version)
    return {
        "name": name,
        "version": version,
        "alias": alias,
        "accuracy": accuracy,
        "run_id": run.info.run_id,
        "serialization": serialization,
    }
