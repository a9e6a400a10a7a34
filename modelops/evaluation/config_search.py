"""Search the serving configuration of one candidate: coordinate descent that does not try every point.

The space (:class:`SearchSpace`) is what matters for a python-backend model on CPU: instance count x intra-op
threads (a *placement*), dynamic batching's ``max_queue_delay_microseconds``, its preferred batch sizes and
``max_batch_size``. :func:`coordinate_search` starts from the step's default configuration and walks one axis at a
time: every placement (unordered, a few on CPU), then each ordered axis in both directions from the incumbent; a
direction stops at the first point dominated by the incumbent (lower throughput AND higher p99) or that failed. Passes repeat while one improved the incumbent, within a
time budget. A configuration is measured at most once (a cache keyed by the configuration), and every measured point
is kept: the caller writes them as CSV (:func:`write_csv`) and a plot (:func:`plot_search`).

The measure function is injected (a real Triton reload + perf_analyzer run in the benchmark step,
:class:`~modelops.evaluation.triton_bench.TritonMeasure`; a deterministic function in the unit tests).
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

log = logging.getLogger("modelops.evaluation.config_search")

AXES: tuple[str, ...] = ("placement", "max_queue_delay_us", "preferred_batch_sizes", "max_batch_size")
# unordered axes: every value is tried (instances x threads has no direction a dominated point could close)
CATEGORICAL: frozenset[str] = frozenset({"placement"})
QUEUE_DELAYS_US: tuple[int, ...] = (0, 500, 2000)
CSV_FIELDS = ("order", "config", "instance_count", "threads", "max_queue_delay_us", "preferred_batch_sizes",
              "max_batch_size", "concurrency", "throughput", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "seconds",
              "meets_slo", "dominated_by", "error")  # fmt: skip


@dataclass(frozen=True)
class ServingConfig:
    """One serving configuration of a python-backend model (what config.pbtxt gets)."""

    instance_count: int = 1
    threads: int = 2
    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_batch_size: int = 64

    @property
    def placement(self) -> tuple[int, int]:
        return (self.instance_count, self.threads)

    def key(self) -> str:
        """A short stable name, e.g. ``i1xt2-d500-p4-b64``."""
        pref = "_".join(str(b) for b in self.preferred_batch_sizes) or "none"
        return f"i{self.instance_count}xt{self.threads}-d{self.max_queue_delay_us}-p{pref}-b{self.max_batch_size}"

    def with_axis(self, axis: str, value: Any) -> ServingConfig:
        if axis == "placement":
            return replace(self, instance_count=int(value[0]), threads=int(value[1]))
        return replace(self, **{axis: tuple(value) if axis == "preferred_batch_sizes" else int(value)})

    def axis_value(self, axis: str) -> Any:
        return self.placement if axis == "placement" else getattr(self, axis)

    def normalized(self) -> ServingConfig:
        """As Triton serves it: no preferred batch sizes means ``[max_batch_size]`` (Triton fills that in)."""
        if self.preferred_batch_sizes or self.max_batch_size <= 0:
            return self
        return replace(self, preferred_batch_sizes=(self.max_batch_size,))

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "preferred_batch_sizes": list(self.preferred_batch_sizes)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServingConfig:
        known = {k: data[k] for k in ("instance_count", "threads", "max_queue_delay_us", "max_batch_size") if k in data}
        return cls(**{k: int(v) for k, v in known.items()},
                   preferred_batch_sizes=tuple(int(b) for b in data.get("preferred_batch_sizes") or ()))  # fmt: skip


@dataclass(frozen=True)
class SearchSpace:
    """Ordered values per axis (:data:`AXES`); ``size`` is what a brute sweep would measure."""

    placements: tuple[tuple[int, int], ...]
    max_queue_delay_us: tuple[int, ...] = QUEUE_DELAYS_US
    preferred_batch_sizes: tuple[tuple[int, ...], ...] = ((),)
    max_batch_size: tuple[int, ...] = (64,)

    def values(self, axis: str) -> tuple[Any, ...]:
        return self.placements if axis == "placement" else getattr(self, axis)

    @property
    def size(self) -> int:
        n = 1
        for axis in AXES:
            n *= len(self.values(axis))
        return n

    def all_configs(self) -> list[ServingConfig]:
        """Every point (the brute sweep a search is compared with)."""
        configs = [ServingConfig()]
        for axis in AXES:
            configs = [c.with_axis(axis, v) for c in configs for v in self.values(axis)]
        return configs

    @classmethod
    def for_cpu(cls, cores: int, max_batch_size: int, concurrency: list[int]) -> SearchSpace:
        """The CPU space: instances x threads with 1..2x the cores in use, queue delays, preferred batch = the
        highest concurrency measured (when the model batches that far). ``max_batch_size`` stays the model's: it is
        the deployment's contract with its clients (a smaller one refuses their larger batches, and deploy's smoke
        test sends export's sample batch), so the server-side batch is steered by the preferred size instead."""
        powers = [p for p in (1, 2, 4, 8, 16, 32) if p <= max(1, cores)]
        placements = tuple((i, t) for i in powers for t in powers if cores / 2 <= i * t <= 2 * cores or i * t == 1)
        top = max(concurrency)
        batches = 1 < top <= max_batch_size
        return cls(
            placements=placements,
            max_queue_delay_us=QUEUE_DELAYS_US if max_batch_size > 0 else (0,),
            preferred_batch_sizes=((), (top,)) if batches else ((),),
            max_batch_size=(max_batch_size,),
        )


@dataclass
class Trial:
    """One measured configuration: perf points per concurrency and their summary under the SLO."""

    order: int
    config: ServingConfig
    points: list[dict[str, Any]]
    seconds: float
    throughput: float = 0.0  # best under the SLO, else at the lowest-p99 point
    p99_ms: float = float("inf")
    meets_slo: bool = False
    error: str | None = None
    dominated_by: str | None = None

    def rank(self) -> tuple[bool, float, float]:
        return (self.error is None and self.meets_slo, self.throughput, -self.p99_ms)

    def beats(self, other: Trial, min_gain: float = 0.0) -> bool:
        """Better than ``other`` by more than measurement noise: it meets the SLO where ``other`` does not, or, in
        the same SLO class, its throughput exceeds ``other``'s by more than ``min_gain`` (a fraction; with 0, the
        plain :meth:`rank` order)."""
        mine, theirs = self.rank(), other.rank()
        if self.error is not None or mine[0] != theirs[0] or min_gain <= 0:
            return mine > theirs
        return self.throughput > other.throughput * (1.0 + min_gain)

    def dominated(self, other: Trial) -> bool:
        """Lower throughput AND higher p99 than ``other`` (or failed)."""
        return self.error is not None or (self.throughput < other.throughput and self.p99_ms > other.p99_ms)

    def to_json(self) -> dict[str, Any]:
        return {"order": self.order, "config": self.config.as_dict(), "key": self.config.key(), "points": self.points,
                "seconds": round(self.seconds, 2), "throughput": self.throughput,
                "p99_ms": None if self.p99_ms == float("inf") else self.p99_ms, "meets_slo": self.meets_slo,
                "error": self.error, "dominated_by": self.dominated_by}  # fmt: skip


def summarize(points: list[dict[str, Any]], slo_ms: float) -> tuple[float, float, bool]:
    """``(throughput, p99_ms, meets_slo)``: the best point within the SLO, else the lowest-p99 point."""
    if not points:
        return 0.0, float("inf"), False
    within = [p for p in points if p.get("p99_ms") is not None and p["p99_ms"] <= slo_ms]
    if within:
        best = max(within, key=lambda p: p["throughput"])
        return float(best["throughput"]), float(best["p99_ms"]), True
    best = min(points, key=lambda p: p.get("p99_ms") or float("inf"))
    return float(best["throughput"]), float(best.get("p99_ms") or float("inf")), False


def measure_top_down(
    measure_level: Callable[[int], list[dict[str, Any]]], levels: list[int], slo_ms: float
) -> list[dict[str, Any]]:
    """A search point's perf points: the highest concurrency first, a lower one only while the SLO is missed.

    In a closed loop throughput grows with concurrency until the server saturates, so once a level meets the SLO
    the lower ones cannot be what :func:`summarize` picks; skipping them saves a third to a half of a point's
    measuring time. ``measure_level(level)`` returns that level's points.
    """
    points: list[dict[str, Any]] = []
    for level in sorted(set(levels), reverse=True):
        got = list(measure_level(level))
        points.extend(got)
        if summarize(got, slo_ms)[2]:
            break
    return sorted(points, key=lambda p: p.get("concurrency", 0))


@dataclass
class SearchResult:
    best: Trial
    trials: list[Trial]
    space_size: int
    stopped: str  # "converged" | "budget" | "passes"
    seconds: float
    passes: int = 0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"best": self.best.config.as_dict(), "best_key": self.best.config.key(), "measured": len(self.trials),
                "space_size": self.space_size, "stopped": self.stopped, "passes": self.passes,
                "seconds": round(self.seconds, 2), "points": [t.to_json() for t in self.trials]}  # fmt: skip


class _OutOfBudget(Exception):
    pass


def coordinate_search(
    measure: Callable[[ServingConfig], list[dict[str, Any]]],
    space: SearchSpace,
    start: ServingConfig,
    *,
    slo_ms: float,
    budget_s: float,
    max_passes: int = 3,
    min_gain: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
) -> SearchResult:
    """Coordinate descent from ``start`` over ``space`` within ``budget_s``; the best configuration under the SLO.

    Args:
        measure: runs one configuration and returns its perf points (``concurrency``, ``throughput``, ``p99_ms``...);
            an exception marks the configuration failed (kept, with its one-line reason).
        space: the ordered axis values.
        start: the first configuration (measured even when the budget is 0).
        slo_ms: p99 bound a point must meet to count.
        budget_s: wall time; a new measurement starts only when the time spent plus the mean measurement fits.
        max_passes: passes over all axes at most (a pass repeats only when the previous one improved).
        min_gain: a point replaces the incumbent only when it beats it by more than this fraction of its throughput
            (or meets the SLO where the incumbent does not): short windows on a busy host spread by several percent,
            and a move on noise costs another pass over every axis.
        clock: monotonic seconds (injected by tests).

    Returns:
        The best trial (by meets-SLO, throughput, then lower p99) and every trial in measurement order.
    """
    started = clock()
    trials: dict[ServingConfig, Trial] = {}

    def run(config: ServingConfig, *, force: bool = False) -> Trial:
        if config in trials:
            return trials[config]
        spent = clock() - started
        took = [t.seconds for t in trials.values()]
        mean = sum(took) / len(took) if took else 0.0
        if not force and spent + mean > budget_s:
            raise _OutOfBudget
        t0 = clock()
        error, points = None, []
        try:
            points = list(measure(config))
        except Exception as exc:  # noqa: BLE001 - a configuration Triton or perf_analyzer refuses is a result too
            error = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        thr, p99, ok = summarize(points, slo_ms)
        trial = Trial(len(trials), config, points, clock() - t0, thr, p99, ok, error)
        trials[config] = trial
        log.info("config %s: %.1f infer/s p99 %.2f ms%s", config.key(), thr, p99, f" ({error})" if error else "")
        return trial

    best, stopped, passes = run(start, force=True), "passes", 0
    try:
        for passes in range(1, max_passes + 1):
            improved = False
            for axis in AXES:
                values = list(space.values(axis))
                if axis in CATEGORICAL:
                    for value in values:
                        trial = run(best.config.with_axis(axis, value))
                        if trial.beats(best, min_gain):
                            best, improved = trial, True
                        elif trial.dominated(best):
                            trial.dominated_by = trial.dominated_by or best.config.key()
                    continue
                for direction in (1, -1):
                    current = best.config.axis_value(axis)
                    if current not in values:
                        continue
                    i = values.index(current) + direction
                    while 0 <= i < len(values):
                        trial = run(best.config.with_axis(axis, values[i]))
                        if trial.beats(best, min_gain):
                            best, improved = trial, True
                        elif trial.dominated(best):
                            trial.dominated_by = trial.dominated_by or best.config.key()
                            break  # further along this direction is assumed no better
                        i += direction
            if not improved:
                stopped = "converged"
                break
    except _OutOfBudget:
        stopped = "budget"
    ordered = sorted(trials.values(), key=lambda t: t.order)
    return SearchResult(best, ordered, space.size, stopped, clock() - started, passes)


def write_csv(result: SearchResult, path: Path) -> Path:
    """Every measured point, one row per (configuration, concurrency); a failed configuration gets one row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for t in result.trials:
            c = t.config
            base = {"order": t.order, "config": c.key(), "instance_count": c.instance_count, "threads": c.threads,
                    "max_queue_delay_us": c.max_queue_delay_us, "max_batch_size": c.max_batch_size,
                    "preferred_batch_sizes": " ".join(str(b) for b in c.preferred_batch_sizes),
                    "seconds": round(t.seconds, 2), "meets_slo": t.meets_slo, "dominated_by": t.dominated_by or "",
                    "error": t.error or ""}  # fmt: skip
            for p in t.points or [{}]:
                writer.writerow({**base, **{k: p.get(k, "") for k in CSV_FIELDS if k in p}})
    return path


def plot_search(searches: dict[str, dict[str, Any]], slo_ms: float, path: Path) -> Path | None:
    """Throughput vs p99 of every searched configuration per variant (each variant's best marked); None if none.

    Args:
        searches: variant -> a :meth:`SearchResult.to_json` document (the benchmark result's ``config_search``).
        slo_ms: drawn as the SLO line.
        path: the PNG to write.
    """
    from modelops.tracking.record import _pyplot, _save

    drawn = {v: s for v, s in searches.items() if s and s.get("points")}
    if not drawn:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant, search in drawn.items():
        pts = [p for p in search["points"] if p.get("p99_ms") is not None]
        line = ax.scatter([p["p99_ms"] for p in pts], [p["throughput"] for p in pts], s=25, label=f"{variant}")
        for p in pts:
            if p["key"] == search.get("best_key"):
                ax.scatter([p["p99_ms"]], [p["throughput"]], marker="*", s=160, color=line.get_facecolor()[0])
            ax.annotate(p["key"], (p["p99_ms"], p["throughput"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.axvline(slo_ms, color="grey", linestyle="--", linewidth=1, label=f"SLO {slo_ms:g} ms")
    ax.set_xlabel("p99 latency (ms, best point under the SLO)")
    ax.set_ylabel("throughput (infer/s)")
    ax.set_title("configuration search: every measured configuration (* = chosen)")
    return _save(fig, ax, path)
