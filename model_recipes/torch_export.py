"""PyTorch -> ONNX: run the source model on numpy inputs, export with a dynamic batch axis.

The default ``predict``/``export_onnx`` of :class:`model_recipes.base.TorchRecipe`. torch is imported inside
the functions (this module is only loaded in the worker environment).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from modelops.recipes import StepError
from modelops.steps._common import first_line

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def root_cause(exc: BaseException) -> str:
    """The innermost cause's first line, without terminal colours.

    The dynamo exporter wraps the useful error (e.g. ``DispatchError: No ONNX function found for
    aten._linalg_svd``) in a generic ``ConversionError``; users need the operator, not the wrapper.
    """
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return _ANSI.sub("", first_line(exc))

log = logging.getLogger("model_recipes.torch_export")


def _to_numpy_outputs(out: Any) -> list[np.ndarray]:
    import torch

    if isinstance(out, torch.Tensor):
        return [out.detach().cpu().numpy()]
    if isinstance(out, dict):
        return [v.detach().cpu().numpy() for v in out.values()]
    if isinstance(out, (list, tuple)):
        return [v.detach().cpu().numpy() for v in out]
    raise StepError(f"model returned {type(out).__name__}; only tensors, tuples, lists or dicts of tensors export")


def torch_outputs(model: Any, io: Any, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run the source model on numpy inputs (positional, in signature order)."""
    import torch

    with torch.inference_mode():
        return _to_numpy_outputs(model(*(torch.from_numpy(inputs[n]) for n in io.input_names)))


def export_torch(model: Any, io: Any, inputs: dict[str, np.ndarray], path: Path, opset: int) -> str:
    """Export with the dynamo exporter (fallback: legacy for plain nn.Modules); returns the exporter used."""
    import torch

    args = tuple(torch.from_numpy(inputs[n]) for n in io.input_names)
    batched = io.max_batch_size > 0
    common = {"input_names": io.input_names, "output_names": io.output_names, "opset_version": opset}
    try:
        batch = torch.export.Dim("batch")
        dyn = tuple({0: batch} for _ in args) if batched else None
        torch.onnx.export(model, args, str(path), dynamo=True, external_data=False, dynamic_shapes=dyn, **common)
        return "dynamo"
    except Exception as exc:
        if isinstance(model, torch.fx.GraphModule):
            raise StepError(f"cannot export to ONNX: {root_cause(exc)}") from exc
        log.warning("dynamo exporter failed (%s); trying the legacy exporter", root_cause(exc))
        dyn_axes = {n: {0: "batch"} for n in io.input_names + io.output_names} if batched else None
        try:
            torch.onnx.export(model, args, str(path), dynamo=False, dynamic_axes=dyn_axes, **common)
        except Exception as exc2:
            raise StepError(f"cannot export to ONNX: dynamo: {root_cause(exc)}; legacy: {root_cause(exc2)}") from exc2
        return "legacy"
