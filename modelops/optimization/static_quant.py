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
builds the ``score`` callable from the recipe.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("modelops.optimization.static_quant")

QUANTIZABLE_OPS = ("MatMul", "Gemm", "Conv")
CALIBRATION_ROWS = 128
CALIBRATION_BATCH = 16
SENSITIVITY_ROWS = 32
SENSITIVITY_BUDGET_S = 300.0
RUN_CHUNK = 256


@dataclass(frozen=True)
class StaticQuantConfig:
    """Knobs of :func:`quantize_static_auto` (the spec's ``static_quant`` mapping overrides them)."""

    per_channel: bool = True
    activation_type: str = "QUInt8"
    weight_type: str = "QInt8"
    calibrate_method: str = "MinMax"
    op_types: tuple[str, ...] = QUANTIZABLE_OPS
    calibration_rows: int = CALIBRATION_ROWS
    calibration_batch: int = CALIBRATION_BATCH
    sensitivity_rows: int = SENSITIVITY_ROWS
    sensitivity_budget_s: float = SENSITIVITY_BUDGET_S
    max_excluded: int | None = None  # None: a quarter of the quantizable nodes, at least 1

    @classmethod
    def from_spec(cls, overrides: dict[str, Any] | None) -> StaticQuantConfig:
        """Build from the spec's ``static_quant`` mapping; unknown keys are an error, not silently ignored."""
        overrides = dict(overrides or {})
        unknown = set(overrides) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"unknown static_quant option(s) {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}"
            )
        if "op_types" in overrides:
            overrides["op_types"] = tuple(overrides["op_types"])
        return cls(**overrides)

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


# ---------------------------------------------------------------------------------------------- data


def calibration_inputs(recipe: Any, io: Any, rows: int = CALIBRATION_ROWS) -> tuple[dict[str, np.ndarray], str]:
    """The recipe's calibration inputs, at most ``rows`` of them, and where they came from.

    Uses ``recipe.calibration_data(io)`` when the recipe has it; otherwise the first ``rows`` rows of
    ``recipe.eval_data(io)[0]`` (the default the Recipe interface will carry; calibrating on rows the gate
    also scores on is optimistic, so recipes with a training split should override it).
    """
    method = getattr(recipe, "calibration_data", None)
    if callable(method):
        data, source = method(io), f"{getattr(recipe, 'name', type(recipe).__name__)}.calibration_data"
    else:
        data, source = recipe.eval_data(io)[0], "eval_data"
    out = {name: np.ascontiguousarray(np.asarray(arr)[:rows]) for name, arr in data.items()}
    n = {len(a) for a in out.values()}
    if not out or n == {0}:
        raise ValueError(f"recipe gave no calibration rows ({source})")
    return out, f"{source}[:{min(n)}]"


class ArrayDataReader:
    """An ONNX Runtime ``CalibrationDataReader`` over in-memory arrays, ``batch`` rows per step.

    It duck-types the abstract class (ORT's ``__subclasshook__`` accepts any class with ``get_next``),
    so importing this module does not import onnxruntime.
    """

    def __init__(self, inputs: dict[str, np.ndarray], batch: int = CALIBRATION_BATCH) -> None:
        self.inputs = inputs
        self.batch = max(1, batch)
        self.n = min(len(a) for a in inputs.values())
        self.start, self.end, self.pos = 0, self.n, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.pos >= self.end:
            return None
        stop = min(self.pos + self.batch, self.end)
        feed = {k: v[self.pos : stop] for k, v in self.inputs.items()}
        self.pos = stop
        return feed

    def __iter__(self) -> ArrayDataReader:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item

    def __len__(self) -> int:
        return self.n

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end, self.pos = start_index, min(end_index, self.n), start_index

    def rewind(self) -> None:
        self.pos = self.start


def run_model(path: Path, inputs: dict[str, np.ndarray], chunk: int = RUN_CHUNK) -> list[np.ndarray]:
    """Run an ONNX model on CPU in chunks, configured like the deployments; outputs in graph order."""
    from modelops.optimization import ort_cpu

    return ort_cpu.run_list(path, inputs, chunk)


def output_error(candidate: np.ndarray, reference: np.ndarray) -> float:
    """``1 - mean per-row cosine`` of two equally shaped outputs (0 = identical direction); inf if not finite."""
    a = np.asarray(candidate, dtype=np.float64).reshape(len(candidate), -1)
    b = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return math.inf
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(den > 0, (a * b).sum(axis=1) / np.where(den > 0, den, 1.0), 1.0)
    return float(max(0.0, 1.0 - cos.mean()))


# ---------------------------------------------------------------------------------------------- model


def pre_process(src: Path, dest: Path) -> bool:
    """onnxruntime's ``quant_pre_process`` (shape inference + basic optimizations) from ``src`` to ``dest``.

    Returns False (and logs why) when it fails: pre-processing only improves quantization. It runs in a
    scratch working directory because a failed symbolic shape inference dumps ``sym_shape_infer_temp.onnx``
    and uuid-named external-data files into the current one.
    """
    import contextlib
    import tempfile

    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dest = Path(src).resolve(), Path(dest).resolve()
    with tempfile.TemporaryDirectory(prefix="quant-pre-") as scratch, contextlib.chdir(scratch):
        try:
            quant_pre_process(str(src), str(dest), skip_symbolic_shape=False)
            return True
        except Exception as exc:  # noqa: BLE001 - pre-processing only improves the result
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            log.warning("quant_pre_process failed (%s); quantizing the graph as is", reason)
            return False


def prepare_model(src: Path, dest: Path) -> Path:
    """``quant_pre_process`` (shape inference + basic optimizations) and a name on every node.

    Node names are what the exclusion list refers to; unnamed nodes get ``<op_type>_<index>``. Falls back to
    the source graph (named) when pre-processing fails.
    """
    import onnx

    model = onnx.load(str(dest if pre_process(src, dest) else src))
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{index}"
        seen.add(node.name)
    onnx.save(model, str(dest))
    return dest


def quantizable_nodes(model_path: Path, op_types: Iterable[str] = QUANTIZABLE_OPS) -> list[tuple[str, str]]:
    """``(name, op_type)`` of the nodes static QDQ would quantize and the policy may exclude, in graph order.

    A MatMul qualifies only when one of its inputs is a constant (a weight): activation x activation MatMuls
    (attention scores) are quantized along but are not candidates for exclusion.
    """
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    wanted = set(op_types)
    out = []
    for node in model.graph.node:
        if node.op_type not in wanted:
            continue
        if node.op_type == "MatMul" and not any(i in consts for i in node.input):
            continue
        out.append((node.name, node.op_type))
    return out


def quantize_qdq(
    src: Path,
    dest: Path,
    config: StaticQuantConfig,
    calibration: dict[str, np.ndarray] | None,
    cache: Path,
    *,
    exclude: Iterable[str] = (),
    only: Iterable[str] | None = None,
) -> Path:
    """One ``quantize_static`` call in QDQ format; calibration ranges come from (or go to) ``cache``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    reader = ArrayDataReader(calibration, config.calibration_batch) if calibration is not None else None
    quantize_static(
        str(src),
        str(dest),
        calibration_data_reader=reader,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(config.op_types),
        per_channel=config.per_channel,
        activation_type=getattr(QuantType, config.activation_type),
        weight_type=getattr(QuantType, config.weight_type),
        nodes_to_quantize=list(only) if only is not None else None,
        nodes_to_exclude=list(exclude),
        calibrate_method=getattr(CalibrationMethod, config.calibrate_method),
        calibration_cache_path=str(cache),
    )
    return dest


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
    reference = run_model(model, rows)[0]
    trial = workdir / "trial.onnx"

    def error_of(node: str) -> float:
        quantize_qdq(model, trial, config, None, cache, only=[node])
        return output_error(run_model(trial, rows)[0], reference)

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
