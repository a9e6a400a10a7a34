"""Optimize step: one candidate ONNX per requested variant, built with ONNX Runtime's own tools.

Variants are data (:data:`VARIANTS`: name -> builder). A failing variant is marked ``failed`` with its
reason and the others continue; the step fails only when every variant fails.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelops.steps._common import StepError, first_line, load_result, run_step, variant_prefix
from modelops.storage import Storage, join

log = logging.getLogger("modelops.steps.optimize")


def ort_fp32(src: Path, dest: Path) -> None:
    """ORT graph optimizations (ORT_ENABLE_EXTENDED: constant folding, Conv/Gemm/activation fusions) saved offline.

    The result holds CPU-provider fused ops (com.microsoft domain): it is meant for ORT on CPU.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(dest)
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    if not dest.exists():
        raise RuntimeError("onnxruntime wrote no optimized model")


def ort_int8_dynamic(src: Path, dest: Path) -> None:
    """Dynamic INT8: per-channel QInt8 weights, activations quantized at run time (quant_pre_process first)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dest.with_name("preprocessed.onnx")
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
        model_input = pre
    except Exception as exc:  # noqa: BLE001 - pre-processing is an optional improvement
        log.warning("quant_pre_process failed (%s); quantizing the exported model as is", first_line(exc))
        model_input = src
    quantize_dynamic(str(model_input), str(dest), per_channel=True, weight_type=QuantType.QInt8)
    pre.unlink(missing_ok=True)


VARIANTS: dict[str, Callable[[Path, Path], None]] = {
    "ort_fp32": ort_fp32,
    "ort_int8_dynamic": ort_int8_dynamic,
}


def check_variants(variants: list[str]) -> None:
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise StepError(f"unknown variant(s) {unknown}; known: {sorted(VARIANTS)}")
    if not variants:
        raise StepError(f"no variants requested; known: {sorted(VARIANTS)}")


def build_candidate(variant: str, src: Path, dest: Path) -> dict[str, Any]:
    """Build one variant and smoke-load it; returns ``{"status","path","size_bytes","reason"}`` (never raises)."""
    import onnxruntime as ort

    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        VARIANTS[variant](src, dest)
        ort.InferenceSession(str(dest), providers=["CPUExecutionProvider"])  # it must at least load on CPU
    except Exception as exc:  # noqa: BLE001 - an optional variant fails with status, not an exception
        log.warning("variant %s failed: %s", variant, first_line(exc))
        return {"status": "failed", "path": None, "size_bytes": 0, "reason": first_line(exc)}
    return {"status": "done", "path": dest, "size_bytes": dest.stat().st_size, "reason": None}


def optimize_model(src: Path, variants: list[str], out_dir: Path) -> dict[str, dict[str, Any]]:
    """Build every variant from ``src`` into ``out_dir/<variant>/model.onnx``.

    Raises:
        StepError: unknown variant names, or every variant failed.
    """
    check_variants(variants)
    results = {v: build_candidate(v, src, out_dir / v / "model.onnx") for v in variants}
    if not any(r["status"] == "done" for r in results.values()):
        reasons = "; ".join(f"{v}: {r['reason']}" for v, r in results.items())
        raise StepError(f"every variant failed: {reasons}")
    return results


def run(spec: dict[str, Any], storage: Storage) -> dict[str, Any]:
    """The step: download export's ONNX, build the candidates, upload them."""
    variants = list(spec.get("variants") or [])
    check_variants(variants)
    export = load_result(storage, spec, "export")
    with tempfile.TemporaryDirectory(prefix="modelops-optimize-") as tmp:
        src = storage.download_file(export["outputs"]["onnx"], Path(tmp) / "source.onnx")
        results = optimize_model(src, variants, Path(tmp) / "out")
        candidates: dict[str, Any] = {}
        for variant, res in results.items():
            uri = storage.upload_file(res["path"], join(variant_prefix(spec, variant), "model.onnx")) if res["path"] else None
            candidates[variant] = {
                "status": res["status"],
                "onnx": uri,
                "size_bytes": res["size_bytes"],
                "reason": res["reason"],
            }
        source_size = src.stat().st_size
    return {"status": "done", "candidates": candidates, "source_size_bytes": source_size}


if __name__ == "__main__":
    sys.exit(run_step("optimize", run))
