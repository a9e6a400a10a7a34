"""Validate step: score every candidate against the source on the recipe's eval data (the accuracy gate).

The source is export's ONNX model, which export parity-checked against the framework. A candidate is
accepted iff its metric >= source metric - tolerance and none of its outputs is NaN/inf.
"""

from __future__ import annotations

import logging
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from modelops.steps._common import StepError, first_line, load_result, run_step, variant_prefix
from modelops.storage import Storage, join

log = logging.getLogger("modelops.steps.validate")

EVAL_CHUNK = 256


def run_onnx(onnx_path: Path, inputs: dict[str, np.ndarray], chunk: int = EVAL_CHUNK) -> dict[str, np.ndarray]:
    """Run an ONNX model with onnxruntime on CPU in chunks; outputs keyed by name."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    in_names = [i.name for i in session.get_inputs()]
    out_names = [o.name for o in session.get_outputs()]
    n = len(next(iter(inputs.values())))
    parts = [session.run(None, {k: inputs[k][s : s + chunk] for k in in_names}) for s in range(0, n, chunk)]
    return {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(out_names)}


def agreement(candidate: np.ndarray, source: np.ndarray) -> float | None:
    """Top-1 agreement for classifier-like outputs ``[N, classes>1]``; None otherwise."""
    if candidate.ndim != 2 or candidate.shape[1] < 2:
        return None
    return float((candidate.argmax(axis=1) == source.argmax(axis=1)).mean())


def gate(metric: float, source_metric: float, tolerance: float, finite: bool, metric_name: str) -> str | None:
    """The rejection reason, or None when the candidate passes."""
    if not finite or math.isnan(metric):
        return "candidate outputs contain NaN or inf"
    if metric < source_metric - tolerance:
        return f"{metric_name} {metric:.3f} is below source {source_metric:.3f} - tolerance {tolerance:.3f}"
    return None


def validate_candidate(
    recipe: Any,
    candidate_onnx: Path,
    eval_inputs: dict[str, np.ndarray],
    labels: np.ndarray | None,
    source_outputs: dict[str, np.ndarray],
    source_metric: float,
    tolerance: float,
) -> dict[str, Any]:
    """Score one candidate; returns status accepted|rejected|failed with metric, diff, agreement and reason."""
    try:
        outputs = run_onnx(candidate_onnx, eval_inputs)
    except Exception as exc:  # noqa: BLE001 - a broken candidate fails alone
        return {
            "status": "failed",
            "metric": None,
            "source_metric": source_metric,
            "max_abs_diff": None,
            "agreement": None,
            "reason": f"cannot run candidate: {first_line(exc)}",
        }
    first = next(iter(source_outputs))
    cand, src = outputs[first], source_outputs[first]
    finite = all(bool(np.isfinite(o).all()) for o in outputs.values() if o.dtype.kind == "f")
    metric = float(recipe.metric(cand, labels, src))
    diffs = [float(np.max(np.abs(outputs[k].astype(np.float64) - v))) for k, v in source_outputs.items() if v.size]
    max_abs_diff = max(diffs) if diffs else 0.0
    reason = gate(metric, source_metric, tolerance, finite, recipe.metric_name)
    return {
        "status": "rejected" if reason else "accepted",
        "metric": metric if math.isfinite(metric) else None,
        "source_metric": source_metric,
        "max_abs_diff": max_abs_diff if math.isfinite(max_abs_diff) else None,
        "agreement": agreement(cand, src),
        "reason": reason,
    }


def validate_candidates(
    recipe_name: str,
    io_dict: dict[str, Any],
    source_onnx: Path,
    candidates: dict[str, Path],
    tolerance: float,
    samples: dict[str, np.ndarray] | None = None,
    out_dir: Path | None = None,
) -> tuple[float, str, dict[str, dict[str, Any]]]:
    """Gate every candidate ONNX against ``source_onnx`` on the recipe's eval data.

    Args:
        recipe_name: a key of ``model_recipes.RECIPES``.
        io_dict: export's ``io`` (``{"inputs": [...], "outputs": [...]}``).
        source_onnx: the parity-checked export.
        candidates: variant -> candidate ONNX path.
        tolerance: allowed metric drop.
        samples: export's sample inputs; when given with ``out_dir``, each accepted or rejected candidate's
            outputs on them are saved to ``out_dir/<variant>/sample_outputs.npz`` (keyed by output name).
        out_dir: where sample outputs go.

    Returns:
        ``(source_metric, metric_name, {variant: result})``; results carry ``sample_outputs_path``.
    """
    from model_recipes import get_recipe
    from model_recipes.base import IOSpec

    recipe = get_recipe(recipe_name)
    io = IOSpec.from_dict(io_dict)
    eval_inputs, labels = recipe.eval_data(io)
    source_outputs = run_onnx(source_onnx, eval_inputs)
    first = next(iter(source_outputs))
    source_metric = float(recipe.metric(source_outputs[first], labels, source_outputs[first]))
    if not math.isfinite(source_metric):
        raise StepError(f"source {recipe.metric_name} is {source_metric} on the eval data: nothing to gate against")
    results: dict[str, dict[str, Any]] = {}
    for variant, path in candidates.items():
        res = validate_candidate(recipe, path, eval_inputs, labels, source_outputs, source_metric, tolerance)
        res["sample_outputs_path"] = None
        if samples is not None and out_dir is not None and res["status"] != "failed":
            sample_out = run_onnx(path, {n: samples[n] for n in io.input_names})
            dest = out_dir / variant / "sample_outputs.npz"
            dest.parent.mkdir(parents=True, exist_ok=True)
            np.savez(dest, **sample_out)
            res["sample_outputs_path"] = dest
        log.info(
            "%s: %s %s=%s (source %.4f) %s",
            variant,
            res["status"],
            recipe.metric_name,
            res["metric"],
            source_metric,
            res["reason"] or "",
        )
        results[variant] = res
    return source_metric, recipe.metric_name, results


def run(spec: dict[str, Any], storage: Storage) -> dict[str, Any]:
    """The step: download export + optimize outputs, gate the done candidates, upload sample outputs."""
    export = load_result(storage, spec, "export")
    optimize = load_result(storage, spec, "optimize")
    tolerance = float(spec.get("accuracy_tolerance", 0.01))
    with tempfile.TemporaryDirectory(prefix="modelops-validate-") as tmp:
        work = Path(tmp)
        source = storage.download_file(export["outputs"]["onnx"], work / "source.onnx")
        samples_path = storage.download_file(export["outputs"]["samples"], work / "samples.npz")
        with np.load(samples_path) as npz:
            samples = {k: npz[k] for k in npz.files if not k.startswith("output:")}
        todo = {v: c for v, c in optimize["candidates"].items() if c.get("status") == "done" and c.get("onnx")}
        if not todo:
            raise StepError("optimize produced no candidate to validate")
        paths = {v: storage.download_file(c["onnx"], work / "candidates" / v / "model.onnx") for v, c in todo.items()}
        source_metric, metric_name, results = validate_candidates(
            spec["recipe"], export["io"], source, paths, tolerance, samples=samples, out_dir=work / "out"
        )
        candidates: dict[str, Any] = {}
        for variant, res in results.items():
            local = res.pop("sample_outputs_path")
            res["sample_outputs"] = (
                storage.upload_file(local, join(variant_prefix(spec, variant), "sample_outputs.npz")) if local else None
            )
            candidates[variant] = res
    return {
        "status": "done",
        "source_metric": source_metric,
        "metric_name": metric_name,
        "accuracy_tolerance": tolerance,
        "candidates": candidates,
    }


if __name__ == "__main__":
    sys.exit(run_step("validate", run))
