"""TensorRT engines through the accuracy gate: the compile step's plans run on the eval data like any candidate.

validate scores an engine exactly as it scores the ONNX candidates (the recipe's metric vs the source, the
great-expectations suite, NaN/inf), only the runtime differs: the plan is deserialized and run by Polygraphy's
``TrtRunner`` (``polygraphy.backend.trt``: ``EngineFromBytes`` + ``TrtRunner(...).infer(feed_dict)``, numpy in and
out), which drives TensorRT's Python runtime (``trt.Runtime.deserialize_cuda_engine``, an execution context, input
shapes per call) and the CUDA buffers. The GPU worker image installs ``polygraphy`` and ``tensorrt``; without them
(the CPU machine) the engine is skipped with its reason, as before.

Which plan: the one built for this GPU's compute capability (compile's ``plans``), else the last one built
(``plan``). The eval data go in chunks no larger than the engine profile's maximum batch (``engine.json``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from modelops.contracts.status import Status
from modelops.storage import Storage, join

log = logging.getLogger("modelops.evaluation.trt_gate")

DEFAULT_CHUNK = 256
SIDECAR = "engine.json"


def max_profile_batch(sidecar: dict[str, Any] | None, default: int = DEFAULT_CHUNK) -> int:
    """The largest first dim every input's optimization profile allows (``profiles``: name -> [min, opt, max])."""
    profiles = (sidecar or {}).get("profiles") or {}
    tops = [int(shapes[2][0]) for shapes in profiles.values() if shapes and len(shapes) == 3 and shapes[2]]
    return max(1, min([default, *tops]))


def run_engine(plan: Path, inputs: dict[str, np.ndarray], chunk: int | None = None) -> dict[str, np.ndarray]:
    """The engine's outputs on ``inputs`` (rows split in chunks the profile allows), numpy in and out.

    Args:
        plan: the serialized engine (``model.plan``); an ``engine.json`` next to it gives the profile's max batch.
        inputs: input name -> array (first dim = rows).
        chunk: rows per call; None: the profile's maximum batch (or 256 without a sidecar).

    Raises:
        ImportError: Polygraphy/TensorRT are not installed (the CPU machine).
    """
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    if chunk is None:
        side = plan.with_name(SIDECAR)
        chunk = max_profile_batch(json.loads(side.read_text()) if side.is_file() else None)
    rows = int(next(iter(inputs.values())).shape[0])
    parts: dict[str, list[np.ndarray]] = {}
    with TrtRunner(EngineFromBytes(plan.read_bytes())) as runner:
        for start in range(0, rows, chunk):
            feed = {k: np.ascontiguousarray(v[start : start + chunk]) for k, v in inputs.items()}
            for name, value in runner.infer(feed).items():
                parts.setdefault(name, []).append(np.asarray(value).copy())  # the runner reuses its host buffers
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def pick_plan(engine: dict[str, Any], compute_capability: str | None) -> str | None:
    """The plan URI for a GPU of ``compute_capability`` (compile's ``plans``), else the last one built."""
    plans = engine.get("plans") or {}
    if compute_capability and compute_capability in plans:
        return plans[compute_capability]
    return engine.get("plan")


def engine_candidates(
    storage: Storage, compile_result: dict[str, Any] | None, work: Path, compute_capability: str | None = None
) -> tuple[dict[str, Path], dict[str, dict[str, Any]]]:
    """The compile step's built engines downloaded for the gate: ``({variant: local plan}, {variant: provenance})``.

    The plan's ``engine.json`` is downloaded next to it (the profile's max batch). Provenance is what the verdict
    records besides the gate: the ONNX it was built from, GPU product, compute capability and TensorRT version.
    Engines that were not built are left out (validate reports only what exists); a skipped compile gives nothing.
    """
    if not compile_result or compile_result.get("status") != Status.DONE:
        return {}, {}
    plans: dict[str, Path] = {}
    provenance: dict[str, dict[str, Any]] = {}
    for variant, engine in (compile_result.get("engines") or {}).items():
        uri = pick_plan(engine, compute_capability)
        if engine.get("status") != Status.DONE or not uri:
            continue
        local = storage.download_file(uri, work / "engines" / variant / "model.plan")
        sidecar = join(uri.rsplit("/", 1)[0], SIDECAR)
        if storage.exists(sidecar):
            storage.download_file(sidecar, local.with_name(SIDECAR))
        plans[variant] = local
        provenance[variant] = {
            "plan": uri,
            "built_from": engine.get("source_onnx"),
            "gpu_product": engine.get("gpu_product"),
            "compute_capability": next((cc for cc, u in (engine.get("plans") or {}).items() if u == uri),
                                       engine.get("compute_capability")),
            "tensorrt": engine.get("tensorrt"),
        }  # fmt: skip
    return plans, provenance


def not_built(compile_result: dict[str, Any] | None) -> dict[str, str]:
    """variant -> why the compile step built no engine (skipped or failed there), for validate to report."""
    if not compile_result or compile_result.get("status") != Status.DONE:
        return {}
    return {v: f"compile {e.get('status')}: {e.get('reason')}" for v, e in (compile_result.get("engines") or {}).items()
            if e.get("status") != Status.DONE}  # fmt: skip


def built_from_parity(
    storage: Storage, results: dict[str, dict[str, Any]], provenance: dict[str, dict[str, Any]],
    samples: dict[str, np.ndarray], work: Path,
) -> None:  # fmt: skip
    """Each scored engine against the ONNX it was built from, on export's samples (ONNX Runtime on CPU): sets
    ``built_from_max_abs_diff`` in its result (None when that ONNX does not run here, e.g. FP8 Q/DQ)."""
    from modelops.optimization import ort_cpu

    for variant, info in provenance.items():
        res = results.get(variant) or {}
        if not res.get("sample_outputs_path") or not info.get("built_from"):
            continue
        try:
            onnx = storage.download_file(info["built_from"], work / "built_from" / variant / "model.onnx")
            ref = ort_cpu.run(onnx, samples)
            with np.load(res["sample_outputs_path"]) as got:
                diffs = [float(np.max(np.abs(got[k].astype(np.float64) - v))) for k, v in ref.items() if k in got]
            res["built_from_max_abs_diff"] = max(diffs) if diffs else None
        except Exception as exc:  # noqa: BLE001 - informative: the gate has already judged the engine
            log.warning("%s: the ONNX it was built from does not run here (%s)", variant, exc)
            res["built_from_max_abs_diff"] = None


def local_compute_capability() -> str | None:
    """This machine's GPU compute capability (``nvidia-smi``), None without a GPU."""
    from modelops.optimization.gpu import detect_gpu

    gpu = detect_gpu()
    return gpu.compute_capability if gpu else None
