"""The graph side of static QDQ quantization: calibration rows and reader, pre-processing, node names, one call.

:mod:`modelops.optimization.static_quant` drives these with its sensitivity-driven exclusion policy; they
are functions of paths and arrays and import onnx / onnxruntime only when called.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelops.contracts.spec import StaticQuantSpec

if TYPE_CHECKING:
    from modelops.optimization.static_quant import StaticQuantConfig

log = logging.getLogger("modelops.optimization.static_quant")

# defaults of the run spec's static_quant block (modelops.contracts.spec.StaticQuantSpec)
QUANTIZABLE_OPS: tuple[str, ...] = StaticQuantSpec.model_fields["op_types"].default
CALIBRATION_ROWS: int = StaticQuantSpec.model_fields["calibration_rows"].default
CALIBRATION_BATCH: int = StaticQuantSpec.model_fields["calibration_batch"].default


# ---------------------------------------------------------------------------------------------- data


def calibration_inputs(recipe: Any, io: Any, rows: int = CALIBRATION_ROWS) -> tuple[dict[str, np.ndarray], str]:
    """The recipe's calibration inputs, at most ``rows`` of them, and where they came from.

    Uses ``recipe.calibration_data(io)`` when the recipe has it; otherwise the first ``rows`` rows of
    ``recipe.eval_data(io)[0]`` (the default the Recipe interface will carry; calibrating on rows the gate
    also scores on is optimistic, so recipes with a training split should override it).
    """
    method = getattr(recipe, "calibration_data", None)
    if callable(method):
        data, source = method(io), f"{getattr(recipe, 'name', type(recipe).__name__)}.calibration_data"
    else:
        data, source = recipe.eval_data(io)[0], "eval_data"
    out = {name: np.ascontiguousarray(np.asarray(arr)[:rows]) for name, arr in data.items()}
    n = {len(a) for a in out.values()}
    if not out or n == {0}:
        raise ValueError(f"recipe gave no calibration rows ({source})")
    return out, f"{source}[:{min(n)}]"


class ArrayDataReader:
    """An ONNX Runtime ``CalibrationDataReader`` over in-memory arrays, ``batch`` rows per step.

    It duck-types the abstract class (ORT's ``__subclasshook__`` accepts any class with ``get_next``),
    so importing this module does not import onnxruntime.
    """

    def __init__(self, inputs: dict[str, np.ndarray], batch: int = CALIBRATION_BATCH) -> None:
        self.inputs = inputs
        self.batch = max(1, batch)
        self.n = min(len(a) for a in inputs.values())
        self.start, self.end, self.pos = 0, self.n, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.pos >= self.end:
            return None
        stop = min(self.pos + self.batch, self.end)
        feed = {k: v[self.pos : stop] for k, v in self.inputs.items()}
        self.pos = stop
        return feed

    def __iter__(self) -> ArrayDataReader:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item

    def __len__(self) -> int:
        return self.n

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end, self.pos = start_index, min(end_index, self.n), start_index

    def rewind(self) -> None:
        self.pos = self.start


# ---------------------------------------------------------------------------------------------- model


def _onnxruntime_tools_without_torch() -> None:
    """Make ``onnxruntime.tools`` importable without its ``__init__``, which imports torch (2.7 s on 2 cores) for an
    export helper (``infer_input_info``) that ``quant_pre_process``'s symbolic shape inference never uses.

    The package module is registered bare, with the real search path, so ``onnxruntime.tools.symbolic_shape_infer``
    and its siblings import from the installed files as usual. Nothing is done when the package is already imported.
    """
    import importlib.util
    import sys
    import types

    if "onnxruntime.tools" in sys.modules:
        return
    spec = importlib.util.find_spec("onnxruntime.tools")
    if spec is None or not spec.submodule_search_locations:
        return
    package = types.ModuleType("onnxruntime.tools")
    package.__spec__, package.__package__ = spec, "onnxruntime.tools"
    package.__path__ = list(spec.submodule_search_locations)
    package.__file__ = spec.origin
    sys.modules["onnxruntime.tools"] = package


def pre_process(src: Path, dest: Path) -> bool:
    """onnxruntime's ``quant_pre_process`` (shape inference + basic optimizations) from ``src`` to ``dest``.

    Returns False (and logs why) when it fails: pre-processing only improves quantization. It runs in a
    scratch working directory because a failed symbolic shape inference dumps ``sym_shape_infer_temp.onnx``
    and uuid-named external-data files into the current one.
    """
    import contextlib
    import tempfile

    from onnxruntime.quantization.shape_inference import quant_pre_process

    _onnxruntime_tools_without_torch()
    src, dest = Path(src).resolve(), Path(dest).resolve()
    with tempfile.TemporaryDirectory(prefix="quant-pre-") as scratch, contextlib.chdir(scratch):
        try:
            quant_pre_process(str(src), str(dest), skip_symbolic_shape=False)
            return True
        except Exception as exc:  # noqa: BLE001 - pre-processing only improves the result
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            log.warning("quant_pre_process failed (%s); quantizing the graph as is", reason)
            return False


def prepare_model(src: Path, dest: Path) -> Path:
    """``quant_pre_process`` (shape inference + basic optimizations) and a name on every node.

    Node names are what the exclusion list refers to; unnamed nodes get ``<op_type>_<index>``. Falls back to
    the source graph (named) when pre-processing fails.
    """
    import onnx

    model = onnx.load(str(dest if pre_process(src, dest) else src))
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{index}"
        seen.add(node.name)
    onnx.save(model, str(dest))
    return dest


def quantizable_nodes(model_path: Path, op_types: Iterable[str] = QUANTIZABLE_OPS) -> list[tuple[str, str]]:
    """``(name, op_type)`` of the nodes static QDQ would quantize and the policy may exclude, in graph order.

    A MatMul qualifies only when one of its inputs is a constant (a weight): activation x activation MatMuls
    (attention scores) are quantized along but are not candidates for exclusion.
    """
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    wanted = set(op_types)
    out = []
    for node in model.graph.node:
        if node.op_type not in wanted:
            continue
        if node.op_type == "MatMul" and not any(i in consts for i in node.input):
            continue
        out.append((node.name, node.op_type))
    return out


def quantize_qdq(
    src: Path,
    dest: Path,
    config: StaticQuantConfig,
    calibration: dict[str, np.ndarray] | None,
    cache: Path,
    *,
    exclude: Iterable[str] = (),
    only: Iterable[str] | None = None,
) -> Path:
    """One ``quantize_static`` call in QDQ format; calibration ranges come from (or go to) ``cache``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    reader = ArrayDataReader(calibration, config.calibration_batch) if calibration is not None else None
    quantize_static(
        str(src),
        str(dest),
        calibration_data_reader=reader,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(config.op_types),
        per_channel=config.per_channel,
        activation_type=getattr(QuantType, config.activation_type),
        weight_type=getattr(QuantType, config.weight_type),
        nodes_to_quantize=list(only) if only is not None else None,
        nodes_to_exclude=list(exclude),
        calibrate_method=getattr(CalibrationMethod, config.calibrate_method),
        calibration_cache_path=str(cache),
    )
    return dest
