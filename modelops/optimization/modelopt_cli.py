"""NVIDIA ModelOpt INT8/FP8 Q/DQ quantization of an ONNX model, for TensorRT.

ModelOpt 0.47 pins onnx~=1.21 and onnxruntime-gpu~=1.24, which conflict with the worker environment, so
it lives in its own environment (``.venv-modelopt``, ``requirements-modelopt.txt``, ``make modelopt``) and
runs as a subprocess::

    .venv-modelopt/bin/python -m modelops.optimization.modelopt_cli \\
        --src model.onnx --dest model.qdq.onnx --mode int8 --calib calibration.npz

The last line of stdout is a JSON summary. The worker side calls :func:`run_modelopt`, which never imports
``modelopt``: only :func:`quantize` (run inside the ModelOpt environment) does.

The output is a Q/DQ graph meant for TensorRT (explicit quantization), not a CPU speed-up. INT8 keeps the
non-quantized part in fp32 by default so ONNX Runtime on CPU can still score it; FP8 keeps fp16 (what
ModelOpt and a strongly typed TensorRT build expect).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_VAR = "MODELOPS_MODELOPT_PYTHON"  # Settings.tools.modelopt_python
DEFAULT_ENV = REPO_ROOT / ".venv-modelopt"
MODES = ("int8", "fp8")
# the non-quantized part of the graph: fp32 keeps INT8 Q/DQ runnable by ONNX Runtime on CPU (validate);
# FP8 is TensorRT-only anyway and ModelOpt's default (fp16) is what its strongly typed build wants
HIGH_PRECISION = {"int8": "fp32", "fp8": "fp16"}
CALIBRATION_STEP_ROWS = 16
DEFAULT_TIMEOUT_S = 1800
# ModelOpt log lines worth carrying into the result: why nodes were (not) quantized
NOTE_PATTERN = re.compile(
    r"^(Excluding .*|Found [1-9]\d* (unsupported Conv nodes|non-quantizable partitions).*|Total number of quantized nodes.*)"
)


class _NoteCollector(logging.Handler):
    """Keeps the ModelOpt log lines that explain its node selection (INFO/DEBUG, which it prints to stdout)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.notes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.name.startswith("modelopt") and NOTE_PATTERN.match(message.strip()):
            self.notes.append(message.strip()[:300])


class ModelOptUnavailable(Exception):
    """The ModelOpt environment is not installed (the variant is skipped, not failed)."""


class ModelOptFailed(Exception):
    """ModelOpt ran and failed; the message is its last meaningful line."""


def modelopt_python() -> Path | None:
    """The ModelOpt environment's interpreter: ``$MODELOPS_MODELOPT_PYTHON`` or ``<repo>/.venv-modelopt``; None if absent."""
    from modelops.settings import Settings  # here, not at the top: this file also runs in the ModelOpt venv

    candidate = Settings.from_env().tools.modelopt_python or DEFAULT_ENV / "bin" / "python"
    return candidate if candidate.is_file() and os.access(candidate, os.X_OK) else None


def calibration_shapes(arrays: dict[str, Any], step_rows: int = CALIBRATION_STEP_ROWS) -> tuple[str, int]:
    """ModelOpt's ``calibration_shapes`` spec (``name:BxD1xD2,...``) for steps of ``step_rows`` rows.

    Returns:
        ``(spec, rows)``: ``rows`` is the number of leading rows to keep so that every step is full.
    """
    n = min(len(a) for a in arrays.values())
    batch = max(1, min(step_rows, n))
    shapes = [f"{name}:{'x'.join(str(d) for d in (batch, *arr.shape[1:]))}" for name, arr in arrays.items()]
    return ",".join(shapes), (n // batch) * batch


def quantize(
    src: Path,
    dest: Path,
    mode: str,
    calib: Path,
    *,
    calibration_method: str | None = None,
    high_precision_dtype: str | None = None,
    eps: tuple[str, ...] = ("cpu",),
    nodes_to_exclude: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run ``modelopt.onnx.quantization.quantize`` (inside the ModelOpt environment) and summarize the output.

    Args:
        src: fp32 ONNX model.
        dest: where the Q/DQ model goes.
        mode: ``int8`` or ``fp8``.
        calib: ``.npz`` of calibration inputs keyed by model input name.
        calibration_method: ``entropy`` / ``max`` (ModelOpt's default when None).
        high_precision_dtype: dtype of the non-quantized part; default per :data:`HIGH_PRECISION`.
        eps: calibration execution providers (``cpu`` here; ``cuda:0``/``trt`` in the GPU image).
        nodes_to_exclude: exact node names kept in high precision.
    """
    import numpy as np
    import onnx
    from modelopt import __version__ as modelopt_version
    from modelopt.onnx.quantization import quantize as mo_quantize

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    with np.load(calib) as npz:
        arrays = {k: npz[k] for k in npz.files}
    shapes, rows = calibration_shapes(arrays)
    arrays = {k: v[:rows] for k, v in arrays.items()}
    started = time.time()
    notes = _NoteCollector()
    logging.getLogger().addHandler(notes)  # ModelOpt's logger propagates to the root logger
    mo_quantize(
        onnx_path=str(src),
        quantize_mode=mode,
        calibration_data=arrays,
        calibration_method=calibration_method,
        calibration_shapes=shapes,
        calibration_eps=list(eps),
        output_path=str(dest),
        high_precision_dtype=high_precision_dtype or HIGH_PRECISION[mode],
        nodes_to_exclude=[f"^{re.escape(n)}$" for n in nodes_to_exclude] or None,  # exact names
        log_level="DEBUG",  # the node-exclusion reasons are DEBUG lines
    )
    logging.getLogger().removeHandler(notes)
    if not dest.is_file():
        raise ModelOptFailed("ModelOpt wrote no model")
    model = onnx.load(str(dest), load_external_data=False)
    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return {
        "mode": mode,
        "modelopt": modelopt_version,
        "onnx": onnx.__version__,
        "calibration_rows": rows,
        "calibration_shapes": shapes,
        "calibration_eps": list(eps),
        "high_precision_dtype": high_precision_dtype or HIGH_PRECISION[mode],
        "quantize_linear": ops.get("QuantizeLinear", 0),
        "dequantize_linear": ops.get("DequantizeLinear", 0),
        "seconds": round(time.time() - started, 2),
        "nodes_to_exclude": list(nodes_to_exclude),
        "notes": notes.notes[-10:],
    }


def run_modelopt(
    src: Path,
    dest: Path,
    mode: str,
    calib: Path,
    *,
    python: Path | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    log_path: Path | None = None,
    nodes_to_exclude: tuple[str, ...] | list[str] = (),
) -> dict[str, Any]:
    """Run this module in the ModelOpt environment as a subprocess (called from the worker environment).

    Raises:
        ModelOptUnavailable: no ModelOpt environment.
        ModelOptFailed: the subprocess failed; the message carries its last error line.
    """
    python = python or modelopt_python()
    if python is None:
        raise ModelOptUnavailable("ModelOpt environment not installed: make modelopt")
    cmd = [str(python), "-m", "modelops.optimization.modelopt_cli", "--src", str(src), "--dest", str(dest)]
    cmd += ["--mode", mode, "--calib", str(calib)]
    for node in nodes_to_exclude:
        cmd += ["--exclude", node]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, cwd=REPO_ROOT, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        raise ModelOptFailed(f"ModelOpt {mode} timed out after {timeout_s:g} s") from None
    if log_path is not None:
        log_path.write_text(f"$ {' '.join(cmd)}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    if proc.returncode != 0:
        raise ModelOptFailed(f"ModelOpt {mode}: {last_error_line(proc.stderr or proc.stdout)}")
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise ModelOptFailed(f"ModelOpt {mode} printed no JSON summary") from None


def last_error_line(text: str) -> str:
    """The most informative line of a traceback-ish output: the last ``SomeError: ...`` line, else the last line."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if head.endswith(("Error", "Exception", "Failure")) or head in {"AssertionError", "KeyError"}:
            return line[:500]
    return (lines[-1] if lines else "no output")[:500]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modelops.optimization.modelopt_cli", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--src", type=Path, required=True, help="fp32 ONNX model")
    parser.add_argument("--dest", type=Path, required=True, help="output Q/DQ ONNX model")
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--calib", type=Path, required=True, help=".npz of calibration inputs keyed by input name")
    parser.add_argument("--calibration-method", default=None, help="entropy|max (ModelOpt's default when omitted)")
    parser.add_argument("--high-precision-dtype", default=None, choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--eps", default="cpu", help="comma-separated calibration EPs (cpu, cuda:0, trt)")
    parser.add_argument("--exclude", action="append", default=[], help="node name to keep in high precision")
    args = parser.parse_args(argv)
    args.dest.parent.mkdir(parents=True, exist_ok=True)
    summary = quantize(
        args.src,
        args.dest,
        args.mode,
        args.calib,
        calibration_method=args.calibration_method,
        high_precision_dtype=args.high_precision_dtype,
        eps=tuple(e for e in args.eps.split(",") if e),
        nodes_to_exclude=tuple(args.exclude),
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
