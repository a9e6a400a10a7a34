"""OpenVINO on CPU: the ``openvino_bf16`` and ``openvino_int8`` variants, and running a model the way they are served.

Both variants ship one ONNX file that OpenVINO reads directly (``Core.read_model``), so every step downstream
(upload, validate, benchmark, publish) handles them like ONNX Runtime candidates; what differs is the runtime
that executes the file, chosen by the variant's registry entry (``Runtime.OPENVINO``):

- ``openvino_bf16``: the export's fp32 ONNX, compiled with ``INFERENCE_PRECISION_HINT=bf16`` (a compile-time
  hint, the variant's ``options["precision"]``). It pays only on a CPU with native bf16 (AMX-BF16 or
  AVX512-BF16, OpenVINO's ``BF16`` capability): elsewhere OpenVINO emulates it (MiniLM on an AVX512-VNNI-only
  host: 25x slower than fp32), so the builder skips the variant with that reason.
- ``openvino_int8``: NNCF post-training quantization of the ONNX model (its ONNX backend: Q/DQ pairs that
  OpenVINO turns into INT8 kernels), calibrated on the recipe's ``calibration_data``, one unpadded row per
  sample; ``ModelType.TRANSFORMER`` for encoders the export marked (``modelops.ort_model_type``). SmoothQuant
  is off: on MiniLM it cost accuracy (worst-sentence cosine 0.955 with it, 0.985 without, mean 0.992 -> 0.993).

Validate scores candidates through :func:`run` with the serving template's settings
(``triton_repo_templates/python/modelops_serving.py``: ``ov_compiled``), so the gate measures what is served.
Nothing heavy is imported at import time; without ``openvino``/``nncf`` the variants are skipped.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("modelops.optimization.openvino")

INSTALL_HINT = "pip install -r requirements-worker.txt (openvino, nncf)"
CHUNK = 256
CALIBRATION_ROWS = 300  # NNCF's default subset size; the recipe gives fewer (MiniLM: 32 sentences)


def missing() -> str | None:
    """Why the OpenVINO variants cannot be built in this environment (one line), or None when they can."""
    absent = [m for m in ("openvino", "nncf") if importlib.util.find_spec(m) is None]
    return f"{' and '.join(absent)} not installed in the worker environment: {INSTALL_HINT}" if absent else None


def capabilities() -> list[str]:
    """OpenVINO's CPU ``OPTIMIZATION_CAPABILITIES`` (e.g. ``FP32``, ``INT8``, ``BF16`` on AMX/AVX512-BF16 CPUs)."""
    import openvino as ov

    return [str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def compile_model(model: Path | str, precision: str = "f32", threads: int = 0, hint: str = "LATENCY") -> Any:
    """``model`` (ONNX or IR) compiled for the CPU with the serving template's properties.

    Args:
        model: the model file.
        precision: ``INFERENCE_PRECISION_HINT`` (``f32`` or ``bf16``).
        threads: ``INFERENCE_NUM_THREADS`` (0 = OpenVINO's default, every core).
        hint: ``PERFORMANCE_HINT`` (``LATENCY``: one stream, what one python-backend instance wants).
    """
    import openvino as ov

    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": hint}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return ov.Core().compile_model(str(model), "CPU", config)


def run(
    model: Path | str | Any, inputs: dict[str, np.ndarray], chunk: int = CHUNK, precision: str = "f32"
) -> dict[str, np.ndarray]:
    """:func:`modelops.optimization.ort_cpu.run` in OpenVINO: outputs keyed by name, in graph order.

    ``model`` is a path or a compiled model; inputs the graph does not take are ignored, rows are cut to the
    shortest input.
    """
    compiled = compile_model(model, precision) if isinstance(model, (str, Path)) else model
    in_names = [i.get_any_name() for i in compiled.inputs]
    out_names = [o.get_any_name() for o in compiled.outputs]
    request = compiled.create_infer_request()
    n = min(len(inputs[k]) for k in in_names)
    parts = []
    for s in range(0, max(n, 1), chunk):
        result = request.infer({k: inputs[k][s : s + chunk] for k in in_names})
        parts.append([np.array(result[o]) for o in compiled.outputs])
    return {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(out_names)}


def calibration_items(arrays: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """One calibration sample per row; a right-padded text row is cut to its ``attention_mask`` length.

    Padding positions are masked out of attention but still flow through the projections: calibrating on
    them skews the activation ranges towards values real requests (padded to the longest in a batch) rarely show.
    """
    n = min(len(a) for a in arrays.values())
    mask = arrays.get("attention_mask")
    items = []
    for row in range(n):
        item = {k: a[row : row + 1] for k, a in arrays.items()}
        if mask is not None and mask.ndim == 2 and mask[row].any():
            width = int(np.flatnonzero(mask[row])[-1]) + 1
            item = {k: a[:, :width] if a.ndim == 2 and a.shape[1] == mask.shape[1] else a for k, a in item.items()}
        items.append(item)
    return items


def quantize_int8(src: Path, dest: Path, calibration: dict[str, np.ndarray], *, transformer: bool) -> dict[str, Any]:
    """NNCF post-training INT8 (ONNX backend) of ``src`` into ``dest`` (a Q/DQ ONNX model OpenVINO runs).

    Returns:
        A summary for optimize's result: method, NNCF/OpenVINO versions, rows and the Q/DQ pair count.
    """
    import nncf
    import onnx
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    model = onnx.load(str(src))
    graph_inputs = {i.name for i in model.graph.input}
    items = calibration_items({k: v for k, v in calibration.items() if k in graph_inputs})
    if not items:
        raise ValueError("no calibration rows for the model's inputs")
    quantized = nncf.quantize(
        model,
        nncf.Dataset(items),
        model_type=nncf.ModelType.TRANSFORMER if transformer else None,
        subset_size=min(len(items), CALIBRATION_ROWS),
        advanced_parameters=AdvancedQuantizationParameters(
            smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1, convolution=-1)
        ),
    )
    onnx.save(quantized, str(dest))
    pairs = sum(1 for node in quantized.graph.node if node.op_type == "QuantizeLinear")
    if not pairs:
        raise RuntimeError("NNCF quantized no node")
    return {
        "method": "nncf.quantize",
        "backend": "onnx",
        "model_type": "transformer" if transformer else None,
        "smooth_quant": False,
        "calibration_rows": len(items),
        "quantize_linear": pairs,
        "nncf": nncf.__version__,
        "openvino": ov.__version__,
    }


# -------------------------------------------------------------------------------- optimize builders


def _skipped(reason: str) -> Exception:
    from modelops.steps.optimize import VariantSkipped  # the step's exception (no import cycle at load time)

    return VariantSkipped(reason)


def build_bf16(ctx: Any) -> dict[str, Any]:
    """``openvino_bf16``: the export's ONNX, served with the bf16 precision hint; skipped without native bf16."""
    if reason := missing():
        raise _skipped(reason)
    import openvino as ov

    caps = capabilities()
    if "BF16" not in caps:
        raise _skipped(
            f"this CPU has no native bf16 (OpenVINO capabilities: {', '.join(caps)}): bf16 would be emulated"
        )
    shutil.copyfile(ctx.src, ctx.dest)
    return {"openvino": {"inference_precision": "bf16", "capabilities": caps, "openvino": ov.__version__}}


def build_int8(ctx: Any) -> dict[str, Any]:
    """``openvino_int8``: NNCF post-training INT8 calibrated on the recipe's data (:func:`quantize_int8`)."""
    if reason := missing():
        raise _skipped(reason)
    from modelops.steps.optimize import transformer_hints

    calibration, calibration_source = ctx.calibration()
    summary = quantize_int8(ctx.src, ctx.dest, calibration, transformer=transformer_hints(ctx.src) is not None)
    log.info("openvino_int8: %s", summary)
    return {"quantization": {**summary, "calibration": calibration_source}}
