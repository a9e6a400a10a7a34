"""Pick the winner: highest throughput with p99 within the latency SLO, among accurate candidates and their measured
serving configurations (the winner's configuration is what publish renders).

Pure functions over the ``validate`` and ``benchmark`` step results, so the rule is unit-tested
without any server.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from modelops.contracts.status import Status

BASELINE = "baseline"


@dataclass
class VariantScore:
    variant: str
    eligible: bool
    throughput: float | None = None  # best infer/s among points with p99 <= SLO
    p50_ms: float | None = None
    p99_ms: float | None = None
    concurrency: int | None = None
    reason: str | None = None
    config: dict[str, Any] | None = None  # the serving configuration of that point (benchmark's configuration search)


@dataclass
class Selection:
    chosen: str | None
    speedup: float | None
    baseline: VariantScore
    scores: dict[str, VariantScore] = field(default_factory=dict)
    reason: str | None = None  # why nothing was chosen

    def to_json(self) -> dict[str, Any]:
        return {
            "chosen": self.chosen,
            "speedup": self.speedup,
            "baseline": asdict(self.baseline),
            "scores": {k: asdict(v) for k, v in self.scores.items()},
            "reason": self.reason,
            "config": self.scores[self.chosen].config if self.chosen in self.scores else None,
        }


def best_point(points: list[dict[str, Any]], slo_ms: float) -> dict[str, Any] | None:
    """The point with the highest throughput whose p99 is within the SLO; None if none is."""
    within = [p for p in points if p.get("p99_ms") is not None and p["p99_ms"] <= slo_ms]
    return max(within, key=lambda p: p["throughput"]) if within else None


def best_configuration(bench: dict[str, Any], slo_ms: float) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """``(point, configuration)``: the best point under the SLO over every configuration measured in full (benchmark's
    ``configs``; a result without them has one, ``points`` at ``config``); ``(None, None)`` if none meets the SLO."""
    configs = bench.get("configs") or [{"config": bench.get("config"), "points": bench.get("points") or []}]
    best: tuple[dict[str, Any] | None, dict[str, Any] | None] = (None, None)
    for entry in configs:
        point = best_point(entry.get("points") or [], slo_ms)
        if point is not None and (best[0] is None or point["throughput"] > best[0]["throughput"]):
            best = (point, entry.get("config"))
    return best


def _score(variant: str, bench: dict[str, Any] | None, slo_ms: float) -> VariantScore:
    if not bench or bench.get("status") != Status.DONE or not bench.get("points"):
        reason = (bench or {}).get("reason") or "not benchmarked"
        return VariantScore(variant, eligible=False, reason=f"benchmark failed: {reason}")
    point, config = best_configuration(bench, slo_ms)
    if point is None:
        fastest = min(p["p99_ms"] for p in bench["points"])
        return VariantScore(variant, eligible=False, p99_ms=fastest, reason=f"p99 {fastest:.2f} ms > SLO {slo_ms:g} ms")
    return VariantScore(
        variant,
        eligible=True,
        throughput=float(point["throughput"]),
        p50_ms=float(point["p50_ms"]),
        p99_ms=float(point["p99_ms"]),
        concurrency=int(point["concurrency"]),
        config=config,
    )


def select(validate: dict[str, Any], benchmark: dict[str, Any], slo_ms: float) -> Selection:
    """Choose among candidates accepted by ``validate`` and measured by ``benchmark``.

    The speedup compares the winner's best throughput under the SLO with the baseline's (the source
    model served in its own framework in the same run); if the baseline never meets the SLO its best
    throughput at any latency is used, so the ratio stays a fair lower bound.
    """
    bench = benchmark.get("variants", {})
    base_bench = bench.get(BASELINE)
    baseline = _score(BASELINE, base_bench, slo_ms)
    if not baseline.eligible and base_bench and base_bench.get("points"):
        top = max(base_bench["points"], key=lambda p: p["throughput"])
        baseline = VariantScore(
            BASELINE,
            eligible=False,
            throughput=float(top["throughput"]),
            p50_ms=float(top["p50_ms"]),
            p99_ms=float(top["p99_ms"]),
            concurrency=int(top["concurrency"]),
            reason=baseline.reason,
        )
    scores: dict[str, VariantScore] = {}
    for variant, verdict in validate.get("candidates", {}).items():
        if verdict.get("status") != Status.ACCEPTED:
            scores[variant] = VariantScore(variant, eligible=False, reason=verdict.get("reason") or verdict.get("status"))
            continue
        scores[variant] = _score(variant, bench.get(variant), slo_ms)
    eligible = [s for s in scores.values() if s.eligible]
    if not eligible:
        why = "; ".join(f"{s.variant}: {s.reason}" for s in scores.values()) or "no candidates"
        return Selection(None, None, baseline, scores, reason=f"no accurate candidate meets the SLO ({why})")
    winner = max(eligible, key=lambda s: (s.throughput, -(s.p99_ms or 0.0)))
    speedup = round(winner.throughput / baseline.throughput, 3) if baseline.throughput else None
    return Selection(winner.variant, speedup, baseline, scores)
