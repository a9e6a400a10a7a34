"""ONNX Runtime on CPU with the session options the Triton deployments use, for every step that scores a model.

Validation must measure what is served: graph optimizations change the numerics of quantized graphs
(a static QDQ MiniLM moved by 0.014 between ORT's default optimizers and the serving set), so export's
parity check, validate's metrics and the static-quantization search all run through :func:`session`.
The serving templates (``triton_repo_templates/python/onnxruntime*_model.py``) default to the same
``ort_disabled_optimizers``; a unit test keeps the two in step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# ORT 1.32's CPU SkipLayerNormalization kernel was ~7x slower than the Add + LayerNormalization it fuses
# (MiniLM, 2 threads): the deployments disable the fusion, so scoring does too.
SERVING_DISABLED_OPTIMIZERS: tuple[str, ...] = ("SkipLayerNormFusion",)
CHUNK = 256


def session(model: Path | str | bytes, threads: int = 0, options: Any | None = None) -> Any:
    """A CPU ``InferenceSession`` of a model path (or serialized bytes), configured like the deployments.

    ``options`` (an ``onnxruntime.SessionOptions``) adds settings of the caller's, e.g. an
    ``optimized_model_filepath`` to save the graph ORT optimized; the serving optimizer set still applies.
    """
    import onnxruntime as ort

    options = options or ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(
        source, options, providers=["CPUExecutionProvider"], disabled_optimizers=list(SERVING_DISABLED_OPTIMIZERS)
    )


def run(model: Path | str | Any, inputs: dict[str, np.ndarray], chunk: int = CHUNK) -> dict[str, np.ndarray]:
    """Run a model (path or session) on ``inputs`` in row chunks; outputs keyed by name, in graph order.

    Inputs the graph does not take are ignored; rows are cut to the shortest input.
    """
    sess = model if hasattr(model, "run") else session(model)
    in_names = [i.name for i in sess.get_inputs()]
    out_names = [o.name for o in sess.get_outputs()]
    n = min(len(inputs[k]) for k in in_names)
    parts = [sess.run(None, {k: inputs[k][s : s + chunk] for k in in_names}) for s in range(0, max(n, 1), chunk)]
    return {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(out_names)}


def run_list(model: Path | str | Any, inputs: dict[str, np.ndarray], chunk: int = CHUNK) -> list[np.ndarray]:
    """:func:`run` with the outputs as a list in graph order."""
    return list(run(model, inputs, chunk).values())
