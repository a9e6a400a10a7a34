"""Compile step: TensorRT engines (``model.plan``) from the candidate ONNX models, on the GPU they will serve on.

``python -m modelops.steps.compile --spec spec.json --result result.json``. The compile variants and
what each is built from are the registry's (:data:`modelops.contracts.variants.VARIANTS`); how each is
built is data here (:data:`ENGINES`): ``trt_fp16`` from export's fp32 ONNX with the FP16 flag;
``trt_int8`` and ``trt_fp8`` from optimize's ModelOpt Q/DQ candidates (explicit quantization: the scales
are in the graph, no calibrator). Each engine gets one optimization profile from the model's dynamic shapes (batch
min/opt/max from the spec, sequence-like dims from the spec or recipe), reuses a timing cache kept under
the run prefix, and is tagged with the GPU product and TensorRT version it was built with (result and
``engine.json`` sidecar), since a plan only runs on that GPU model and TensorRT version.

Engines per GPU product: each engine records ``gpu_product`` (the GPU Feature Discovery ``nvidia.com/gpu.product``
label value of the node it was built on, the one the serving pods select) and ``compute_capability``. The plan is
kept at ``<variant>/<gpu product>/model.plan``, and ``plans`` maps compute capability -> plan URI over every compile
run of this run prefix (one per GPU product, e.g. one KPO per node pool): a later run keeps the earlier runs' plans
of other capabilities, so publish can ship one engine per capability (``cc_model_filenames``).

Exit 99 (skipped) when no engine variant is requested, no NVIDIA GPU is visible or the ``tensorrt`` package
is missing: that is the CPU machine. ``tensorrt`` is imported only inside :func:`run`.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from modelops.contracts.status import Status
from modelops.contracts.variants import BuildStep, built_by, get_variant
from modelops.optimization.gpu import GpuInfo, detect_gpu
from modelops.steps._common import (
    StepSkipped,
    first_line,
    load_result,
    main,
    result_uri,
    step_prefix,
    variant_prefix,
)
from modelops.storage import Storage, join

log = logging.getLogger("modelops.steps.compile")

Triple = tuple[int, int, int]
DEFAULT_OPT_BATCH = 8
DEFAULT_VARIABLE_DIM: Triple = (1, 128, 256)  # sequence length of text models: min/opt/max
DEFAULT_WORKSPACE_GIB = 4
FP8_MIN_COMPUTE_CAPABILITY = (8, 9)  # Ada / Hopper and newer


@dataclass(frozen=True)
class EngineRecipe:
    """How one engine variant is built.

    Attributes:
        precision: fp16 | int8 | fp8 (recorded; the flags decide).
        strongly_typed: build a STRONGLY_TYPED network (tensor types from the ONNX graph, no precision flags).
        flags: ``trt.BuilderFlag`` names set on the builder config (weakly typed networks only).
        fallback_flags: flags used instead when this TensorRT has no STRONGLY_TYPED network flag (< 9).
        min_compute_capability: GPUs below it cannot run this precision: the engine is skipped.
    """

    precision: str
    strongly_typed: bool = False
    flags: tuple[str, ...] = ()
    fallback_flags: tuple[str, ...] = ()
    min_compute_capability: tuple[int, int] = (0, 0)


ENGINES: dict[str, EngineRecipe] = {
    # fp32 ONNX; TensorRT picks fp16 kernels where faster
    "trt_fp16": EngineRecipe("fp16", flags=("FP16",)),
    # INT8 Q/DQ with an fp32 remainder: weakly typed, INT8 for the Q/DQ-bracketed layers, FP16 for the rest
    "trt_int8": EngineRecipe("int8", flags=("INT8", "FP16")),
    # FP8 Q/DQ with an fp16 remainder: strongly typed, as ModelOpt recommends (trtexec --stronglyTyped)
    "trt_fp8": EngineRecipe(
        "fp8",
        strongly_typed=True,
        fallback_flags=("FP8", "FP16"),
        min_compute_capability=FP8_MIN_COMPUTE_CAPABILITY,
    ),
}


# ------------------------------------------------------------------------------------------ shapes


def profile_shapes(shape: Sequence[int], batched: bool, batch: Triple, variable: Triple) -> tuple[tuple[int, ...], ...]:
    """``(min, opt, max)`` shapes for one network input whose dynamic dims are ``-1``.

    The first dim of a batched model takes ``batch``; any other dynamic dim (sequence length) takes ``variable``;
    static dims stay as they are.
    """
    out = []
    for which in range(3):
        dims = []
        for axis, dim in enumerate(shape):
            if dim >= 0:
                dims.append(int(dim))
            else:
                dims.append((batch if batched and axis == 0 else variable)[which])
        out.append(tuple(dims))
    return tuple(out)


def batch_triple(spec: dict[str, Any], max_batch_size: int) -> Triple:
    """min/opt/max batch: ``engine.min_batch`` (1) / ``engine.opt_batch`` (8) / ``engine.max_batch`` (the model's
    ``max_batch_size``), clipped to be ordered."""
    engine = spec.get("engine") or {}
    top = max(1, int(engine.get("max_batch") or max_batch_size or 1))
    low = max(1, min(int(engine.get("min_batch") or 1), top))
    return low, max(low, min(int(engine.get("opt_batch") or DEFAULT_OPT_BATCH), top)), top


def variable_triple(spec: dict[str, Any], recipe: Any | None = None) -> Triple:
    """min/opt/max of the non-batch dynamic dims: ``spec.engine.variable_dim`` or the recipe's sequence lengths."""
    engine = spec.get("engine") or {}
    if engine.get("variable_dim"):
        low, opt, top = (int(x) for x in engine["variable_dim"])
        return low, opt, top
    top = int((recipe.max_sequence_length if recipe is not None else None) or DEFAULT_VARIABLE_DIM[2])
    opt = min(int((recipe.opt_sequence_length if recipe is not None else None) or DEFAULT_VARIABLE_DIM[1]), top)
    return 1, opt, top


# ------------------------------------------------------------------------------------------ build


@dataclass
class EngineBuild:
    """What :func:`build_engine` did (recorded in the result and the sidecar)."""

    precision: str
    strongly_typed: bool
    flags: list[str]
    profiles: dict[str, list[list[int]]]
    plan_bytes: int
    build_seconds: float
    tensorrt: str


class EngineBuildError(Exception):
    """TensorRT could not parse or build; the message carries its first errors."""


def _network_flags(trt: Any, strongly_typed: bool) -> int:
    kinds = trt.NetworkDefinitionCreationFlag
    flags = 0
    if hasattr(kinds, "EXPLICIT_BATCH"):  # required before TensorRT 10, deprecated (always on) since
        flags |= 1 << int(kinds.EXPLICIT_BATCH)
    if strongly_typed:
        flags |= 1 << int(kinds.STRONGLY_TYPED)
    return flags


def build_engine(
    trt: Any,
    onnx_path: Path,
    plan_path: Path,
    recipe: EngineRecipe,
    *,
    batched: bool,
    batch: Triple,
    variable: Triple,
    timing_cache: Path,
    workspace_gib: float = DEFAULT_WORKSPACE_GIB,
) -> EngineBuild:
    """Parse ``onnx_path`` with TensorRT's ONNX parser and serialize an engine to ``plan_path``.

    The timing cache file is read (when present), given to the builder config, and written back after the
    build, so the next engine (or the next run on the same GPU model) skips the kernel timings it already did.

    Raises:
        EngineBuildError: parse errors, or the builder returned no engine.
    """
    started = time.time()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = recipe.strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    network = builder.create_network(_network_flags(trt, strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(
            f"TensorRT cannot parse {onnx_path.name}: {'; '.join(errors[:3]) or 'no error reported'}"
        )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    flags = [] if strongly_typed else list(recipe.flags if not recipe.strongly_typed else recipe.fallback_flags)
    for name in flags:
        config.set_flag(getattr(trt.BuilderFlag, name))

    profile = builder.create_optimization_profile()
    profiles: dict[str, list[list[int]]] = {}
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        shapes = profile_shapes(tuple(tensor.shape), batched, batch, variable)
        profile.set_shape(tensor.name, *shapes)
        profiles[tensor.name] = [list(s) for s in shapes]
    config.add_optimization_profile(profile)

    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT built no {recipe.precision} engine from {onnx_path.name} (see the build log)")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return EngineBuild(
        precision=recipe.precision,
        strongly_typed=strongly_typed,
        flags=flags,
        profiles=profiles,
        plan_bytes=plan_path.stat().st_size,
        build_seconds=round(time.time() - started, 2),
        tensorrt=str(trt.__version__),
    )


def trtexec_command(build: EngineBuild, onnx_name: str, timing_cache_name: str) -> str:
    """The equivalent ``trtexec`` command line, for the reproduce script next to the plan."""
    flag_args = {"FP16": "--fp16", "INT8": "--int8", "FP8": "--fp8", "BF16": "--bf16"}
    args = ["trtexec", f"--onnx={onnx_name}", "--saveEngine=model.plan", f"--timingCacheFile={timing_cache_name}"]
    args += ["--stronglyTyped"] if build.strongly_typed else [flag_args[f] for f in build.flags if f in flag_args]
    for key, which in (("--minShapes", 0), ("--optShapes", 1), ("--maxShapes", 2)):
        shapes = ",".join(f"{name}:{'x'.join(map(str, s[which]))}" for name, s in build.profiles.items())
        args.append(f"{key}={shapes}")
    return " ".join(shlex.quote(a) for a in args)


# ------------------------------------------------------------------------------------------ step


def gfd_product(gpu_name: str) -> str:
    """The GPU Feature Discovery ``nvidia.com/gpu.product`` value of a GPU named ``gpu_name`` by NVML/nvidia-smi.

    GFD writes the NVML name with blanks replaced by ``-`` (``NVIDIA A100-SXM4-40GB`` -> ``NVIDIA-A100-SXM4-40GB``);
    characters a label value cannot hold become ``-`` too.
    """
    return re.sub(r"[^A-Za-z0-9_.-]", "-", gpu_name.strip()).strip("-_.") or "unknown"


def _previous_plans(storage: Storage, spec: dict[str, Any]) -> dict[str, dict[str, str]]:
    """variant -> {compute capability: plan URI} of an earlier compile run on this run prefix (another GPU)."""
    if not storage.exists(result_uri(spec, "compile")):
        return {}
    try:
        previous = load_result(storage, spec, "compile")
    except Exception as exc:  # noqa: BLE001 - an unreadable earlier result only loses its plans
        log.warning("earlier compile result not read: %s", first_line(exc))
        return {}
    return {v: dict(e.get("plans") or {}) for v, e in (previous.get("engines") or {}).items()}


def requested_engines(spec: dict[str, Any]) -> list[str]:
    """The requested variants the registry says compile builds, in registry order."""
    return built_by(BuildStep.COMPILE, list(spec.get("variants") or []))


def engine_source(
    variant: str, export: dict[str, Any], optimize: dict[str, Any] | None
) -> tuple[str | None, str | None]:
    """``(onnx uri, None)`` to build from, or ``(None, reason)`` when the source candidate is not there."""
    source = get_variant(variant).source
    if source is None:
        return export["outputs"]["onnx"], None
    cand = ((optimize or {}).get("candidates") or {}).get(source)
    if not cand:
        return None, f"needs the {source} candidate, which optimize did not build"
    if cand.get("status") != Status.DONE or not cand.get("onnx"):
        return None, f"source candidate {source} is {cand.get('status')}: {cand.get('reason')}"
    return cand["onnx"], None


def _load_optimize(storage: Storage, spec: dict[str, Any]) -> dict[str, Any] | None:
    if not storage.exists(result_uri(spec, "optimize")):
        return None  # trt_fp16 only needs export; a result that breaks its contract still fails the step
    return load_result(storage, spec, "optimize")


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise StepSkipped(
            f"TensorRT Python package not available ({first_line(exc)}): engines are built in the GPU image"
        )
    return trt


def compile_engines(
    spec: dict[str, Any], storage: Storage, trt: Any, gpu: GpuInfo, work: Path, recipe: Any | None = None
) -> dict[str, Any]:
    """Build every requested engine; per-engine status done|failed|skipped, the others continue."""
    export = load_result(storage, spec, "export")
    optimize = _load_optimize(storage, spec)
    batched = int(export.get("max_batch_size") or 0) > 0
    batch = batch_triple(spec, int(export.get("max_batch_size") or 1)) if batched else (1, 1, 1)
    variable = variable_triple(spec, recipe)
    cache_name = f"timing-{gpu.slug()}-trt{trt.__version__}.cache"
    cache_prefix = (spec.get("engine") or {}).get("timing_cache_prefix") or step_prefix(spec, "compile")
    cache_uri = join(cache_prefix, cache_name)
    timing_cache = work / cache_name
    if storage.exists(cache_uri):
        storage.download_file(cache_uri, timing_cache)
    tag = {
        "gpu": gpu.name,
        "gpu_product": gfd_product(gpu.name),
        "compute_capability": gpu.compute_capability,
        "driver": gpu.driver,
        "tensorrt": trt.__version__,
    }
    previous = _previous_plans(storage, spec)
    engines: dict[str, Any] = {}
    for variant in requested_engines(spec):
        recipe_ = ENGINES[variant]
        uri, reason = engine_source(variant, export, optimize)
        capability = gpu.capability()
        if uri and capability is not None and capability < recipe_.min_compute_capability:
            need = ".".join(map(str, recipe_.min_compute_capability))
            uri, reason = (
                None,
                f"{recipe_.precision} needs compute capability >= {need}; {gpu.name} has {gpu.compute_capability}",
            )
        if uri is None:
            engines[variant] = {"status": Status.SKIPPED, "reason": reason, "plan": None, **tag,
                                "plans": previous.get(variant, {})}  # fmt: skip
            continue
        local = storage.download_file(uri, work / variant / "model.onnx")
        plan = work / variant / "model.plan"
        try:
            build = build_engine(
                trt, local, plan, recipe_, batched=batched, batch=batch, variable=variable, timing_cache=timing_cache
            )
        except Exception as exc:  # noqa: BLE001 - one engine fails alone
            log.warning("engine %s failed: %s", variant, first_line(exc))
            engines[variant] = {"status": Status.FAILED, "reason": first_line(exc), "plan": None, "source_onnx": uri,
                                **tag, "plans": previous.get(variant, {})}  # fmt: skip
            continue
        prefix = join(variant_prefix(spec, variant), tag["gpu_product"])
        sidecar = {**tag, **asdict(build), "variant": variant, "source_onnx": uri, "built_at": time.time()}
        script = f"#!/usr/bin/env bash\n# Rebuild {variant} on a {gpu.name} with TensorRT {trt.__version__}\n"
        script += f"set -euo pipefail\n{trtexec_command(build, 'model.onnx', cache_name)}\n"
        storage.write_bytes(join(prefix, "reproduce_engine.sh"), script.encode())
        plan_uri = storage.upload_file(plan, join(prefix, "model.plan"))
        plans = {**previous.get(variant, {}), **({gpu.compute_capability: plan_uri} if gpu.compute_capability else {})}
        engines[variant] = {
            "status": Status.DONE,
            "reason": None,
            "plan": plan_uri,
            "plans": dict(sorted(plans.items())),
            "sidecar": storage.write_json(join(prefix, "engine.json"), sidecar),
            "source_onnx": uri,
            "runtime": get_variant(variant).runtime,
            **tag,
            **asdict(build),
        }
        log.info("engine %s: %d bytes in %.1f s on %s", variant, build.plan_bytes, build.build_seconds, gpu.name)
    if timing_cache.is_file():
        storage.upload_file(timing_cache, cache_uri)
    return {"status": Status.DONE, "engines": engines, **tag, "timing_cache": cache_uri if timing_cache.is_file() else None}


def run(
    spec: dict[str, Any], storage: Storage, *, gpu: GpuInfo | None = None, trt: Any | None = None
) -> dict[str, Any]:
    """The step. Skips (exit 99) without engine variants, without a GPU, or without TensorRT."""
    if not requested_engines(spec):
        raise StepSkipped(f"no TensorRT engine variant requested (known: {', '.join(built_by(BuildStep.COMPILE))})")
    gpu = gpu or detect_gpu()
    if gpu is None:
        raise StepSkipped("no NVIDIA GPU visible (nvidia-smi lists none): TensorRT engines are built on a GPU worker")
    trt = trt or _import_tensorrt()
    recipe = None
    try:
        from modelops.recipes import get_recipe

        recipe = get_recipe(spec["recipe"])
    except Exception as exc:  # noqa: BLE001 - only the sequence-length defaults come from the recipe
        log.info("recipe not loaded (%s); default shape ranges", first_line(exc))
    with tempfile.TemporaryDirectory(prefix="modelops-compile-") as tmp:
        result = compile_engines(spec, storage, trt, gpu, Path(tmp), recipe)
    log.info("engines: %s", json.dumps({v: e["status"] for v, e in result["engines"].items()}))
    return result


if __name__ == "__main__":
    main("compile", run)
