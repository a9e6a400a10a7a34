"""The benchmark step on a GPU Triton (``serving_device: gpu``): native backends, perf_analyzer, same result shape.

Each target is rendered with the GPU renderers of :mod:`modelops.serving.triton.model_dir` and served by its own
tritonserver (the NGC image's binary and backends: ``MODELOPS_TRITONSERVER`` / ``MODELOPS_TRITON_BACKENDS``):

- the baseline: export's fp32 ONNX on ``onnxruntime_onnx`` (CUDA execution provider), the reference every GPU
  candidate is compared with in the same run;
- ONNX candidates on ``onnxruntime_onnx`` (ModelOpt Q/DQ ones with the TensorRT execution accelerator,
  :func:`~modelops.serving.triton.model_dir.gpu_accelerator`);
- TensorRT engines (the compile step's plans) on ``tensorrt_plan`` as ``1/model.plan``: the plan built for this GPU's
  compute capability, with ``max_batch_size`` no larger than its optimization profile allows.

Each answers export's sample inputs first (compared with what validate's run gave: the smoke check), then
perf_analyzer measures it (the same :func:`~modelops.evaluation.perf.run_perf_analyzer` and CSV parser as on CPU).
Text-in recipes (a tokenizer inside the python-backend model) have no native-backend rendering: refused in one line.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from modelops.contracts.naming import slug
from modelops.contracts.status import Status
from modelops.contracts.variants import Device, get_variant
from modelops.evaluation.perf import PerfAnalyzerError, PerfSettings, run_perf_analyzer
from modelops.serving.triton.local_server import TritonProcess, TritonStartError
from modelops.serving.triton.model_dir import (
    NATIVE_BACKENDS,
    ONNXRUNTIME_BACKEND,
    TENSORRT_BACKEND,
    build_model_dir,
    engine_max_batch,
    gpu_accelerator,
)
from modelops.settings import Settings
from modelops.steps._common import StepError, first_line, load_result, result_uri, upload_measurement
from modelops.storage import Storage

log = logging.getLogger("modelops.steps.gpu_bench")

BASELINE = "baseline"
BASELINE_KIND = "onnxruntime_onnx"  # export's ONNX on the GPU (CUDA EP)
SMOKE_TOLERANCE = {ONNXRUNTIME_BACKEND: 1e-3, TENSORRT_BACKEND: 1e-2}  # engines: tactics vary with the batch
VARIABLE_DIM = 8


class SmokeCheckFailed(Exception):
    """Triton answered, but not what validate's run of the same candidate answered."""


def _shapes(io: dict[str, Any]) -> dict[str, list[int]] | None:
    shapes = {t["name"]: [VARIABLE_DIM if d < 0 else d for d in t["dims"]] for t in io["inputs"] if -1 in t["dims"]}
    return shapes or None


def measure(
    variant: str,
    model_dir: Path,
    *,
    io: dict[str, Any],
    perf: PerfSettings,
    samples: dict[str, np.ndarray],
    expected: dict[str, np.ndarray] | None,
    tolerance: float,
    work: Path,
    tools: Settings | None = None,
) -> dict[str, Any]:
    """Serve a rendered model directory in its own tritonserver, smoke-check it, run perf_analyzer; never raises
    for server or perf failures (status failed with the reason)."""
    from modelops.serving.triton.model_dir import rendered_target

    started = time.time()
    name = model_dir.name
    backend, device = rendered_target(model_dir)
    triton_log, pa_log, csv_path = work / "triton.log", work / "perf_analyzer.log", work / "perf.csv"
    kind = NATIVE_BACKENDS[backend][0] if backend in NATIVE_BACKENDS else backend  # the platform: tensorrt_plan
    out: dict[str, Any] = {"status": Status.FAILED, "kind": kind, "backend": backend, "device": device,
                           "points": [], "csv_path": None, "log_paths": [triton_log, pa_log], "reason": None,
                           "triton_max_abs_diff": None, "notes": []}  # fmt: skip
    try:
        with TritonProcess(model_dir.parent, [name], log_path=triton_log, settings=tools) as triton:
            if expected is not None:
                got = triton.infer(name, samples)
                diff = max(float(np.max(np.abs(got[k].astype(np.float64) - v))) for k, v in expected.items())
                out["triton_max_abs_diff"] = diff
                if not diff <= tolerance:
                    raise SmokeCheckFailed(f"Triton's answers differ from validate's run of {variant} by {diff:.3g}")
            url = triton.grpc_url if perf.protocol == "grpc" else triton.http_url
            out["points"] = run_perf_analyzer(model=name, url=url, settings=perf, csv_path=csv_path, tools=tools,
                                              shapes=_shapes(io), log_path=pa_log, notes=out["notes"])  # fmt: skip
            out["csv_path"], out["status"] = csv_path, Status.DONE
    except TritonStartError as exc:
        out["reason"] = f"Triton could not serve {variant}: {exc.reason}"
    except (PerfAnalyzerError, SmokeCheckFailed) as exc:
        out["reason"] = str(exc)
    except RuntimeError as exc:  # the smoke inference was refused
        out["reason"] = first_line(exc)
    out["seconds"] = round(time.time() - started, 2)
    log.info("%s (%s on %s): %s %s", variant, backend, device, out["status"], out["reason"] or out["points"])
    return out


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}


def _engine(storage: Storage, spec: dict[str, Any], variant: str) -> dict[str, Any]:
    if not storage.exists(result_uri(spec, "compile")):
        return {}
    return (load_result(storage, spec, "compile").get("engines") or {}).get(variant) or {}


def benchmark_gpu(
    spec: dict[str, Any],
    storage: Storage,
    export: dict[str, Any],
    validate: dict[str, Any],
    optimize: dict[str, Any],
    perf: PerfSettings,
    work: Path,
    *,
    tools: Settings | None = None,
    compute_capability: str | None = None,
) -> dict[str, Any]:
    """The benchmark step's result on a GPU Triton (same contract as on CPU: ``status``, ``variants``, ``settings``).

    Args:
        spec: the run spec (``serving_device: gpu``).
        storage: artifact access.
        export, validate, optimize: the earlier steps' results.
        perf: perf_analyzer settings.
        work: a scratch directory.
        tools: tool paths (tritonserver, its backends, perf_analyzer); default from the environment.
        compute_capability: this GPU's (picks the engine plan); default ``nvidia-smi``'s.

    Raises:
        StepError: a text-in recipe, or the baseline could not be served (the step fails).
    """
    from modelops.evaluation.trt_gate import local_compute_capability, pick_plan

    if export.get("serving_io"):
        raise StepError("text-in recipes are served by the python backend (tokenizer in model.py); the GPU "
                        "benchmark renders native backends only: use serving_device cpu for this recipe")  # fmt: skip
    cc = compute_capability or local_compute_capability()
    io, mbs = export["io"], int(export["max_batch_size"])
    all_samples = _npz(storage.download_file(export["outputs"]["samples"], work / "samples.npz"))
    samples = {t["name"]: all_samples[t["name"]] for t in io["inputs"]}
    targets: list[tuple[str, str, Path, dict[str, Any], dict[str, np.ndarray]]] = []
    source = storage.download_file(export["outputs"]["onnx"], work / "models" / BASELINE / "model.onnx")
    expected_src = {t["name"]: all_samples[f"output:{t['name']}"] for t in io["outputs"]}
    targets.append((BASELINE, ONNXRUNTIME_BACKEND, source, {"max_batch_size": mbs}, expected_src))
    variants: dict[str, Any] = {}
    for variant, verdict in validate["candidates"].items():
        if verdict.get("status") != Status.ACCEPTED:
            continue
        info = get_variant(variant)
        backend = info.backend_on(Device.GPU)
        if backend is None:  # e.g. an OpenVINO candidate
            variants[variant] = {"status": Status.SKIPPED, "kind": str(info.runtime), "points": [],
                                 "reason": info.not_servable_reason(Device.GPU)}  # fmt: skip
            continue
        local = work / "models" / variant
        if backend == TENSORRT_BACKEND:
            engine = _engine(storage, spec, variant)
            uri = pick_plan(engine, cc)
            if not uri:
                variants[variant] = {"status": Status.SKIPPED, "kind": "tensorrt_plan", "points": [],
                                     "reason": f"compile built no {variant} plan"}  # fmt: skip
                continue
            path = storage.download_file(uri, local / "model.plan")
            options = {"max_batch_size": engine_max_batch(engine, mbs), "plan": uri}
        else:
            path = storage.download_file(optimize["candidates"][variant]["onnx"], local / "model.onnx")
            options = {"max_batch_size": mbs, "accelerator": gpu_accelerator(variant)}
        expected = _npz(storage.download_file(verdict["sample_outputs"], local / "sample.npz"))
        targets.append((variant, backend, path, options, expected))
    for variant, backend, path, options, expected in targets:
        name = slug(variant).replace("-", "_")
        model_dir = build_model_dir(work / "runs" / variant / "repo" / name, name=name, kind="onnxruntime",
                                    model_path=path, io=io, max_batch_size=options["max_batch_size"],
                                    backend=backend, device="gpu", accelerator=options.get("accelerator"))  # fmt: skip
        res = measure(variant, model_dir, io=io, perf=perf, samples=samples, expected=expected,
                      tolerance=SMOKE_TOLERANCE[backend], work=work / "runs" / variant, tools=tools)  # fmt: skip
        res.update({k: v for k, v in options.items() if k in ("plan", "max_batch_size")})
        variants[variant] = upload_measurement(storage, spec, variant, res)
        if variant == BASELINE and res["status"] != Status.DONE:
            raise StepError(f"baseline ({BASELINE_KIND} on the GPU Triton) failed: {res['reason']}")
    settings = {**perf.as_dict(), "max_batch_size": mbs, "instance_count": 1, "device": "gpu",
                "compute_capability": cc, "baseline_kind": BASELINE_KIND}  # fmt: skip
    return {"status": Status.DONE, "variants": variants, "settings": settings}
