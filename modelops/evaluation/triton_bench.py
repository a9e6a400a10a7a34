"""Measuring benchmark targets in a running tritonserver: the probe that sizes perf_analyzer's windows, the
configuration search of a target (:mod:`modelops.evaluation.config_search` driven through Triton's repository
API, each reload warmed up) and which candidates are worth searching (:func:`contenders`).

The benchmark step (:mod:`modelops.steps.benchmark`) serves its targets in one server and calls these.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelops.contracts.naming import slug
from modelops.contracts.status import Status
from modelops.evaluation.config_search import (
    SearchSpace,
    ServingConfig,
    coordinate_search,
    measure_top_down,
    summarize,
    write_csv,
)
from modelops.evaluation.perf import PerfAnalyzerError, PerfSettings, run_perf_analyzer
from modelops.evaluation.selection import best_point
from modelops.serving.triton.local_server import TritonProcess, TritonStartError
from modelops.serving.triton.model_dir import render_config, runtime_parameters
from modelops.settings import Settings
from modelops.steps._common import first_line

log = logging.getLogger("modelops.evaluation.triton_bench")

BASELINE = "baseline"
VARIABLE_DIM = 8


@dataclass
class Target:
    """One thing to benchmark: a model kind and its file/directory, plus expected sample outputs."""

    variant: str
    kind: str  # a key of modelops.serving.triton.model_dir.MODEL_KINDS
    model_path: Path
    expected: dict[str, np.ndarray] | None = None
    assets: Path | None = None  # kinds in model_dir.ASSET_KINDS: export's serving_assets (tokenizer)


def perf_shapes(io: dict[str, Any]) -> dict[str, list[int]] | None:
    """perf_analyzer ``--shape`` values for inputs with variable non-batch dims."""
    shapes = {t["name"]: [VARIABLE_DIM if d < 0 else d for d in t["dims"]] for t in io["inputs"] if -1 in t["dims"]}
    return shapes or None


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
                                   tools=tools, shapes=perf_shapes(io), log_path=log_path, timeout_s=60)  # fmt: skip
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


class TritonMeasure:
    """The benchmark step's measure: rewrite ``config.pbtxt``, reload the model in the running Triton through the
    repository API (explicit model control: much faster than a restart), check Triton serves that configuration,
    then run perf_analyzer (short windows) on it.

    Args:
        triton: a started :class:`~modelops.serving.triton.local_server.TritonProcess` serving ``name`` from a local
            repository.
        model_dir: ``<repository>/<name>``.
        render: ``config -> config.pbtxt text`` (the target's kind, io and runtime parameters bound).
        perf: perf_analyzer settings of a search point.
        run_perf: ``(config, csv path) -> points`` (perf_analyzer against this server).
        work: where each point's perf CSV goes.
        warmup: run after each reload, before anything is measured (requests on every new instance, discarded).
        loaded: the configuration Triton serves (and has warmed up) now: measuring it needs no reload.
    """

    def __init__(self, triton: Any, *, name: str, model_dir: Path, render: Callable[[ServingConfig], str],
                 run_perf: Callable[[ServingConfig, Path], list[dict[str, Any]]], work: Path,
                 warmup: Callable[[ServingConfig], None] | None = None,
                 loaded: ServingConfig | None = None) -> None:  # fmt: skip
        self.triton, self.name, self.model_dir = triton, name, Path(model_dir)
        self.render, self.run_perf, self.work, self.warmup = render, run_perf, Path(work), warmup
        self.loads, self.loaded = 0, loaded

    def apply(self, config: ServingConfig) -> None:
        """Serve ``config``: rewrite the config file, reload, and verify what Triton loaded (nothing to do when it
        already serves ``config``).

        Raises:
            RuntimeError: Triton kept another configuration (one line).
        """
        if self.loaded is not None and self.loaded.normalized() == config.normalized():
            return
        self.loaded = None  # until the reload is verified
        (self.model_dir / "config.pbtxt").write_text(self.render(config))
        self.triton.load_model(self.name)
        self.loads += 1
        loaded = loaded_config(self.triton.http_url, self.name)
        if loaded.normalized() != config.normalized():
            raise RuntimeError(f"Triton serves {loaded.key()} after reloading {config.key()}")
        self.loaded = config
        if self.warmup is not None:  # fresh instances: their first requests (arena growth, lazy init) would count
            self.warmup(config)

    def __call__(self, config: ServingConfig) -> list[dict[str, Any]]:
        self.apply(config)
        self.work.mkdir(parents=True, exist_ok=True)
        return self.run_perf(config, self.work / f"{config.key()}.csv")


def loaded_config(http_url: str, name: str) -> ServingConfig:
    """The configuration Triton serves ``name`` with (its open model-config API, as perf_analyzer reads it)."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"http://{http_url}/v2/models/{name}/config", timeout=30) as resp:
        cfg = json.loads(resp.read())
    batching = cfg.get("dynamic_batching") or {}
    group = (cfg.get("instance_group") or [{}])[0]
    threads = ((cfg.get("parameters") or {}).get("intra_op_threads") or {}).get("string_value", "0")
    return ServingConfig(instance_count=int(group.get("count", 1)), threads=int(threads),
                         max_queue_delay_us=int(batching.get("max_queue_delay_microseconds", 0)),
                         preferred_batch_sizes=tuple(int(b) for b in batching.get("preferred_batch_size") or ()),
                         max_batch_size=int(cfg.get("max_batch_size", 0)))  # fmt: skip


def unload_quietly(triton: TritonProcess, name: str) -> None:
    """Unload ``name`` from a shared benchmark Triton (a failure is logged: the next target still loads its own)."""
    try:
        triton.unload_model(name)
    except (RuntimeError, OSError) as exc:
        log.warning("could not unload %s: %s", name, first_line(exc))


def search_target(
    out: dict[str, Any], target: Target, *, server: TritonProcess, io: dict[str, Any], perf: PerfSettings, work: Path,
    tools: Settings | None, budget_s: float, slo_ms: float, warm_inputs: dict[str, np.ndarray] | None = None,
) -> None:  # fmt: skip
    """Search the serving configuration of a target :func:`benchmark_target` measured in ``server`` (and unloaded):
    each configuration is loaded in turn through the repository API; the model is unloaded afterwards."""
    name = model_name(target)
    started = time.time()
    try:  # benchmark_target unloaded the model after measuring it: the start is loaded again (loaded=False)
        search_configs(out, server, target, name=name, model_dir=Path(server.repository) / name, io=io, perf=perf,
                       url=perf_url(server, perf), tools=tools, work=work / target.variant, budget_s=budget_s,
                       slo_ms=slo_ms, loaded=False, warm_inputs=warm_inputs)  # fmt: skip
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


SEARCH_MIN_GAIN = 0.05  # a search point must beat the incumbent by 5% to move it: short-window points of one
# configuration spread by 5-10% on this 2-core host, and each move on noise bought another pass (17 digits points in
# an e2e run where 12 converged; a 1% "gain" triggered a second pass of 5 points)
SEARCH_WINDOW_REQUESTS = 50  # a search window holds at least this many requests at the slowest level (a p99 of fewer
# is little more than the maximum: MiniLM at ~50 sentences/s in 250 ms windows flipped around a 100 ms SLO)
SEARCH_WINDOW_MIN_MS = 100  # a fast model's search window (the probe's): digits at c4 spread as much over 3 x 250 ms
# windows (CV 8.7%, 8 points) as over 3 x 100 ms (10.5%), and a point took 0.94 s with the first, 0.39 s with the second


def search_window_ms(points: list[dict[str, Any]], perf: PerfSettings) -> int:
    """A search point's perf_analyzer window: short (a point only steers the search, any spread is accepted over 3
    windows, the chosen configuration is measured again in full), but long enough for
    :data:`SEARCH_WINDOW_REQUESTS` requests at the default configuration's slowest measured level, and
    :data:`SEARCH_WINDOW_MIN_MS` at least."""
    slowest = min((p["throughput"] for p in points if p.get("throughput")), default=0.0)
    needed = int(1000 * SEARCH_WINDOW_REQUESTS / slowest) if slowest > 0 else perf.measurement_interval_ms
    return max(SEARCH_WINDOW_MIN_MS, min(perf.measurement_interval_ms, needed))


WARMUP_ROUNDS = 8  # rounds of `level` concurrent requests after a reload (32 at concurrency 4): every instance sees
# batches up to the level (arena growth, the stub's first batch) before a point is measured


def warm_up(triton: TritonProcess, name: str, inputs: dict[str, np.ndarray], level: int) -> None:
    """:data:`WARMUP_ROUNDS` rounds of ``level`` concurrent one-row requests on ``name``, answers discarded: what three
    discarded perf_analyzer windows did, without starting perf_analyzer (0.4 s a search point for digits, 1.3 s for
    MiniLM, mostly its start and its fixed windows).

    Raises:
        RuntimeError: a request was refused (one line).
    """
    from concurrent.futures import ThreadPoolExecutor

    row = {k: v[:1] for k, v in inputs.items()}
    with ThreadPoolExecutor(max_workers=level) as pool:
        for _ in range(WARMUP_ROUNDS):
            list(pool.map(lambda _: triton.infer(name, row), range(level)))


def search_configs(
    out: dict[str, Any], triton: TritonProcess, target: Target, *, name: str, model_dir: Path, io: dict[str, Any],
    perf: PerfSettings, url: str, tools: Settings | None, work: Path, budget_s: float, slo_ms: float,
    space: SearchSpace | None = None, loaded: bool = True, warm_inputs: dict[str, np.ndarray] | None = None,
) -> None:  # fmt: skip
    """Search ``target``'s serving configuration in its running Triton, from the default just measured in ``out``
    (``loaded``: Triton still serves it with that default, warm; else the start is loaded first like any point).

    Search points use short perf_analyzer windows, the highest concurrency first (lower ones only while it misses
    the SLO: :func:`~modelops.evaluation.config_search.measure_top_down`); a best configuration other than the
    default is then measured with the full settings at every concurrency, and ``out``'s ``points``/``config``/
    ``csv_path`` become the better of the two under the SLO (``configs`` keeps both). Every searched point goes to
    ``config_search.csv``. A failing search is a note, never a failed candidate.

    Each reload is warmed up before it is measured: with ``warm_inputs`` (one row of what clients send, e.g. export's
    samples) by :func:`warm_up` in this process, else by three short perf_analyzer windows.
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
                                 shapes=perf_shapes(io), log_path=pa_log, timeout_s=120)  # fmt: skip

    def warmup(cfg: ServingConfig) -> None:
        """Discarded requests at a concurrency that reaches every instance (:func:`warm_up` with ``warm_inputs``, else
        three short perf_analyzer windows): a reload's first requests (ORT arena growth, the stub's first batch) would
        otherwise land in a search point's p99 (short windows make the p99 close to the maximum) and in the full
        measurement of the chosen configuration."""
        level = max(max(perf.concurrency), cfg.instance_count)
        if warm_inputs is not None:
            try:
                warm_up(triton, name, warm_inputs, level)
            except (RuntimeError, OSError) as exc:  # the point's own measurement reports what is wrong
                log.warning("warm-up of %s failed: %s", cfg.key(), first_line(exc))
            return
        warm = short.model_copy(update={"concurrency": [level], "max_trials": 3,  # perf_analyzer's fewest windows
                                        "measurement_interval_ms": max(100, short.measurement_interval_ms // 3)})  # fmt: skip
        (work / "search").mkdir(parents=True, exist_ok=True)
        try:
            run_perf(cfg, work / "search" / "warmup.csv", warm)
        except PerfAnalyzerError as exc:  # the point's own measurement reports what is wrong
            log.warning("warm-up of %s failed: %s", cfg.key(), first_line(exc))

    def run_point(cfg: ServingConfig, csv_path: Path) -> list[dict[str, Any]]:
        """A search point: the top concurrency first, lower ones only while it misses the SLO (one CSV per level)."""
        def level(c: int) -> list[dict[str, Any]]:
            settings = short.model_copy(update={"concurrency": [c]})
            return run_perf(cfg, csv_path.with_name(f"{csv_path.stem}-c{c}.csv"), settings)

        return measure_top_down(level, perf.concurrency, slo_ms)

    # The start is measured again with the search's short windows (no reload when it is still loaded and warm), so
    # every point compares like for like; its full measurement in out["points"] is what a searched best must beat.
    measure = TritonMeasure(triton, name=name, model_dir=model_dir, render=render, run_perf=run_point,
                            work=work / "search", warmup=warmup, loaded=default if loaded else None)  # fmt: skip
    result = coordinate_search(measure, space, default, slo_ms=slo_ms, budget_s=budget_s, min_gain=SEARCH_MIN_GAIN)
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
