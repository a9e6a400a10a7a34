"""Benchmark step: serve the source-framework baseline and every accepted candidate in one Triton, measure each.

One tritonserver with explicit model control is started on free ports for the step, and every variant's model
directory is written to its local repository and loaded through the repository API at once (the loads overlap).
Then per variant (sequentially): smoke-check its answers on export's sample inputs, run perf_analyzer with the
default configuration, unload it. Then the contenders (the candidates within :data:`CONTENDER_FRACTION` of the best
one's throughput) get the configuration search, in the same server. ``perf.csv``, the search's CSV and the server log go to ``<run prefix>/<variant>/``.
A candidate whose model fails to load is marked failed; a failing baseline fails the step.
"""

from __future__ import annotations

import logging
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from modelops.contracts.status import Status
from modelops.contracts.variants import Device, get_variant
from modelops.evaluation.config_search import ServingConfig
from modelops.evaluation.perf import PerfAnalyzerError, PerfSettings, run_perf_analyzer
from modelops.evaluation.triton_bench import (
    BASELINE,
    CONTENDER_FRACTION,
    Target,
    contenders,
    model_name,
    perf_shapes,
    perf_url,
    probe_window_ms,
    search_configs,
    search_target,
    unload_quietly,
)
from modelops.serving.triton.local_server import TritonProcess, TritonStartError
from modelops.serving.triton.model_dir import ONNX_FILE_KINDS, build_model_dir, runtime_parameters
from modelops.settings import Settings
from modelops.steps._common import StepError, first_line, load_result, main, upload_measurement, variant_prefix
from modelops.storage import Storage, join

log = logging.getLogger("modelops.steps.benchmark")

SMOKE_TOLERANCE = 1e-3


class SmokeCheckFailed(Exception):
    """Triton answered, but not what the candidate answered under ONNX Runtime/torch in validate/export."""


def benchmark_target(
    target: Target,
    *,
    io: dict[str, Any],
    max_batch_size: int,
    perf: PerfSettings,
    work: Path,
    samples: dict[str, np.ndarray] | None = None,
    tools: Settings | None = None,
    search_budget_s: float = 0.0,
    slo_ms: float = 100.0,
    server: TritonProcess | None = None,
    preloaded: bool = False,
) -> dict[str, Any]:
    """Serve one target in Triton and measure it; never raises for server/perf failures.

    Without ``server`` the target gets a fresh Triton of its own; with one (a started :class:`TritonProcess` with
    explicit model control, see :func:`run`), the target's model is written into that server's repository, loaded
    through the repository API, measured, and unloaded again, so one tritonserver serves the step's targets in turn.

    ``preloaded``: :func:`preload` already wrote and loaded the target's model in ``server``.

    With ``search_budget_s`` > 0 the serving configuration is then searched in the same Triton (:func:`search_configs`)
    and ``points``/``config`` are those of the better of the default and the searched configuration.

    Returns:
        ``{"status", "kind", "points", "config", "configs", "csv_path", "log_paths", "reason", "triton_max_abs_diff",
        "window_ms", "seconds"}`` (+ ``config_search`` after a search); ``window_ms`` is the perf_analyzer window
        :func:`probe_window_ms` chose.
    """
    started = time.time()
    name = model_name(target)
    vdir = work / target.variant
    repo = Path(server.repository) if server is not None else vdir / "repo"
    triton_log = server.log_path if server is not None else vdir / "triton.log"
    pa_log, csv_path = vdir / "perf_analyzer.log", vdir / "perf.csv"
    vdir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {
        "status": Status.FAILED,
        "kind": target.kind,
        "points": [],
        "csv_path": None,
        "log_paths": [triton_log, pa_log],
        "reason": None,
        "triton_max_abs_diff": None,
        "notes": [],
    }
    if not preloaded:
        write_model_dir(target, repo, io=io, max_batch_size=max_batch_size, perf=perf)
    try:
        with ExitStack() as serving:
            if server is None:
                triton = serving.enter_context(TritonProcess(repo, [name], log_path=triton_log, settings=tools))
            else:
                triton = server
                serving.callback(unload_quietly, server, name)
                if not preloaded:
                    server.load_model(name)
            if samples is not None and target.expected is not None:
                got = triton.infer(name, samples)
                diff = max(float(np.max(np.abs(got[k] - v))) for k, v in target.expected.items())
                out["triton_max_abs_diff"] = diff
                if not diff <= SMOKE_TOLERANCE:
                    raise SmokeCheckFailed(f"Triton's answers differ from ONNX Runtime's by {diff:.3g}")
            window = probe_window_ms(triton, name, perf=perf, io=io, tools=tools, work=vdir, log_path=pa_log)
            out["window_ms"] = window
            out["points"] = run_perf_analyzer(
                model=name,
                url=perf_url(triton, perf),
                settings=perf.model_copy(update={"measurement_interval_ms": window}),
                csv_path=csv_path,
                tools=tools,
                shapes=perf_shapes(io),
                log_path=pa_log,
                notes=out["notes"],
            )
            out["csv_path"] = csv_path
            default = ServingConfig(threads=perf.threads, max_batch_size=max_batch_size)
            out["config"], out["configs"] = default.as_dict(), [{"config": default.as_dict(), "points": out["points"]}]
            if search_budget_s > 0:
                search_configs(out, triton, target, name=name, model_dir=repo / name, io=io, perf=perf,
                               url=perf_url(triton, perf), tools=tools, work=vdir, budget_s=search_budget_s,
                               slo_ms=slo_ms, warm_inputs=samples)  # fmt: skip
            out["status"] = "done"
    except TritonStartError as exc:
        out["reason"] = f"Triton could not serve {target.variant}: {exc.reason}"
    except (PerfAnalyzerError, SmokeCheckFailed) as exc:
        out["reason"] = str(exc)
    except RuntimeError as exc:  # e.g. the smoke inference itself was refused
        out["reason"] = first_line(exc)
    out["seconds"] = round(time.time() - started, 2)
    log.info("%s (%s): %s %s", target.variant, target.kind, out["status"], out["reason"] or out["points"])
    return out


def write_model_dir(target: Target, repo: Path, *, io: dict[str, Any], max_batch_size: int, perf: PerfSettings) -> None:
    """``<repo>/<model name>``: the target's Triton model directory with the default configuration."""
    build_model_dir(
        repo / model_name(target),
        name=model_name(target),
        kind=target.kind,
        model_path=target.model_path,
        io=io,
        max_batch_size=max_batch_size,
        threads=perf.threads,
        assets=target.assets,
        parameters=runtime_parameters(target.variant),  # e.g. OpenVINO's engine and precision hint
    )


def preload(server: TritonProcess, targets: list[Target], *, io: dict[str, Any], max_batch_size: int,
            perf: PerfSettings) -> set[str]:  # fmt: skip
    """Write every target's model directory and load them all at once, before anything is measured: Triton loads
    models in parallel, so the candidates' loads overlap the baseline's (a python stub importing torch, 6-14 s
    here). Returns the variants that loaded; one that did not is loaded again by :func:`benchmark_target`, which
    reports why it fails."""
    from concurrent.futures import ThreadPoolExecutor

    def load(target: Target) -> str | None:
        try:
            write_model_dir(target, Path(server.repository), io=io, max_batch_size=max_batch_size, perf=perf)
            server.load_model(model_name(target))
            return target.variant
        except (TritonStartError, RuntimeError, OSError) as exc:
            log.info("preloading %s failed (measured alone next): %s", target.variant, first_line(exc))
            return None

    started = time.time()
    with ThreadPoolExecutor(max_workers=max(1, len(targets))) as pool:
        loaded = {v for v in pool.map(load, targets) if v is not None}
    log.info("loaded %d of %d targets together in %.1f s", len(loaded), len(targets), time.time() - started)
    return loaded


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}


def json_ready(array: np.ndarray) -> np.ndarray:
    """UTF-8 bytes (npz keeps text as ``S``) -> object array of str; other arrays unchanged."""
    if array.dtype.kind == "S":
        return np.char.decode(array, "utf-8").astype(object)
    return array.astype(object) if array.dtype.kind == "U" else array


def _serving_inputs(
    storage: Storage, export: dict[str, Any], work: Path
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray], Path, Path]:
    """For recipes whose clients send other tensors than the ONNX model takes (text): what Triton sees.

    Returns ``(serving_io, client samples, source outputs on them, assets dir, perf_analyzer input JSON)``.
    BYTES samples become object arrays of str (the JSON that ``TritonProcess.infer`` sends).
    """
    outputs, io = export["outputs"], export["serving_io"]
    npz = _load_npz(storage.download_file(outputs["serving_samples"], work / "serving_samples.npz"))
    samples = {t["name"]: json_ready(npz[t["name"]]) for t in io["inputs"]}
    expected = {t["name"]: npz[f"output:{t['name']}"] for t in io["outputs"]}
    assets = storage.download_dir(outputs["serving_assets"], work / "serving_assets")
    perf_data = storage.download_file(outputs["perf_input_data"], work / "perf_input_data.json")
    return io, samples, expected, assets, perf_data


def run(spec: dict[str, Any], storage: Storage) -> dict[str, Any]:
    """The step: baseline first (its failure fails the step), then every accepted candidate."""
    from modelops.steps import llm_build, llm_eval

    llm = llm_build.generative_recipe(spec)
    if llm is not None:  # a generative recipe: the LLM path (HF source, ORT GenAI builds, next-token gate)
        return llm_eval.benchmark(spec, storage)
    export = load_result(storage, spec, "export")
    validate = load_result(storage, spec, "validate")
    optimize = load_result(storage, spec, "optimize")
    perf = PerfSettings.from_spec(spec.get("benchmark"))
    device = spec.get("serving_device") or Device.CPU  # the device of the Triton this step starts
    io, mbs = export["io"], int(export["max_batch_size"])
    variants: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="modelops-benchmark-") as tmp:
        work = Path(tmp)
        if device == Device.GPU:  # native backends (onnxruntime_onnx, tensorrt_plan) on a GPU Triton
            from modelops.steps.gpu_bench import benchmark_gpu

            return benchmark_gpu(spec, storage, export, validate, optimize, perf, work)
        all_samples = _load_npz(storage.download_file(export["outputs"]["samples"], work / "samples.npz"))
        samples = {t["name"]: all_samples[t["name"]] for t in io["inputs"]}
        baseline_kind = export.get("baseline_kind", "pytorch")
        if baseline_kind in ONNX_FILE_KINDS:  # the source is an ONNX model: serve export's as-is copy
            baseline_path = storage.download_file(export["outputs"]["onnx"], work / "source_model" / "model.onnx")
        else:
            baseline_path = storage.download_dir(export["outputs"]["source_model"], work / "source_model")
        expected_src = {t["name"]: all_samples[f"output:{t['name']}"] for t in io["outputs"]}
        candidate_kind, assets = export.get("serving_kind") or "onnxruntime", None
        if export.get("serving_io"):  # text in: serve, smoke-check and measure with what clients send
            io, samples, expected_src, assets, perf_data = _serving_inputs(storage, export, work)
            perf = perf.model_copy(update={"input_data": str(perf_data)})
        targets = [Target(BASELINE, baseline_kind, baseline_path, expected_src, assets)]
        for variant, res in validate["candidates"].items():
            if res.get("status") != Status.ACCEPTED:
                continue
            info = get_variant(variant)
            if not info.servable_on(device):  # e.g. ModelOpt Q/DQ (TensorRT inputs) on the CPU Triton
                variants[variant] = {"status": Status.SKIPPED, "kind": str(info.runtime), "points": [],
                                     "reason": info.not_servable_reason(device)}
                continue
            onnx = storage.download_file(
                optimize["candidates"][variant]["onnx"], work / "models" / variant / "model.onnx"
            )
            expected = _load_npz(storage.download_file(res["sample_outputs"], work / "models" / variant / "sample.npz"))
            targets.append(Target(variant, candidate_kind, onnx, expected, assets))
        slo_ms = float(spec.get("latency_slo_ms") or 100.0)
        runs = work / "runs"
        (runs / "repo").mkdir(parents=True, exist_ok=True)
        results: dict[str, dict[str, Any]] = {}
        # one tritonserver (explicit model control) for every target: each is loaded, smoke-checked, measured with
        # the default configuration and unloaded in turn; then the contenders' configurations are searched
        with TritonProcess(runs / "repo", [], log_path=runs / "triton.log") as server:
            loaded = preload(server, targets, io=io, max_batch_size=mbs, perf=perf)
            for target in targets:
                if server.process is None or server.process.poll() is not None:  # died under the previous target
                    log.warning("the benchmark tritonserver exited; starting it again for %s", target.variant)
                    server.stop()
                    server.start()
                    loaded = set()  # a fresh server has nothing loaded
                res = benchmark_target(target, io=io, max_batch_size=mbs, perf=perf, work=runs, samples=samples,
                                       slo_ms=slo_ms, server=server, preloaded=target.variant in loaded)  # fmt: skip
                if target.variant == BASELINE and res["status"] != Status.DONE:
                    raise StepError(f"baseline ({target.kind} in Triton) failed: {res['reason']}")
                results[target.variant] = res
            # the configuration search (CPU python backend): the budget shared by the contenders, best first, unused
            # time carried on to the next
            budget = perf.config_search_budget_s if perf.config_search and str(device) == Device.CPU else 0.0
            search_left, searched = budget, contenders(results, slo_ms) if budget > 0 else []
            by_variant = {t.variant: t for t in targets}
            for i, variant in enumerate(searched):
                res = results[variant]
                search_target(res, by_variant[variant], server=server, io=io, perf=perf, work=runs, tools=None,
                              budget_s=search_left / (len(searched) - i), slo_ms=slo_ms, warm_inputs=samples)  # fmt: skip
                search_left = max(0.0, search_left - (res.get("config_search") or {}).get("seconds", 0.0))
            for variant, res in results.items():
                if variant != BASELINE and budget and variant not in searched and res["status"] == Status.DONE:
                    res["notes"].append(f"configuration not searched: its default configuration is not within "
                                        f"{CONTENDER_FRACTION:.0%} of the best candidate's throughput")  # fmt: skip
            server.kill()  # everything is measured: no graceful shutdown to wait out
        for variant, res in results.items():
            if res.get("config_search"):
                res["config_search"]["csv"] = join(variant_prefix(spec, variant), "config_search.csv")
            variants[variant] = upload_measurement(storage, spec, variant, res)
    settings = {**perf.as_dict(), "max_batch_size": mbs, "instance_count": 1}
    if export.get("serving_io"):  # the JSON perf_analyzer read, not the temporary copy
        settings["input_data"] = export["outputs"]["perf_input_data"]
    return {"status": Status.DONE, "variants": variants, "settings": settings}


if __name__ == "__main__":
    main("benchmark", run)
