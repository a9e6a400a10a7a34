"""Benchmark step: serve the source-framework baseline and every accepted candidate in one Triton, measure each.

One tritonserver with explicit model control is started on free ports for the step. Per variant (sequentially):
build the model directory in its local repository, load it through the repository API, smoke-check its answers
on export's sample inputs, run perf_analyzer with the default configuration, unload it. Then the contenders (the
candidates within :data:`CONTENDER_FRACTION` of the best one's throughput) get the configuration search, in the same
server. ``perf.csv``, the search's CSV and the server log go to ``<run prefix>/<variant>/``.
A candidate whose model fails to load is marked failed; a failing baseline fails the step.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelops.contracts.naming import slug
from modelops.contracts.status import Status
from modelops.contracts.variants import Device, get_variant
from modelops.evaluation.config_search import (
    SearchSpace,
    ServingConfig,
    TritonMeasure,
    coordinate_search,
    summarize,
    write_csv,
)
from modelops.evaluation.perf import PerfAnalyzerError, PerfSettings, run_perf_analyzer
from modelops.evaluation.selection import best_point
from modelops.serving.triton.local_server import TritonProcess, TritonStartError
from modelops.serving.triton.model_dir import ONNX_FILE_KINDS, build_model_dir, render_config, runtime_parameters
from modelops.settings import Settings
from modelops.steps._common import StepError, first_line, load_result, run_step, upload_measurement, variant_prefix
from modelops.storage import Storage, join

log = logging.getLogger("modelops.steps.benchmark")

BASELINE = "baseline"
SMOKE_TOLERANCE = 1e-3
VARIABLE_DIM = 8


class SmokeCheckFailed(Exception):
    """Triton answered, but not what the candidate answered under ONNX Runtime/torch in validate/export."""


@dataclass
class Target:
    """One thing to benchmark: a model kind and its file/directory, plus expected sample outputs."""

    variant: str
    kind: str  # a key of modelops.serving.triton.model_dir.MODEL_KINDS
    model_path: Path
    expected: dict[str, np.ndarray] | None = None
    assets: Path | None = None  # kinds in model_dir.ASSET_KINDS: export's serving_assets (tokenizer)


def _shapes(io: dict[str, Any]) -> dict[str, list[int]] | None:
    """perf_analyzer ``--shape`` values for inputs with variable non-batch dims."""
    shapes = {t["name"]: [VARIABLE_DIM if d < 0 else d for d in t["dims"]] for t in io["inputs"] if -1 in t["dims"]}
    return shapes or None


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
) -> dict[str, Any]:
    """Serve one target in Triton and measure it; never raises for server/perf failures.

    Without ``server`` the target gets a fresh Triton of its own; with one (a started :class:`TritonProcess` with
    explicit model control, see :func:`run`), the target's model is written into that server's repository, loaded
    through the repository API, measured, and unloaded again, so one tritonserver serves the step's targets in turn.

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
    build_model_dir(
        repo / name,
        name=name,
        kind=target.kind,
        model_path=target.model_path,
        io=io,
        max_batch_size=max_batch_size,
        threads=perf.threads,
        assets=target.assets,
        parameters=runtime_parameters(target.variant),  # e.g. OpenVINO's engine and precision hint
    )
    try:
        with ExitStack() as serving:
            if server is None:
                triton = serving.enter_context(TritonProcess(repo, [name], log_path=triton_log, settings=tools))
            else:
                triton = server
                serving.callback(unload_quietly, server, name)
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
                shapes=_shapes(io),
                log_path=pa_log,
                notes=out["notes"],
            )
            out["csv_path"] = csv_path
            default = ServingConfig(threads=perf.threads, max_batch_size=max_batch_size)
            out["config"], out["configs"] = default.as_dict(), [{"config": default.as_dict(), "points": out["points"]}]
            if search_budget_s > 0:
                search_configs(out, triton, target, name=name, model_dir=repo / name, io=io, perf=perf,
                               url=perf_url(triton, perf), tools=tools, work=vdir, budget_s=search_budget_s,
                               slo_ms=slo_ms)  # fmt: skip
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


WINDOW_REQUESTS = 200  # a full measurement window holds at least this many requests at concurrency 1 (3 stable
# windows per level: a p99 over 600+ requests), unless that takes longer than the spec's measurement_interval_ms


def probe_window_ms(
    triton: TritonProcess, name: str, *, perf: PerfSettings, io: dict[str, Any], tools: Settings | None, work: Path,
    log_path: Path,
) -> int:  # fmt: skip
    """The perf_analyzer window for ``name``: the spec's ``measurement_interval_ms`` at most, shorter for a fast
    model (:data:`WINDOW_REQUESTS` at its concurrency-1 rate, 250 ms at least). The rate comes from a short probe
    (three 100 ms windows at concurrency 1, discarded), which also warms the model up; a failed probe keeps the
    spec's window (the measurement itself reports what is wrong)."""
    probe = perf.model_copy(update={"concurrency": [1], "measurement_interval_ms": 100, "max_trials": 3,
                                    "stability_percentage": 10000})  # fmt: skip
    try:
        points = run_perf_analyzer(model=name, url=perf_url(triton, perf), settings=probe, csv_path=work / "probe.csv",
                                   tools=tools, shapes=_shapes(io), log_path=log_path, timeout_s=60)  # fmt: skip
    except PerfAnalyzerError as exc:
        log.warning("window probe of %s failed (%s): %d ms windows", name, first_line(exc), perf.measurement_interval_ms)
        return perf.measurement_interval_ms
    rate = points[0]["throughput"] if points else 0.0
    if rate <= 0:
        return perf.measurement_interval_ms
    return max(min(250, perf.measurement_interval_ms), min(perf.measurement_interval_ms,
                                                          int(1000 * WINDOW_REQUESTS / rate)))  # fmt: skip


def model_name(target: Target) -> str:
    """The target's model name in the benchmark Triton."""
    return slug(target.variant).replace("-", "_")


def perf_url(triton: TritonProcess, perf: PerfSettings) -> str:
    return triton.grpc_url if perf.protocol == "grpc" else triton.http_url


def unload_quietly(triton: TritonProcess, name: str) -> None:
    """Unload ``name`` from a shared benchmark Triton (a failure is logged: the next target still loads its own)."""
    try:
        triton.unload_model(name)
    except (RuntimeError, OSError) as exc:
        log.warning("could not unload %s: %s", name, first_line(exc))


def search_target(
    out: dict[str, Any], target: Target, *, server: TritonProcess, io: dict[str, Any], perf: PerfSettings, work: Path,
    tools: Settings | None, budget_s: float, slo_ms: float,
) -> None:  # fmt: skip
    """Search the serving configuration of a target :func:`benchmark_target` measured in ``server`` (and unloaded):
    each configuration is loaded in turn through the repository API; the model is unloaded afterwards."""
    name = model_name(target)
    started = time.time()
    try:
        search_configs(out, server, target, name=name, model_dir=Path(server.repository) / name, io=io, perf=perf,
                       url=perf_url(server, perf), tools=tools, work=work / target.variant, budget_s=budget_s,
                       slo_ms=slo_ms)  # fmt: skip
    finally:
        unload_quietly(server, name)
        out["seconds"] = round(out.get("seconds", 0.0) + time.time() - started, 2)


CONTENDER_FRACTION = 0.75  # a candidate is searched when its default configuration reaches this share of the best
# candidate's throughput: a search moved a candidate by 2-30% in bench/config_search.py, never past a 25% gap


def contenders(results: dict[str, dict[str, Any]], slo_ms: float) -> list[str]:
    """The candidates worth a configuration search, best first: measured (``done``), in the SLO class of the best one
    (meets it, or none does), and within :data:`CONTENDER_FRACTION` of its throughput. The baseline is never searched
    (it is the reference the speedups are relative to)."""
    ranked = {v: summarize(r["points"], slo_ms) for v, r in results.items()
              if v != BASELINE and r.get("status") == Status.DONE and r.get("points")}  # fmt: skip
    if not ranked:
        return []
    meeting = {v: s for v, s in ranked.items() if s[2]} or ranked
    top = max(s[0] for s in meeting.values())
    return sorted((v for v, s in meeting.items() if s[0] >= CONTENDER_FRACTION * top), key=lambda v: -meeting[v][0])


SEARCH_WINDOW_REQUESTS = 50  # a search window holds at least this many requests at the slowest level (a p99 of fewer
# is little more than the maximum: MiniLM at ~50 sentences/s in 250 ms windows flipped around a 100 ms SLO)


def search_window_ms(points: list[dict[str, Any]], perf: PerfSettings) -> int:
    """A search point's perf_analyzer window: short (a point only steers the search, any spread is accepted over 3
    windows, the chosen configuration is measured again in full), but long enough for
    :data:`SEARCH_WINDOW_REQUESTS` requests at the default configuration's slowest measured level."""
    slowest = min((p["throughput"] for p in points if p.get("throughput")), default=0.0)
    needed = int(1000 * SEARCH_WINDOW_REQUESTS / slowest) if slowest > 0 else perf.measurement_interval_ms
    return max(250, min(perf.measurement_interval_ms, needed))


def search_configs(
    out: dict[str, Any], triton: TritonProcess, target: Target, *, name: str, model_dir: Path, io: dict[str, Any],
    perf: PerfSettings, url: str, tools: Settings | None, work: Path, budget_s: float, slo_ms: float,
    space: SearchSpace | None = None,
) -> None:  # fmt: skip
    """Search ``target``'s serving configuration in its running Triton, from the default just measured in ``out``.

    Search points use short perf_analyzer windows; a best configuration other than the default is then measured with
    the full settings, and ``out``'s ``points``/``config``/``csv_path`` become the better of the two under the SLO
    (``configs`` keeps both). Every searched point goes to ``config_search.csv``. A failing search is a note, never
    a failed candidate.
    """
    default = ServingConfig.from_dict(out["config"])
    space = space or SearchSpace.for_cpu(os.cpu_count() or 1, default.max_batch_size, perf.concurrency)
    short = perf.model_copy(update={"measurement_interval_ms": search_window_ms(out["points"], perf),
                                    "max_trials": 3, "stability_percentage": 10000})  # fmt: skip
    pa_log, params = work / "perf_analyzer.log", runtime_parameters(target.variant)

    def render(cfg: ServingConfig) -> str:
        return render_config(name=name, kind=target.kind, io=io, max_batch_size=cfg.max_batch_size,
                             instance_count=cfg.instance_count, threads=cfg.threads, parameters=params,
                             preferred_batch_sizes=list(cfg.preferred_batch_sizes),
                             max_queue_delay_us=cfg.max_queue_delay_us)  # fmt: skip

    def run_perf(cfg: ServingConfig, csv_path: Path, settings: PerfSettings = short) -> list[dict[str, Any]]:
        return run_perf_analyzer(model=name, url=url, settings=settings, csv_path=csv_path, tools=tools,
                                 shapes=_shapes(io), log_path=pa_log, timeout_s=120)  # fmt: skip

    def warmup(cfg: ServingConfig) -> None:
        """Three short discarded windows at a concurrency that reaches every instance: a reload's first requests (ORT
        arena growth, the stub's first batch) would otherwise land in a search point's p99 (short windows make the
        p99 close to the maximum) and in the full measurement of the chosen configuration."""
        level = max(max(perf.concurrency), cfg.instance_count)
        warm = short.model_copy(update={"concurrency": [level], "max_trials": 3,  # perf_analyzer's fewest windows
                                        "measurement_interval_ms": max(100, short.measurement_interval_ms // 3)})  # fmt: skip
        (work / "search").mkdir(parents=True, exist_ok=True)
        try:
            run_perf(cfg, work / "search" / "warmup.csv", warm)
        except PerfAnalyzerError as exc:  # the point's own measurement reports what is wrong
            log.warning("warm-up of %s failed: %s", cfg.key(), first_line(exc))

    measure = TritonMeasure(triton, name=name, model_dir=model_dir, render=render, run_perf=run_perf,
                            work=work / "search", warmup=warmup)  # fmt: skip
    result = coordinate_search(measure, space, default, slo_ms=slo_ms, budget_s=budget_s, start_points=out["points"])
    out["config_search"] = {**result.to_json(), "csv": None, "reloads": measure.loads}
    out["log_paths"].append(write_csv(result, work / "config_search.csv"))
    if result.best.config == default:
        return
    best = result.best.config
    try:
        measure.apply(best)
        full = perf.model_copy(update={"measurement_interval_ms": out.get("window_ms") or perf.measurement_interval_ms})
        points = run_perf(best, work / "perf_best.csv", full)  # the default's window: the two compare like for like
    except (TritonStartError, PerfAnalyzerError, RuntimeError, OSError) as exc:
        out["notes"].append(f"configuration {best.key()} could not be measured in full: {first_line(exc)}")
        return
    out["configs"].append({"config": best.as_dict(), "points": points})
    full_best, full_default = best_point(points, slo_ms), best_point(out["points"], slo_ms)
    if full_best is not None and (full_default is None or full_best["throughput"] > full_default["throughput"]):
        kept = work / "perf_default.csv"  # the default's CSV, beside the chosen one (uploaded as perf.csv)
        kept.write_bytes(Path(out["csv_path"]).read_bytes())
        out["log_paths"].append(kept)
        out["points"], out["config"], out["csv_path"] = points, best.as_dict(), work / "perf_best.csv"
    else:
        out["log_paths"].append(work / "perf_best.csv")


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}


def _json_ready(array: np.ndarray) -> np.ndarray:
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
    samples = {t["name"]: _json_ready(npz[t["name"]]) for t in io["inputs"]}
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
            for target in targets:
                if server.process is None or server.process.poll() is not None:  # died under the previous target
                    log.warning("the benchmark tritonserver exited; starting it again for %s", target.variant)
                    server.stop()
                    server.start()
                res = benchmark_target(target, io=io, max_batch_size=mbs, perf=perf, work=runs, samples=samples,
                                       slo_ms=slo_ms, server=server)  # fmt: skip
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
                              budget_s=search_left / (len(searched) - i), slo_ms=slo_ms)  # fmt: skip
                search_left = max(0.0, search_left - (res.get("config_search") or {}).get("seconds", 0.0))
            for variant, res in results.items():
                if variant != BASELINE and budget and variant not in searched and res["status"] == Status.DONE:
                    res["notes"].append(f"configuration not searched: its default configuration is not within "
                                        f"{CONTENDER_FRACTION:.0%} of the best candidate's throughput")  # fmt: skip
        for variant, res in results.items():
            if res.get("config_search"):
                res["config_search"]["csv"] = join(variant_prefix(spec, variant), "config_search.csv")
            variants[variant] = upload_measurement(storage, spec, variant, res)
    settings = {**perf.as_dict(), "max_batch_size": mbs, "instance_count": 1}
    if export.get("serving_io"):  # the JSON perf_analyzer read, not the temporary copy
        settings["input_data"] = export["outputs"]["perf_input_data"]
    return {"status": Status.DONE, "variants": variants, "settings": settings}


if __name__ == "__main__":
    sys.exit(run_step("benchmark", run))
