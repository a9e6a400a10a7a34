"""The per-run HTML report: variants table, embedded plots, and why each variant was not chosen.

A pure renderer over ``record``'s summary: the page is the Jinja2 template ``templates/report.html.j2``
(shipped as package data, autoescaped; Jinja2 is in both environments). ``record`` logs the result to
MLflow as ``report.html``.
"""

from __future__ import annotations

import base64
import functools
import math
from typing import Any

import jinja2

from modelops.contracts.status import Status

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
tr.chosen { background: #e6f4ea; } tr.rejected, tr.failed { background: #fdecea; }
tr.excluded, tr.skipped { background: #fff8e1; }
.muted { color: #777; } img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
code { background: #f6f6f6; padding: 0 3px; }
"""
TEMPLATE = "report.html.j2"


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("modelops.tracking", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


class _Record(dict):
    """A dict whose missing keys read as None in the template, as ``dict.get`` did in the f-string renderer."""

    def __missing__(self, key: str) -> None:
        return None


def _lenient(value: Any) -> Any:
    if isinstance(value, dict):
        return _Record({k: _lenient(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return [_lenient(v) for v in value]
    return value


def fmt(value: Any, digits: int = 4) -> str:
    """A table cell (not escaped): numbers to ``digits`` significant digits, None/NaN as an en dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def why_not_chosen(row: dict[str, Any], chosen: dict[str, Any] | None) -> str:
    """One sentence: why ``row`` lost (rejected/failed/skipped/excluded reason, or slower than the winner)."""
    status = row.get("status")
    if status == "slower" and chosen is not None:
        return (
            f"accurate and within the latency SLO, but slower than {chosen['variant']}: "
            f"{fmt(row.get('throughput'))} vs {fmt(chosen.get('throughput'))} infer/s"
        )
    return row.get("reason") or status or "unknown"


def render_report(summary: dict[str, Any], plots: dict[str, bytes] | None = None) -> str:
    """The HTML report of one model run.

    Args:
        summary: ``record``'s summary: ``model``, ``model_version``, ``run_id``, ``chosen``, ``speedup``,
            ``deployment``, ``reason``, ``metric_name``, ``source_metric``, ``accuracy_tolerance``,
            ``latency_slo_ms`` and ``rows`` (per variant: ``variant``, ``status``, ``metric``,
            ``extra_metrics``, ``p50_ms``, ``p99_ms``, ``throughput``, ``concurrency``, ``speedup``,
            ``reason``, ``expectations`` = ``{"success", "failed": [...], "suite"}``) and ``not_built``
            (variant -> ``{"status", "reason"}`` for variants optimize did not build).
        plots: title -> PNG bytes, embedded as base64 images in this order.

    Returns:
        A self-contained HTML page (no external resources).
    """
    summary = _lenient(summary)
    rows = summary.get("rows") or []
    chosen = next((r for r in rows if r.get("status") == Status.CHOSEN), None)
    losers = [r for r in rows if r.get("status") not in (Status.CHOSEN, Status.SOURCE)]
    return _environment().get_template(TEMPLATE).render(
        summary=summary,
        title=f"ModelOps report: {summary.get('model')} version {summary.get('model_version')}",
        css=_CSS,
        metric_name=summary.get("metric_name") or "metric",
        rows=rows,
        losers=[(row, why_not_chosen(row, chosen)) for row in losers],
        not_built=summary.get("not_built") or {},
        failed=str(Status.FAILED),
        images=[(t, base64.b64encode(png).decode("ascii")) for t, png in (plots or {}).items()],
        format_cell=fmt,
    )
