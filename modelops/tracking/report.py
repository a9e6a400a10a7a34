"""The per-run HTML report: variants table, embedded plots, and why each variant was not chosen.

A pure renderer over ``record``'s summary (plain string templates with every value escaped; no template
engine, so it renders in either environment). ``record`` logs the result to MLflow as ``report.html``.
"""

from __future__ import annotations

import base64
import html
import math
from typing import Any

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


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """A table cell: numbers to ``digits`` significant digits, None/NaN as an en dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return _e(value)


def _extras(extra: dict[str, Any] | None) -> str:
    return "<br>".join(f"{_e(k)}={fmt(v)}" for k, v in sorted((extra or {}).items())) or "–"


def _gate(expectations: dict[str, Any] | None) -> str:
    if not expectations:
        return "–"
    if expectations.get("success"):
        return "passed"
    return f"failed {len(expectations.get('failed') or [])}"


def why_not_chosen(row: dict[str, Any], chosen: dict[str, Any] | None) -> str:
    """One sentence: why ``row`` lost (rejected/failed/skipped/excluded reason, or slower than the winner)."""
    status = row.get("status")
    if status == "slower" and chosen is not None:
        return (
            f"accurate and within the latency SLO, but slower than {chosen['variant']}: "
            f"{fmt(row.get('throughput'))} vs {fmt(chosen.get('throughput'))} infer/s"
        )
    return row.get("reason") or status or "unknown"


def _img(title: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<h3>{_e(title)}</h3>\n<img alt="{_e(title)}" src="data:image/png;base64,{data}">'


def _variants_table(summary: dict[str, Any]) -> str:
    metric_name = summary.get("metric_name") or "metric"
    head = (
        "<tr><th class='l'>variant</th><th class='l'>status</th>"
        f"<th>{_e(metric_name)}</th><th class='l'>extra metrics</th><th>p50 ms</th><th>p99 ms</th>"
        "<th>throughput (infer/s)</th><th>concurrency</th><th>speedup vs baseline</th><th>gate</th></tr>"
    )
    body = []
    for row in summary.get("rows", []):
        status = row.get("status") or ""
        body.append(
            f"<tr class='{_e(status)}'><td class='l'>{_e(row['variant'])}</td><td class='l'>{_e(status)}</td>"
            f"<td>{fmt(row.get('metric'))}</td><td class='l'>{_extras(row.get('extra_metrics'))}</td>"
            f"<td>{fmt(row.get('p50_ms'))}</td><td>{fmt(row.get('p99_ms'))}</td>"
            f"<td>{fmt(row.get('throughput'))}</td><td>{fmt(row.get('concurrency'))}</td>"
            f"<td>{fmt(row.get('speedup'), 3)}{'×' if row.get('speedup') is not None else ''}</td>"
            f"<td>{_gate(row.get('expectations'))}</td></tr>"
        )
    return f"<table>\n{head}\n" + "\n".join(body) + "\n</table>"


def _failed_table(failed: list[dict[str, Any]]) -> str:
    rows = "\n".join(
        f"<tr><td class='l'><code>{_e(f.get('expectation'))}</code></td><td class='l'>{_e(f.get('column') or '–')}</td>"
        f"<td>{fmt(f.get('observed'))}</td><td class='l'>{_e(f.get('expected'))}</td>"
        f"<td class='l'>{_e(f.get('detail'))}</td></tr>"
        for f in failed
    )
    return (
        "<table><tr><th class='l'>failed expectation</th><th class='l'>column</th><th>observed</th>"
        f"<th class='l'>expected</th><th class='l'>detail</th></tr>\n{rows}\n</table>"
    )


def _why_section(summary: dict[str, Any]) -> str:
    rows = summary.get("rows", [])
    chosen = next((r for r in rows if r.get("status") == "chosen"), None)
    losers = [r for r in rows if r.get("status") not in ("chosen", "source")]
    not_built = summary.get("not_built") or {}
    if not losers and not not_built:
        return "<p class='muted'>Every candidate was chosen or there were none.</p>"
    parts = ["<ul>"]
    for variant, info in not_built.items():
        status = info.get("status") or "failed"
        parts.append(f"<li><b>{_e(variant)}</b> ({_e(status)} in optimize): {_e(info.get('reason') or status)}</li>")
    for row in losers:
        item = f"<li><b>{_e(row['variant'])}</b> ({_e(row.get('status'))}): {_e(why_not_chosen(row, chosen))}"
        failed = (row.get("expectations") or {}).get("failed") or []
        if failed:
            item += f"\n<br>Suite <code>{_e(row['expectations'].get('suite', ''))}</code>:\n" + _failed_table(failed)
        parts.append(item + "</li>")
    parts.append("</ul>")
    return "\n".join(parts)


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
    title = f"ModelOps report: {summary.get('model')} version {summary.get('model_version')}"
    if summary.get("chosen"):
        outcome = (
            f"Chosen <b>{_e(summary['chosen'])}</b> at {fmt(summary.get('speedup'), 3)}× the baseline's throughput"
            + (f", deployed as <code>{_e(summary['deployment'])}</code>." if summary.get("deployment") else ".")
        )
    else:
        outcome = f"No variant chosen: {_e(summary.get('reason') or 'no candidate')}"
    rules = (
        f"Accuracy gate: {_e(summary.get('metric_name') or 'metric')} ≥ source ({fmt(summary.get('source_metric'))})"
        f" − tolerance {fmt(summary.get('accuracy_tolerance'))}, and the recipe's expectation suite on the"
        f" per-sample comparison table. Latency SLO: p99 ≤ {fmt(summary.get('latency_slo_ms'))} ms; the chosen"
        " variant has the highest throughput under it."
    )
    images = "\n".join(_img(t, png) for t, png in (plots or {}).items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{_e(title)}</h1>
<p class="muted">MLflow run {_e(summary.get("run_id"))}</p>
<p>{outcome}</p>
<p>{rules}</p>
<h2>Variants</h2>
{_variants_table(summary)}
<h2>Why the others were not chosen</h2>
{_why_section(summary)}
<h2>Plots</h2>
{images or "<p class='muted'>No benchmark points to plot.</p>"}
</body></html>
"""
