"""ONNX Runtime static QDQ quantization with an automatic, sensitivity-driven layer-exclusion policy.

The policy, in order:

1. calibrate once (MinMax over the recipe's calibration rows; the ranges are cached in a JSON file so
   every later quantization of the same model reuses them) and quantize every MatMul/Gemm/Conv in QDQ
   format, U8S8 (activations QUInt8, weights QInt8), per-channel;
2. score the quantized model with the recipe metric against the fp32 source; done if it is within
   ``tolerance``;
3. otherwise measure each quantizable node's sensitivity: quantize ONLY that node and take the output
   error (1 - mean cosine of the first output against fp32) on a few calibration rows, within a time budget;
4. exclude the most sensitive nodes one at a time, re-scoring after each, until the metric is within
   tolerance or ``max_excluded`` is hit; the best configuration found is the one written.

BERT-like encoders are the known case: the FFN down-projection MatMuls read GELU outputs with large
outliers, which a per-tensor uint8 activation scale cannot hold (ENVIRONMENT.md).

Everything here is a function of paths and arrays (no storage, no recipe registry): the optimize step
builds the ``score`` callable from the recipe. The graph side (calibration reader, pre-processing,
node naming, one ``quantize_static`` call) lives in :mod:`modelops.optimization.qdq_graph`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelops.contracts.spec import StaticQuantSpec
from modelops.evaluation.metrics import row_cosine
from modelops.optimization.ort_cpu import run_list
from modelops.optimization.qdq_graph import (  # re-exported: the public API of static quantization
    CALIBRATION_BATCH,
    CALIBRATION_ROWS,
    QUANTIZABLE_OPS,
    ArrayDataReader,
    calibration_inputs,
    pre_process,
    prepare_model,
    quantizable_nodes,
    quantize_qdq,
)

__all__ = [
    "CALIBRATION_BATCH",
    "CALIBRATION_ROWS",
    "QUANTIZABLE_OPS",
    "ArrayDataReader",
    "ExclusionOutcome",
    "Sensitivity",
    "StaticQuantConfig",
    "calibration_inputs",
    "greedy_exclusion",
    "measure_sensitivity",
    "output_error",
    "passes",
    "pre_process",
    "prepare_model",
    "quantizable_nodes",
    "quantize_qdq",
    "quantize_static_auto",
    "rank",
]

log = logging.getLogger("modelops.optimization.static_quant")

class StaticQuantConfig(StaticQuantSpec):
    """Knobs of :func:`quantize_static_auto`: the run spec's ``static_quant`` block (its defaults live there)."""

    @classmethod
    def from_spec(cls, overrides: dict[str, Any] | None) -> StaticQuantConfig:
        """Build from the spec's ``static_quant`` mapping; unknown keys are an error, not silently ignored."""
        unknown = set(overrides or {}) - set(cls.model_fields)
        if unknown:
            raise ValueError(f"unknown static_quant option(s) {sorted(unknown)}; known: {sorted(cls.model_fields)}")
        return cls.model_validate(dict(overrides or {}))

    def cap(self, n_nodes: int) -> int:
        """How many nodes the policy may leave in float."""
        return self.max_excluded if self.max_excluded is not None else max(1, n_nodes // 4)


@dataclass
class Sensitivity:
    """One node's measured sensitivity: the output error when only this node is quantized."""

    node: str
    op_type: str
    error: float | None  # 1 - mean cosine vs fp32; None when the time budget ran out first
    seconds: float


@dataclass
class ExclusionOutcome:
    """What the policy did; serialized into the optimize result under ``quantization``."""

    metric_name: str
    source_metric: float
    tolerance: float
    metric_all_quantized: float
    metric: float
    met_tolerance: bool
    excluded_nodes: list[str]
    reason: str
    quantizable_nodes: int
    sensitivity: list[Sensitivity] = field(default_factory=list)
    sensitivity_method: str | None = None
    trials: list[dict[str, Any]] = field(default_factory=list)  # [{"excluded": n, "metric": m}] of the greedy walk
    seconds: dict[str, float] = field(default_factory=dict)  # calibrate+quantize, sensitivity, exclusion

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("source_metric", "metric_all_quantized", "metric"):
            out[key] = _json_float(out[key])
        return out


def _json_float(value: float) -> float | None:
    return round(float(value), 6) if value is not None and math.isfinite(value) else None


def output_error(candidate: np.ndarray, reference: np.ndarray) -> float:
    """``1 - mean per-row cosine`` of two equally shaped outputs (0 = identical direction); inf if not finite."""
    if not (np.isfinite(candidate).all() and np.isfinite(reference).all()):
        return math.inf
    # a zero-norm row is no evidence against a node (the search compares directions only)
    return float(max(0.0, 1.0 - row_cosine(candidate, reference, degenerate=1.0).mean()))


# ---------------------------------------------------------------------------------------------- policy


def rank(sensitivity: list[Sensitivity]) -> list[str]:
    """Node names, most sensitive first; unmeasured nodes last, in graph order."""
    measured = sorted((s for s in sensitivity if s.error is not None), key=lambda s: -s.error)  # type: ignore[operator]
    return [s.node for s in measured] + [s.node for s in sensitivity if s.error is None]


def passes(metric: float, source_metric: float, tolerance: float) -> bool:
    """The validate step's gate: finite and not more than ``tolerance`` below the source."""
    return math.isfinite(metric) and metric >= source_metric - tolerance


def greedy_exclusion(
    ranked: list[str], score: Callable[[list[str]], float], source_metric: float, tolerance: float, cap: int
) -> tuple[list[str], float, list[dict[str, Any]]]:
    """Exclude ``ranked`` nodes one at a time until ``score(excluded)`` passes or ``cap`` nodes are out.

    Returns:
        ``(excluded, metric, trials)``: the passing set, or the best-scoring set tried (fewest nodes on ties),
        and every ``{"excluded": k, "metric": m}`` tried.
    """
    best: tuple[list[str], float] = ([], -math.inf)
    trials = []
    for k in range(1, min(cap, len(ranked)) + 1):
        excluded = ranked[:k]
        metric = score(excluded)
        trials.append({"excluded": k, "metric": _json_float(metric), "node": excluded[-1]})
        if math.isfinite(metric) and metric > best[1]:
            best = (excluded, metric)
        if passes(metric, source_metric, tolerance):
            return excluded, metric, trials
    return best[0], best[1], trials


def measure_sensitivity(
    nodes: list[tuple[str, str]],
    error_of: Callable[[str], float],
    budget_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> list[Sensitivity]:
    """``error_of(node)`` for each node until ``budget_s`` is spent; the rest get ``error=None``."""
    start = clock()
    out = []
    for name, op_type in nodes:
        t0 = clock()
        if t0 - start > budget_s:
            out.append(Sensitivity(name, op_type, None, 0.0))
            continue
        error = error_of(name)
        measured = float(f"{error:.4g}") if math.isfinite(error) else 1.0  # 1.0: non-finite outputs, as bad as it gets
        out.append(Sensitivity(name, op_type, measured, round(clock() - t0, 2)))
    return out


def quantize_static_auto(
    src: Path,
    dest: Path,
    calibration: dict[str, np.ndarray],
    score: Callable[[Path], float],
    *,
    metric_name: str,
    source_metric: float,
    tolerance: float,
    workdir: Path,
    config: StaticQuantConfig | None = None,
) -> ExclusionOutcome:
    """Static QDQ of ``src`` into ``dest`` with automatic exclusion of the most sensitive nodes.

    Args:
        src: fp32 ONNX model.
        dest: where the quantized model goes.
        calibration: input name -> rows (already sliced to the calibration size).
        score: recipe metric of a candidate model against the fp32 source on the eval data (higher is better).
        metric_name: the metric's name, for reasons.
        source_metric: the source's own metric (the gate's reference).
        tolerance: largest allowed drop below ``source_metric``.
        workdir: scratch space (pre-processed model, calibration cache, trial models).
        config: quantization knobs.

    Returns:
        The outcome; ``dest`` holds the all-quantized model, the passing exclusion set, or the best one tried.
    """
    config = config or StaticQuantConfig()
    workdir.mkdir(parents=True, exist_ok=True)
    model = prepare_model(src, workdir / "prepared.onnx")
    cache = workdir / "calibration_ranges.json"
    nodes = quantizable_nodes(model, config.op_types)
    if not nodes:
        raise ValueError(f"no {'/'.join(config.op_types)} node to quantize")

    started = time.monotonic()
    quantize_qdq(model, dest, config, calibration, cache)  # calibrates once, fills the cache
    metric_all = score(dest)
    seconds = {"quantize": round(time.monotonic() - started, 2)}
    log.info(
        "static QDQ, all %d nodes quantized: %s %.4f (source %.4f)", len(nodes), metric_name, metric_all, source_metric
    )
    outcome = ExclusionOutcome(
        metric_name=metric_name,
        source_metric=source_metric,
        tolerance=tolerance,
        metric_all_quantized=metric_all,
        metric=metric_all,
        met_tolerance=passes(metric_all, source_metric, tolerance),
        excluded_nodes=[],
        reason="",
        quantizable_nodes=len(nodes),
        seconds=seconds,
    )
    if outcome.met_tolerance:
        outcome.reason = (
            f"every {'/'.join(config.op_types)} node quantized: {metric_name} {metric_all:.4f} is within "
            f"{tolerance:g} of source {source_metric:.4f}"
        )
        return outcome

    rows = {k: v[: config.sensitivity_rows] for k, v in calibration.items()}
    reference = run_list(model, rows)[0]
    trial = workdir / "trial.onnx"

    def error_of(node: str) -> float:
        quantize_qdq(model, trial, config, None, cache, only=[node])
        return output_error(run_list(trial, rows)[0], reference)

    started = time.monotonic()
    outcome.sensitivity = measure_sensitivity(nodes, error_of, config.sensitivity_budget_s)
    seconds["sensitivity"] = round(time.monotonic() - started, 2)
    outcome.sensitivity.sort(key=lambda s: -1.0 if s.error is None else s.error, reverse=True)
    outcome.sensitivity_method = (
        f"quantize only this node; error = 1 - mean cosine of the first output vs fp32 on {min(map(len, rows.values()))} "
        f"calibration rows; budget {config.sensitivity_budget_s:g} s"
    )

    def score_excluding(excluded: list[str]) -> float:
        quantize_qdq(model, trial, config, None, cache, exclude=excluded)
        return score(trial)

    cap = config.cap(len(nodes))
    started = time.monotonic()
    excluded, metric, outcome.trials = greedy_exclusion(
        rank(outcome.sensitivity), score_excluding, source_metric, tolerance, cap
    )
    if excluded and math.isfinite(metric) and metric >= metric_all:
        quantize_qdq(model, dest, config, None, cache, exclude=excluded)
        outcome.excluded_nodes, outcome.metric = excluded, metric
    seconds["exclusion"] = round(time.monotonic() - started, 2)
    outcome.met_tolerance = passes(outcome.metric, source_metric, tolerance)
    unmeasured = sum(s.error is None for s in outcome.sensitivity)
    budget_note = f" ({unmeasured} node(s) unmeasured: sensitivity budget spent)" if unmeasured else ""
    if outcome.met_tolerance:
        outcome.reason = (
            f"all-quantized {metric_name} {metric_all:.4f} missed source {source_metric:.4f} - {tolerance:g}; "
            f"excluding the {len(outcome.excluded_nodes)} most sensitive node(s) gives {outcome.metric:.4f}{budget_note}"
        )
    else:
        outcome.reason = (
            f"all-quantized {metric_name} {metric_all:.4f} missed source {source_metric:.4f} - {tolerance:g}; "
            f"excluding up to {cap} node(s) (the cap) reached at best {outcome.metric:.4f} with "
            f"{len(outcome.excluded_nodes)} excluded{budget_note}"
        )
    log.info("static QDQ: %s", outcome.reason)
    for path in (trial,):
        path.unlink(missing_ok=True)
    return outcome
