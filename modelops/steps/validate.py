"""Validate step: score every candidate against the source on the recipe's eval data (the accuracy gate).

The source is export's ONNX model, which export parity-checked against the framework. A candidate is
accepted iff its metric >= source metric - tolerance, none of its outputs is NaN/inf, AND its per-sample
comparison table passes the recipe's great-expectations suite (:mod:`modelops.evaluation.gates`). The table and GX's
result are uploaded to ``<run prefix>/<variant>/comparison.csv`` and ``expectations.json``.

TensorRT engines (the compile step's plans) go through the same gate, run by TensorRT
(:mod:`modelops.evaluation.trt_gate`); their verdicts also record the ONNX they were built from and the GPU product.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from modelops.contracts.status import Status
from modelops.contracts.variants import VARIANTS, ArtifactFormat, Runtime, get_variant
from modelops.optimization import ort_cpu
from modelops.steps._common import StepError, first_line, load_result, main, variant_prefix
from modelops.storage import Storage, join

log = logging.getLogger("modelops.steps.validate")

EVAL_CHUNK = 256
TENSORRT_REASON = "needs TensorRT (GPU) to run"


def agreement(candidate: np.ndarray, source: np.ndarray) -> float | None:
    """Top-1 agreement for classifier-like outputs ``[N, classes>1]``; None otherwise."""
    from modelops.evaluation.metrics import top1_agreement_or_none

    return top1_agreement_or_none(candidate, source)


def gate(metric: float, source_metric: float, tolerance: float, finite: bool, metric_name: str) -> str | None:
    """The rejection reason, or None when the candidate passes."""
    if not finite or math.isnan(metric):
        return "candidate outputs contain NaN or inf"
    if metric < source_metric - tolerance:
        return f"{metric_name} {metric:.3f} is below source {source_metric:.3f} - tolerance {tolerance:.3f}"
    return None


def extra_metrics(recipe: Any, outputs: np.ndarray, labels: np.ndarray | None, source: np.ndarray) -> dict[str, float]:
    """The recipe's optional ``extra_metrics(outputs, labels, source_outputs)`` as floats; {} without one.

    A failing extra metric is logged and left out: it informs, it does not gate.
    """
    try:
        raw = recipe.extra_metrics(outputs, labels, source) or {}
        return {str(k): float(v) for k, v in raw.items() if v is not None}
    except Exception as exc:  # noqa: BLE001 - informative metrics never fail a candidate
        log.warning("extra metrics of recipe %s failed: %s", recipe.name, first_line(exc))
        return {}


def run_candidate(path: Path, inputs: dict[str, np.ndarray], variant: str | None = None) -> dict[str, np.ndarray]:
    """The candidate's outputs in the runtime that serves it: OpenVINO (with the variant's precision hint) or ORT."""
    info = VARIANTS.get(variant or "")  # test/ad-hoc names run in ONNX Runtime
    if info is not None and info.artifact == ArtifactFormat.TENSORRT_PLAN:  # a compiled engine: TensorRT runs it
        from modelops.evaluation.trt_gate import run_engine

        return run_engine(path, inputs)
    if info is not None and info.runtime == Runtime.OPENVINO:
        from modelops.optimization import openvino

        return openvino.run(path, inputs, EVAL_CHUNK, precision=info.options.get("precision", "f32"))
    return ort_cpu.run(path, inputs, EVAL_CHUNK)


def _not_run(status: str, source_metric: float, reason: str, detail: str | None = None) -> dict[str, Any]:
    return {
        "status": status,
        "metric": None,
        "source_metric": source_metric,
        "max_abs_diff": None,
        "agreement": None,
        "reason": reason,
        "detail": detail,
        "expectations": None,
        "extra_metrics": {},
    }


def validate_candidate(
    recipe: Any,
    candidate_onnx: Path,
    eval_inputs: dict[str, np.ndarray],
    labels: np.ndarray | None,
    source_outputs: dict[str, np.ndarray],
    source_metric: float,
    tolerance: float,
    runtime: str = Runtime.ONNXRUNTIME,
    variant: str | None = None,
) -> dict[str, Any]:
    """Score one candidate: the metric rule AND the GX expectation suite must pass.

    Returns status accepted|rejected|failed|skipped with metric, diff, agreement, ``expectations``
    (``{"success", "failed", "suite", ...}``), ``extra_metrics`` and reason. Accepted and rejected results
    also carry ``table`` (the per-sample comparison DataFrame) and ``gx_result`` (GX's result JSON); the
    callers pop them before writing JSON. A ``runtime="tensorrt"`` candidate that ORT cannot run is
    ``skipped`` (it is checked on a GPU instead), not failed. ``variant`` picks the runtime that scores it
    (:func:`run_candidate`: an OpenVINO variant runs in OpenVINO, as served).
    """
    from modelops.evaluation.gates import comparison_table, describe, thresholds_for, validate_table

    try:
        outputs = run_candidate(candidate_onnx, eval_inputs, variant)
    except Exception as exc:  # noqa: BLE001 - a broken candidate fails alone
        info = VARIANTS.get(variant or "")
        engine = info is not None and info.artifact == ArtifactFormat.TENSORRT_PLAN
        if runtime == Runtime.TENSORRT and (isinstance(exc, ImportError) or not engine):  # a broken engine fails
            return _not_run(Status.SKIPPED, source_metric, TENSORRT_REASON, f"onnxruntime: {first_line(exc)}")
        return _not_run(Status.FAILED, source_metric, f"cannot run candidate: {first_line(exc)}")
    first = next(iter(source_outputs))
    cand, src = outputs[first], source_outputs[first]
    finite = all(bool(np.isfinite(o).all()) for o in outputs.values() if o.dtype.kind == "f")
    metric = float(recipe.metric(cand, labels, src))
    diffs = [float(np.max(np.abs(outputs[k].astype(np.float64) - v))) for k, v in source_outputs.items() if v.size]
    max_abs_diff = max(diffs) if diffs else 0.0
    table = comparison_table(outputs, source_outputs, first, labels)
    verdict = validate_table(table, thresholds_for(recipe, tolerance, src, labels))
    for failed in verdict.failed:
        log.warning("expectation failed: %s", describe(failed))
    reasons = [r for r in (gate(metric, source_metric, tolerance, finite, recipe.metric_name), verdict.reason()) if r]
    return {
        "status": Status.REJECTED if reasons else Status.ACCEPTED,
        "metric": metric if math.isfinite(metric) else None,
        "source_metric": source_metric,
        "max_abs_diff": max_abs_diff if math.isfinite(max_abs_diff) else None,
        "agreement": agreement(cand, src),
        "reason": "; ".join(reasons) or None,
        "expectations": verdict.summary(),
        "extra_metrics": extra_metrics(recipe, cand, labels, src),
        "table": table,
        "gx_result": verdict.raw,
    }


def _save_gate_artifacts(res: dict[str, Any], dest: Path | None) -> None:
    """Move ``table``/``gx_result`` out of ``res`` into ``dest/comparison.csv`` and ``dest/expectations.json``."""
    table, raw = res.pop("table", None), res.pop("gx_result", None)
    res["comparison_path"] = res["expectations_path"] = None
    if dest is None or table is None:
        return
    dest.mkdir(parents=True, exist_ok=True)
    table.to_csv(dest / "comparison.csv", index=False)
    (dest / "expectations.json").write_text(json.dumps(raw, indent=2, default=str))
    res["comparison_path"], res["expectations_path"] = dest / "comparison.csv", dest / "expectations.json"


def validate_candidates(
    recipe_name: str,
    io_dict: dict[str, Any],
    source_onnx: Path,
    candidates: dict[str, Path],
    tolerance: float,
    samples: dict[str, np.ndarray] | None = None,
    out_dir: Path | None = None,
    runtimes: dict[str, str] | None = None,
    recipe: Any | None = None,
) -> tuple[float, str, dict[str, dict[str, Any]]]:
    """Gate every candidate ONNX against ``source_onnx`` on the recipe's eval data.

    Args:
        recipe_name: an installed recipe (``modelops.recipes.known_recipes()``).
        io_dict: export's ``io`` (``{"inputs": [...], "outputs": [...]}``).
        source_onnx: the parity-checked export.
        candidates: variant -> candidate ONNX path.
        tolerance: allowed metric drop (and 1 - the minimum top-1 agreement / per-sample cosine).
        samples: export's sample inputs; when given with ``out_dir``, each accepted or rejected candidate's
            outputs on them are saved to ``out_dir/<variant>/sample_outputs.npz`` (keyed by output name).
        out_dir: where sample outputs and the gate's ``comparison.csv``/``expectations.json`` go.
        runtimes: variant -> optimize's ``runtime`` (``"tensorrt"`` candidates may be skipped).
        recipe: the recipe object to score with (the run's rows bound to it, :func:`modelops.data.bound.bind`);
            None: ``recipe_name``'s own.

    Returns:
        ``(source_metric, metric_name, {variant: result})``; results carry ``sample_outputs_path``,
        ``comparison_path`` and ``expectations_path`` (None without ``out_dir``).
    """
    import onnxruntime  # noqa: F401 - loaded before GX's import starts in the background (see below)

    from modelops.evaluation.gates import import_in_background
    from modelops.recipes import IOSpec, get_recipe

    recipe = recipe if recipe is not None else get_recipe(recipe_name)
    io = IOSpec.from_dict(io_dict)
    eval_inputs, labels = recipe.eval_data(io)
    # GX's import (3-4 s) overlaps the source model's run, which releases the GIL; this thread imports nothing
    # meanwhile, so the two never import at once (no import-lock cycles), and the gate starts once it is done
    gx_import = import_in_background()
    source_outputs = ort_cpu.run(source_onnx, eval_inputs, EVAL_CHUNK)
    gx_import.join()
    first = next(iter(source_outputs))
    source_metric = float(recipe.metric(source_outputs[first], labels, source_outputs[first]))
    if not math.isfinite(source_metric):
        raise StepError(f"source {recipe.metric_name} is {source_metric} on the eval data: nothing to gate against")
    results: dict[str, dict[str, Any]] = {}
    for variant, path in candidates.items():
        started = time.perf_counter()
        runtime = (runtimes or {}).get(variant) or Runtime.ONNXRUNTIME
        res = validate_candidate(
            recipe, path, eval_inputs, labels, source_outputs, source_metric, tolerance, runtime, variant=variant
        )
        _save_gate_artifacts(res, out_dir / variant if out_dir is not None else None)
        res["sample_outputs_path"] = None
        if samples is not None and out_dir is not None and res["status"] in ("accepted", "rejected"):
            sample_out = run_candidate(path, {n: samples[n] for n in io.input_names}, variant)
            dest = out_dir / variant / "sample_outputs.npz"
            dest.parent.mkdir(parents=True, exist_ok=True)
            np.savez(dest, **sample_out)
            res["sample_outputs_path"] = dest
        gx = res["expectations"]
        log.info(
            "%s: %s %s=%s (source %.4f) suite %s in %.2f s of %.2f s %s",
            variant,
            res["status"],
            recipe.metric_name,
            res["metric"],
            source_metric,
            ("passed" if gx["success"] else f"failed {len(gx['failed'])}/{gx['evaluated']}") if gx else "-",
            gx["seconds"] if gx else 0.0,
            time.perf_counter() - started,
            res["reason"] or "",
        )
        results[variant] = res
    return source_metric, recipe.metric_name, results


def _engines(storage: Storage, spec: dict[str, Any], work: Path) -> tuple[dict[str, Path], dict[str, Any], dict]:
    """The compile step's engines (none when compile did not run or was skipped): local plans, provenance, and
    the verdicts (skipped, with compile's reason) of those it did not build."""
    from modelops.evaluation import trt_gate
    from modelops.steps._common import result_uri

    if not storage.exists(result_uri(spec, "compile")):
        return {}, {}, {}
    compiled = load_result(storage, spec, "compile")
    plans, provenance = trt_gate.engine_candidates(storage, compiled, work, trt_gate.local_compute_capability())
    return plans, provenance, {v: _not_run(Status.SKIPPED, math.nan, r) for v, r in trt_gate.not_built(compiled).items()}


def run(spec: dict[str, Any], storage: Storage) -> dict[str, Any]:
    """The step: download export + optimize outputs, gate the done candidates, upload sample outputs."""
    from modelops.steps import llm_build, llm_eval

    llm = llm_build.generative_recipe(spec)
    if llm is not None:  # a generative recipe: the LLM path (HF source, ORT GenAI builds, next-token gate)
        return llm_eval.validate(spec, storage, llm)
    export = load_result(storage, spec, "export")
    optimize = load_result(storage, spec, "optimize")
    tolerance = float(spec.get("accuracy_tolerance", 0.01))
    with tempfile.TemporaryDirectory(prefix="modelops-validate-") as tmp:
        work = Path(tmp)
        source = storage.download_file(export["outputs"]["onnx"], work / "source.onnx")
        samples_path = storage.download_file(export["outputs"]["samples"], work / "samples.npz")
        with np.load(samples_path) as npz:
            samples = {k: npz[k] for k in npz.files if not k.startswith("output:")}
        done = {v: c for v, c in optimize["candidates"].items() if c.get("status") == Status.DONE}
        # a TensorRT-only artifact (an engine, no ONNX) cannot be scored here: it is checked on a GPU
        skipped = {v: _not_run(Status.SKIPPED, math.nan, TENSORRT_REASON) for v, c in done.items() if not c.get("onnx")}
        todo = {v: c for v, c in done.items() if c.get("onnx")}
        engines, provenance, unbuilt = _engines(storage, spec, work)
        skipped.update(unbuilt)
        if not todo and not skipped and not engines:
            raise StepError("optimize produced no candidate to validate")
        paths = {v: storage.download_file(c["onnx"], work / "candidates" / v / "model.onnx") for v, c in todo.items()}
        paths.update(engines)
        runtimes = {v: get_variant(v).runtime for v in paths}
        from modelops.data.bound import bind
        from modelops.recipes import get_recipe

        source_metric, metric_name, results = validate_candidates(
            spec["recipe"], export["io"], source, paths, tolerance, samples=samples, out_dir=work / "out",
            runtimes=runtimes, recipe=bind(get_recipe(spec["recipe"]), spec, storage),
        )  # fmt: skip
        if provenance:  # engines: also compared with the ONNX each was built from (informative)
            from modelops.evaluation.trt_gate import built_from_parity

            built_from_parity(storage, results, provenance, samples, work)
        candidates: dict[str, Any] = {}
        for variant, res in {**results, **skipped}.items():
            res["source_metric"] = source_metric
            prefix = variant_prefix(spec, variant)
            for key, name in (("sample_outputs", "sample_outputs.npz"), ("comparison", "comparison.csv")):
                local = res.pop(f"{key}_path", None)
                res[key] = storage.upload_file(local, join(prefix, name)) if local else None
            local = res.pop("expectations_path", None)
            if res.get("expectations") is not None:
                res["expectations"]["uri"] = (
                    storage.upload_file(local, join(prefix, "expectations.json")) if local else None
                )
            candidates[variant] = {**res, **provenance.get(variant, {})}
    return {
        "status": Status.DONE,
        "source_metric": source_metric,
        "metric_name": metric_name,
        "accuracy_tolerance": tolerance,
        "candidates": candidates,
    }


if __name__ == "__main__":
    main("validate", run)
