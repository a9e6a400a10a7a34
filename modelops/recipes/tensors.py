"""Tensor descriptions shared by recipes and steps: :class:`TensorSpec`, :class:`IOSpec` and their builders.

numpy is imported inside the functions that need it, so the Airflow side can import this module (and
``modelops.recipes``) to pick a recipe without loading any numerical library.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

DEFAULT_MAX_BATCH_SIZE = 64
# a variable non-batch dimension (-1) gets this size in sample/eval data
VARIABLE_DIM_SIZE = 8

_NAME_OK = re.compile(r"[^A-Za-z0-9_]+")


def dtype_name(dtype: Any) -> str:
    """The canonical numpy name of ``dtype`` (``"float32"`` for ``"<f4"``, ``np.float32``, ...)."""
    import numpy as np

    return str(np.dtype(dtype).name)


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output. ``dims`` exclude the batch dimension when the model batches."""

    name: str
    dtype: str  # numpy dtype name: float32, int64, ...
    dims: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """``{"name", "dtype", "dims"}`` as written in step results."""
        return {"name": self.name, "dtype": self.dtype, "dims": list(self.dims)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        """Inverse of :meth:`to_dict`; the dtype is normalised to its numpy name."""
        return cls(name=str(data["name"]), dtype=dtype_name(data["dtype"]), dims=tuple(int(d) for d in data["dims"]))


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
        """Inverse of :meth:`to_dict`; ``max_batch_size`` (or the dict's own) defaults to 64."""
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
        out.append((name, dtype_name(tspec["dtype"]), [int(d) for d in tspec["shape"]]))
    return out


def io_from_signature(mlmodel: dict[str, Any], max_batch_size: int = DEFAULT_MAX_BATCH_SIZE) -> IOSpec:
    """Build an :class:`IOSpec` from the MLflow tensor signature of a parsed ``MLmodel``.

    A leading ``-1`` on every input means "batch": those dims are dropped and ``max_batch_size`` kept.
    Outputs without a signature are left empty; export fills them from the model's real outputs.

    Raises:
        ValueError: no signature inputs, or an input that is not a tensor spec.
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
    import numpy as np

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
