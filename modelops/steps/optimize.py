"""Optimize step: one candidate ONNX per requested variant (ONNX Runtime tools, and ModelOpt for TensorRT).

Which variants exist, which step builds each and what runs it is the registry's (:data:`modelops.contracts.variants.
VARIANTS`); this module maps each optimize variant to its builder (:data:`BUILDERS`: name -> builder of a
:class:`VariantContext`). A failing variant is marked ``failed`` with its reason, one that does not apply here (or a
calibrated one on synthetic rows) ``skipped``, and the others continue; the step fails only when every variant it built
failed. Compile variants (TensorRT engines) are not built here, but the Q/DQ candidates they start from are.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from modelops.contracts.status import Status
from modelops.contracts.variants import Runtime, get_variant, optimize_targets
from modelops.contracts.variants import check_variants as check_registry
from modelops.data.bound import bind
from modelops.optimization import openvino
from modelops.steps._common import StepError, first_line, load_result, main, variant_prefix
from modelops.steps.variant_context import Builder, VariantContext, VariantSkipped, paths_builder
from modelops.storage import Storage, join

log = logging.getLogger("modelops.steps.optimize")


def transformer_hints(src: Path) -> dict[str, Any] | None:
    """The recipe's hint for ONNX Runtime's transformer optimizer, read from the ONNX metadata; None without one.

    A recipe that exports a BERT-like encoder writes ``modelops.ort_model_type`` (e.g. ``bert``),
    ``modelops.num_heads`` and ``modelops.hidden_size`` into ``metadata_props`` at export
    (``model_recipes.text_embedding``), so this builder needs no recipe object.
    """
    import onnx

    props = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    if not props.get("modelops.ort_model_type"):
        return None
    return {
        "model_type": props["modelops.ort_model_type"],
        "num_heads": int(props.get("modelops.num_heads") or 0),
        "hidden_size": int(props.get("modelops.hidden_size") or 0),
    }


def ort_fp32(src: Path, dest: Path) -> None:
    """ORT graph optimizations (ORT_ENABLE_EXTENDED: constant folding, Conv/Gemm/activation fusions) saved offline.

    For a model carrying :func:`transformer_hints` (BERT-like encoders), ONNX Runtime's transformer optimizer
    runs instead: it fuses embeddings + LayerNorm, attention, bias + GELU and skip + LayerNorm, which the
    generic graph optimizations do not (ORT applies its own runtime optimizations on top when it loads).
    The result holds CPU-provider fused ops (com.microsoft domain): it is meant for ORT on CPU.
    """
    import onnxruntime as ort

    hints = transformer_hints(src)
    if hints:
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model

        # No SkipLayerNormalization: on CPU (2 threads, ORT 1.32) its kernel is slower than the Add +
        # LayerNormalization it replaces (MiniLM fp32 at batch 8: 101 -> 118 sentences/s without it); the
        # serving templates disable ORT's runtime SkipLayerNormFusion for the same reason.
        options = FusionOptions(hints["model_type"])
        options.enable_skip_layer_norm = False
        # opt_level=0: only the transformer fusions offline; the session applies the rest at load time
        optimized = optimize_model(str(src), opt_level=0, use_gpu=False, optimization_options=options, **hints)
        fused = {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}
        log.info("transformer optimizer (%s): fused %s", hints, fused)
        if not fused.get("Attention") and not fused.get("MultiHeadAttention"):
            log.warning("transformer optimizer fused no attention: the export does not match its patterns")
        optimized.save_model_to_file(str(dest))
        return
    from modelops.optimization import ort_cpu

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(dest)
    ort_cpu.session(src, options=so)  # loading writes the optimized graph to dest
    if not dest.exists():
        raise RuntimeError("onnxruntime wrote no optimized model")


def ort_int8_dynamic(src: Path, dest: Path) -> None:
    """Dynamic INT8: per-channel QInt8 weights, activations quantized at run time (quant_pre_process first)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from modelops.optimization.static_quant import pre_process

    pre = dest.with_name("preprocessed.onnx")
    model_input = pre if pre_process(src, pre) else src
    quantize_dynamic(str(model_input), str(dest), per_channel=True, weight_type=QuantType.QInt8)
    pre.unlink(missing_ok=True)


# -------------------------------------------------------------------------------- builders

def ort_int8_static(ctx: VariantContext) -> dict[str, Any]:
    """Static INT8 QDQ (U8S8, per-channel), calibrated on the recipe's data, sensitive nodes left in fp32."""
    from modelops.optimization.static_quant import StaticQuantConfig, quantize_static_auto

    recipe, _ = ctx.need_recipe()
    config = StaticQuantConfig.from_spec(ctx.spec.get("static_quant"))
    calibration, calibration_source = ctx.calibration()
    score, source_metric = ctx.scorer()
    outcome = quantize_static_auto(
        ctx.src,
        ctx.dest,
        calibration,
        score,
        metric_name=recipe.metric_name,
        source_metric=source_metric,
        tolerance=float(ctx.spec.get("accuracy_tolerance", 0.01)),
        workdir=ctx.workdir,
        config=config,
    )
    ctx.shared["static_excluded"] = list(outcome.excluded_nodes)  # ModelOpt INT8 reuses them (same failure mode)
    return {
        "quantization": {
            "method": "onnxruntime.quantize_static",
            "format": "QDQ",
            "activation_type": config.activation_type,
            "weight_type": config.weight_type,
            "per_channel": config.per_channel,
            "calibrate_method": config.calibrate_method,
            "calibration": calibration_source,
            **outcome.to_dict(),
        }
    }


def modelopt_exclusions(ctx: VariantContext, mode: str) -> tuple[list[str], str | None]:
    """Nodes ModelOpt keeps in high precision, and where the list came from.

    ``spec.modelopt.nodes_to_exclude`` wins; otherwise INT8 takes the nodes ``ort_int8_static`` measured as too
    sensitive in this run (an INT8 Q/DQ graph loses accuracy at the same layers whatever runs it). FP8 keeps
    its wider dynamic range and gets none by default.
    """
    explicit = (ctx.spec.get("modelopt") or {}).get("nodes_to_exclude")
    if explicit:
        return list(explicit), "spec.modelopt.nodes_to_exclude"
    if mode == "int8" and ctx.shared.get("static_excluded"):
        return list(ctx.shared["static_excluded"]), "ort_int8_static sensitivity"
    return [], None


def modelopt_builder(mode: str) -> Builder:
    """ModelOpt ``mode`` (int8|fp8) Q/DQ for TensorRT, run in the ModelOpt environment (a subprocess)."""

    def build(ctx: VariantContext) -> dict[str, Any]:
        from modelops.optimization.modelopt_cli import ModelOptUnavailable, modelopt_python, run_modelopt

        python = modelopt_python()
        if python is None:
            raise VariantSkipped("ModelOpt environment not installed: make modelopt")
        calibration, calibration_source = ctx.calibration()
        calib = ctx.workdir / "calibration.npz"
        np.savez(calib, **calibration)
        ctx.artifacts["modelopt.log"] = ctx.workdir / "modelopt.log"
        exclude, exclude_source = modelopt_exclusions(ctx, mode)
        try:
            summary = run_modelopt(
                ctx.src,
                ctx.dest,
                mode,
                calib,
                python=python,
                log_path=ctx.artifacts["modelopt.log"],
                nodes_to_exclude=exclude,
            )
        except ModelOptUnavailable as exc:
            raise VariantSkipped(str(exc)) from None
        if summary.get("quantize_linear", 0) == 0:
            notes = "; ".join(summary.get("notes") or []) or "no reason logged"
            raise RuntimeError(f"ModelOpt {mode} quantized no node: {notes}")
        return {"modelopt": {**summary, "calibration": calibration_source, "nodes_to_exclude_from": exclude_source}}

    build.__doc__ = f"ModelOpt {mode.upper()} Q/DQ ONNX (TensorRT input), calibrated on CPU in .venv-modelopt."
    return build


BUILDERS: dict[str, Builder] = {
    "ort_fp32": paths_builder(ort_fp32),
    "ort_int8_dynamic": paths_builder(ort_int8_dynamic),
    "ort_int8_static": ort_int8_static,
    "modelopt_int8": modelopt_builder("int8"),
    "modelopt_fp8": modelopt_builder("fp8"),
    "openvino_bf16": openvino.build_bf16,  # OpenVINO variants (modelops.optimization.openvino): skipped without it
    "openvino_int8": openvino.build_int8,
}


def check_variants(variants: list[str]) -> None:
    """Every name is in the variant registry; at least one (:class:`StepError` otherwise)."""
    try:
        check_registry(variants)
    except ValueError as exc:
        raise StepError(str(exc)) from None


def onnx_variants(variants: list[str]) -> list[str]:
    """The candidates optimize builds, in registry order: the requested optimize variants plus the Q/DQ
    sources the requested compile variants are built from."""
    return optimize_targets(variants)


def build_candidate(variant: str, ctx: VariantContext) -> dict[str, Any]:
    """Build one variant and smoke-load it on CPU (never raises).

    Returns:
        ``{"status": done|failed|skipped, "path", "size_bytes", "reason", "runtime", "artifacts", ...}`` plus the
        builder's extra fields. ``runtime``: the registry's (Q/DQ models for TensorRT need not load in ONNX
        Runtime on CPU; ``cpu_loadable`` says whether they do; OpenVINO candidates must compile in OpenVINO).
    """
    from modelops.optimization import ort_cpu
    ctx.dest.parent.mkdir(parents=True, exist_ok=True)
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    base: dict[str, Any] = {"path": None, "size_bytes": 0, "runtime": get_variant(variant).runtime}
    base["artifacts"] = ctx.artifacts
    try:
        extra = BUILDERS[variant](ctx) or {}
    except VariantSkipped as exc:
        log.info("variant %s skipped: %s", variant, exc)
        return {**base, "status": Status.SKIPPED, "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001 - an optional variant fails with status, not an exception
        log.warning("variant %s failed: %s", variant, first_line(exc))
        return {**base, "status": Status.FAILED, "reason": first_line(exc)}
    runtime = base["runtime"]
    try:  # it must at least load on CPU, in its runtime (TensorRT's Q/DQ models: in ONNX Runtime if they can)
        openvino.compile_model(ctx.dest) if runtime == Runtime.OPENVINO else ort_cpu.session(ctx.dest)
        cpu_error = None
    except Exception as exc:  # noqa: BLE001
        cpu_error = first_line(exc)
    if cpu_error and runtime in (Runtime.ONNXRUNTIME, Runtime.OPENVINO):
        log.warning("variant %s does not load in %s: %s", variant, runtime, cpu_error)
        return {**base, "status": Status.FAILED, "reason": cpu_error}
    if runtime == Runtime.TENSORRT:
        extra["cpu_loadable"] = cpu_error is None
        extra["cpu_load_error"] = cpu_error
    return {
        **base,
        **extra,
        "status": Status.DONE,
        "path": ctx.dest,
        "size_bytes": ctx.dest.stat().st_size,
        "reason": None,
    }


def optimize_model(
    src: Path,
    variants: list[str],
    out_dir: Path,
    *,
    spec: dict[str, Any] | None = None,
    recipe: Any | None = None,
    io: Any | None = None,
    recipe_error: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Build every ONNX variant from ``src`` into ``out_dir/<variant>/model.onnx``.

    Engine variants (``trt_*``) are compile's: they are not built here, but the Q/DQ candidate an engine is
    built from is (see :func:`onnx_variants`).

    Raises:
        StepError: unknown variant names, or every variant built here failed (skipped ones do not count).
    """
    check_variants(variants)
    shared: dict[str, Any] = {}
    results = {}
    for v in onnx_variants(variants):
        ctx = VariantContext(
            src, out_dir / v / "model.onnx", spec or {}, recipe, io, out_dir / v / "work", recipe_error, shared=shared
        )
        results[v] = build_candidate(v, ctx)
    statuses = {r["status"] for r in results.values()}
    if results and "done" not in statuses and "failed" in statuses:
        reasons = "; ".join(f"{v}: {r['reason']}" for v, r in results.items())
        raise StepError(f"every variant failed: {reasons}")
    return results


def load_recipe(spec: dict[str, Any], export: dict[str, Any]) -> tuple[Any | None, Any | None, str | None]:
    """``(recipe, io, error)``: the recipe object and export's I/O, or the reason they are unavailable."""
    try:
        from modelops.recipes import IOSpec, get_recipe

        return get_recipe(spec["recipe"]), IOSpec.from_dict(export["io"], export.get("max_batch_size")), None
    except Exception as exc:  # noqa: BLE001 - only the variants that need the recipe fail
        return None, None, f"recipe {spec.get('recipe')!r} unavailable: {first_line(exc)}"


def run(spec: dict[str, Any], storage: Storage) -> dict[str, Any]:
    """The step: download export's ONNX, build the candidates, upload them (and their extra artifacts)."""
    from modelops.steps import llm_build

    llm = llm_build.generative_recipe(spec)
    if llm is not None:  # a generative recipe: the LLM path (HF source, ORT GenAI builds, next-token gate)
        return llm_build.optimize(spec, storage)
    variants = list(spec.get("variants") or [])
    check_variants(variants)
    export = load_result(storage, spec, "export")
    recipe, io, recipe_error = load_recipe(spec, export)
    recipe = bind(recipe, spec, storage)  # the run's rows (resolve's eval_data) for scoring and calibration
    with tempfile.TemporaryDirectory(prefix="modelops-optimize-") as tmp:
        src = storage.download_file(export["outputs"]["onnx"], Path(tmp) / "source.onnx")
        results = optimize_model(
            src, variants, Path(tmp) / "out", spec=spec, recipe=recipe, io=io, recipe_error=recipe_error
        )
        candidates: dict[str, Any] = {}
        for variant, res in results.items():
            prefix = variant_prefix(spec, variant)
            path, artifacts = res.pop("path"), res.pop("artifacts")
            res["onnx"] = storage.upload_file(path, join(prefix, "model.onnx")) if path else None
            res["artifacts"] = {
                name: storage.upload_file(local, join(prefix, name))
                for name, local in artifacts.items()
                if local.is_file()
            }
            candidates[variant] = res
        source_size = src.stat().st_size
    return {"status": Status.DONE, "candidates": candidates, "source_size_bytes": source_size}


if __name__ == "__main__":
    main("optimize", run)
