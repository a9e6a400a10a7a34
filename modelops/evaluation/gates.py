"""Accuracy gates: a per-sample comparison table of candidate vs source, validated by a GX expectation suite.

The validate step builds one table per candidate (:func:`comparison_table`), derives thresholds from the
recipe and the run's accuracy tolerance (:func:`thresholds_for`), and validates the table with a great
expectations (GX Core 1.x) suite in an ephemeral, in-memory context (:func:`validate_table`). Everything
here is pure apart from GX itself, which is imported lazily: it takes seconds to import.

Recipes may tune the gate with optional attributes (all read with ``getattr``):

- ``task``: ``"classification"`` (top-1 agreement gate), ``"embedding"`` (per-sample cosine gate) or
  ``"regression"`` (per-sample relative error gate); inferred from outputs and labels when absent.
- ``gate_min_cosine`` (default ``1 - tolerance``), ``gate_max_rel_err`` (default ``0.05``),
  ``gate_mostly`` (default ``0.99``: the share of rows that must pass a per-row expectation).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from modelops.evaluation.metrics import row_cosine

if TYPE_CHECKING:
    import pandas as pd

TASKS = ("classification", "embedding", "regression")
DEFAULT_MOSTLY = 0.99
DEFAULT_MAX_REL_ERR = 0.05
_PARTIAL_LIST = 5  # unexpected values quoted per failed expectation


@dataclass(frozen=True)
class GateThresholds:
    """What a candidate's comparison table must satisfy. ``None`` disables that expectation."""

    task: str
    min_agreement: float | None = None  # mean of ``agree``
    min_cosine: float | None = None  # per row, for ``mostly`` of the rows
    max_rel_err: float | None = None  # per row, for ``mostly`` of the rows
    mostly: float = DEFAULT_MOSTLY

    @property
    def suite_name(self) -> str:
        """A name that says what the suite checks, e.g. ``accuracy_gate.classification.agree>=0.99``."""
        parts = [f"accuracy_gate.{self.task}"]
        if self.min_agreement is not None:
            parts.append(f"agree>={self.min_agreement:.4g}")
        if self.min_cosine is not None:
            parts.append(f"cosine>={self.min_cosine:.4g}@{self.mostly:g}")
        if self.max_rel_err is not None:
            parts.append(f"rel_err<={self.max_rel_err:.4g}@{self.mostly:g}")
        return ".".join(parts)


@dataclass
class GateResult:
    """The outcome of one suite on one table; ``raw`` is GX's result as JSON (for ``expectations.json``)."""

    success: bool
    suite: str
    failed: list[dict[str, Any]] = field(default_factory=list)
    evaluated: int = 0
    seconds: float = 0.0
    raw: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The part that goes into the validate result: ``{"success", "failed", "suite", "evaluated", "seconds"}``."""
        out = asdict(self)
        out.pop("raw")
        return out

    def reason(self) -> str | None:
        """One line naming the failed expectations, or None when the suite passed."""
        if self.success:
            return None
        return "failed expectations: " + "; ".join(describe(f) for f in self.failed)


def describe(failed: dict[str, Any]) -> str:
    """``expect_column_mean_to_be_between(agree): observed 0.95, expected min_value=0.99``."""
    return f"{failed['expectation']}({failed.get('column') or ''}): {failed['detail']}, expected {failed['expected']}"


def infer_task(source: np.ndarray, labels: np.ndarray | None) -> str:
    """``classification`` for integer outputs or labelled ``[N, classes]`` scores; else embedding/regression."""
    per_row = int(np.prod(source.shape[1:])) if source.ndim > 1 else 1
    if source.dtype.kind in "iub":
        return "classification"
    if per_row > 1:
        return "classification" if labels is not None and source.ndim == 2 else "embedding"
    return "regression"


def thresholds_for(recipe: Any, tolerance: float, source: np.ndarray, labels: np.ndarray | None) -> GateThresholds:
    """The recipe's gate: its declared ``task`` (or the inferred one) with thresholds from ``tolerance``.

    ``recipe`` is a ``modelops.recipes.Recipe``: ``task``, ``gate_mostly``, ``gate_min_cosine`` and
    ``gate_max_rel_err`` default to None there, meaning the defaults below.
    """
    task = recipe.task or infer_task(source, labels)
    if task not in TASKS:
        raise ValueError(f"recipe task {task!r} is not one of {TASKS}")
    mostly = float(DEFAULT_MOSTLY if recipe.gate_mostly is None else recipe.gate_mostly)
    if task == "classification":
        return GateThresholds(task, min_agreement=max(0.0, 1.0 - tolerance), mostly=mostly)
    if task == "embedding":
        min_cosine = 1.0 - tolerance if recipe.gate_min_cosine is None else recipe.gate_min_cosine
        return GateThresholds(task, min_cosine=float(min_cosine), mostly=mostly)
    max_rel_err = DEFAULT_MAX_REL_ERR if recipe.gate_max_rel_err is None else recipe.gate_max_rel_err
    return GateThresholds(task, max_rel_err=float(max_rel_err), mostly=mostly)


def _rows(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).reshape(len(a), -1)


def comparison_table(
    candidate: dict[str, np.ndarray],
    source: dict[str, np.ndarray],
    primary: str | None = None,
    labels: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per eval sample comparing a candidate's outputs with the source's.

    Columns: ``sample``; ``label`` (when labels are given); for class-like primary outputs
    (integer labels or ``[N, classes]`` scores) ``source_pred``, ``candidate_pred``, ``agree`` (0/1);
    for float outputs with more than one value per row ``cosine``; for one float per row ``rel_err``
    (``|c - s| / max(|s|, mean |s|)``); always ``abs_err_max`` (over every output) and ``is_finite``
    (every float value of every candidate output is finite). Non-finite rows get NaN cosine/rel_err.
    """
    import pandas as pd

    primary = primary or next(iter(source))
    src, cand = np.asarray(source[primary]), np.asarray(candidate[primary])
    n = len(src)
    table: dict[str, Any] = {"sample": np.arange(n)}
    if labels is not None and np.asarray(labels).shape[:1] == (n,) and np.asarray(labels).ndim == 1:
        table["label"] = np.asarray(labels)
    s_rows, c_rows = _rows(src), _rows(cand)
    if src.dtype.kind in "iub" and s_rows.shape[1] == 1:
        table["source_pred"], table["candidate_pred"] = s_rows[:, 0], c_rows[:, 0]
    elif s_rows.shape[1] > 1 and src.ndim == 2:
        table["source_pred"], table["candidate_pred"] = src.argmax(axis=1), np.nan_to_num(cand).argmax(axis=1)
    if "source_pred" in table:
        table["agree"] = (table["source_pred"] == table["candidate_pred"]).astype(np.int64)
    finite = np.ones(n, dtype=bool)
    for out in candidate.values():
        if np.asarray(out).dtype.kind == "f":
            finite &= np.isfinite(_rows(out)).all(axis=1)
    if src.dtype.kind == "f":
        s64, c64 = s_rows.astype(np.float64), c_rows.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            if s64.shape[1] > 1:
                table["cosine"] = row_cosine(s64, c64)  # two identical (even all-zero) rows agree
            else:
                scale = max(float(np.nanmean(np.abs(s64))), 1e-12)
                table["rel_err"] = np.abs(c64[:, 0] - s64[:, 0]) / np.maximum(np.abs(s64[:, 0]), scale)
        for col in ("cosine", "rel_err"):
            if col in table:
                table[col] = np.where(finite, table[col], np.nan)
    errs = [
        np.abs(_rows(candidate[k]).astype(np.float64) - _rows(v).astype(np.float64)).max(axis=1, initial=0.0)
        for k, v in source.items()
        if k in candidate and np.asarray(v).size
    ]
    with np.errstate(invalid="ignore"):
        table["abs_err_max"] = np.max(np.stack(errs), axis=0) if errs else np.zeros(n)
    table["is_finite"] = finite
    return pd.DataFrame(table)


def build_suite(thresholds: GateThresholds, columns: list[str], context: Any = None) -> Any:
    """The GX ``ExpectationSuite`` for ``thresholds``, limited to the columns the table has.

    GX binds a suite to the current data context, so one is made first unless ``context`` is given.
    """
    import great_expectations as gx
    import great_expectations.expectations as gxe

    if context is None:
        _context()
    suite = gx.ExpectationSuite(name=thresholds.suite_name)
    suite.add_expectation(gxe.ExpectTableRowCountToBeBetween(min_value=1))
    suite.add_expectation(gxe.ExpectColumnValuesToBeInSet(column="is_finite", value_set=[True]))
    if thresholds.min_agreement is not None and "agree" in columns:
        suite.add_expectation(gxe.ExpectColumnMeanToBeBetween(column="agree", min_value=thresholds.min_agreement))
    if thresholds.min_cosine is not None and "cosine" in columns:
        suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column="cosine"))
        suite.add_expectation(
            gxe.ExpectColumnValuesToBeBetween(
                column="cosine", min_value=thresholds.min_cosine, mostly=thresholds.mostly
            )
        )
    if thresholds.max_rel_err is not None and "rel_err" in columns:
        suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column="rel_err"))
        suite.add_expectation(
            gxe.ExpectColumnValuesToBeBetween(
                column="rel_err", max_value=thresholds.max_rel_err, mostly=thresholds.mostly
            )
        )
    return suite


def import_in_background() -> threading.Thread:
    """Start importing GX in a daemon thread and return it: the import takes 3-4 s of the validate step (8.7 s under
    a profiler), nearly all of digits' gate, and can overlap the source model's ONNX Runtime run, which releases the
    GIL. A failed import is left to :func:`validate_table` to report."""

    def load() -> None:
        try:
            _context()
        except Exception as exc:  # noqa: BLE001 - validate_table imports again and raises with the real reason
            logging.getLogger(__name__).debug("background GX import failed: %s", exc)

    thread = threading.Thread(target=load, name="gx-import", daemon=True)
    thread.start()
    return thread


def _context() -> Any:
    """An in-memory GX context: no files, no data docs, no progress bars, no analytics."""
    # GX logs ~100 INFO lines per context ("Skipping registering function ...", "Loading 'datasources'"): noise in
    # the step's task log; its warnings still show
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        progress_bars=ProgressBarsConfig(globally=False),
        analytics_enabled=False,
    )
    return gx.get_context(project_config=config, mode="ephemeral")


def _number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def failed_entry(result: dict[str, Any]) -> dict[str, Any]:
    """A failed GX expectation result as ``{"expectation", "column", "observed", "expected", "detail"}``.

    ``observed`` is a number: the observed value (aggregate expectations) or the percentage of unexpected
    rows, missing ones included (per-row expectations).
    """
    config = result.get("expectation_config") or {}
    kwargs = config.get("kwargs") or {}
    res = result.get("result") or {}
    expected = ", ".join(
        f"{k}={kwargs[k]}" for k in ("min_value", "max_value", "value_set", "mostly") if kwargs.get(k) is not None
    )
    if "observed_value" in res:
        observed = _number(res["observed_value"])
        detail = f"observed {res['observed_value']}"
    else:
        count, missing = int(res.get("unexpected_count") or 0), int(res.get("missing_count") or 0)
        total = int(res.get("element_count") or 0)
        observed = round(100.0 * (count + missing) / total, 3) if total else None
        examples = (res.get("partial_unexpected_list") or [])[:_PARTIAL_LIST]
        detail = f"{count} unexpected + {missing} missing of {total} rows"
        if examples:
            detail += f" (e.g. {', '.join(f'{v:.6g}' if isinstance(v, float) else str(v) for v in examples)})"
    if result.get("exception_info", {}).get("raised_exception"):
        detail = f"raised {result['exception_info'].get('exception_message')}"
    return {
        "expectation": config.get("type", "unknown"),
        "column": kwargs.get("column"),
        "observed": observed,
        "expected": expected or "-",
        "detail": detail,
    }


def validate_table(table: pd.DataFrame, thresholds: GateThresholds) -> GateResult:
    """Validate ``table`` with the suite for ``thresholds`` in a fresh ephemeral GX context."""
    started = time.perf_counter()
    context = _context()
    suite = build_suite(thresholds, list(table.columns), context)
    asset = context.data_sources.add_pandas("comparison").add_dataframe_asset("table")
    batch = asset.add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": table})
    raw = batch.validate(suite).to_json_dict()
    failed = [failed_entry(r) for r in raw.get("results", []) if not r.get("success")]
    return GateResult(
        success=bool(raw.get("success")) and not failed,
        suite=thresholds.suite_name,
        failed=failed,
        evaluated=len(raw.get("results", [])),
        seconds=round(time.perf_counter() - started, 3),
        raw=raw,
    )
