"""Record a finished run in MLflow: per-variant metrics, gate results, perf CSVs, plots, an HTML report, tags.

Everything lands in the run opened by ``resolve`` (experiment ``modelops/<model>``); the model version
gets the contract tags (``modelops.status`` and friends).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelops.contracts.naming import TAG_DEPLOYMENT, TAG_ERROR, TAG_RUN_ID, TAG_SPEEDUP, TAG_STATUS, TAG_VARIANT
from modelops.contracts.status import Status
from modelops.storage import Storage
from modelops.tracking.registry import clear_version_tag, set_version_tags
from modelops.tracking.report import render_report

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)


def summary_rows(
    validate: dict[str, Any], benchmark: dict[str, Any], selection: dict[str, Any]
) -> list[dict[str, Any]]:
    """One row per variant (baseline first): accuracy, best-under-SLO latency/throughput, verdict."""
    rows = []
    scores = {"baseline": selection["baseline"], **selection["scores"]}
    candidates = validate.get("candidates", {})
    for variant, score in scores.items():
        verdict = candidates.get(variant, {})
        metric = verdict.get("metric") if variant != "baseline" else validate.get("source_metric")
        bench = benchmark.get("variants", {}).get(variant, {})
        rows.append(
            {
                "variant": variant,
                "metric": metric,
                "status": _status(variant, verdict, score, selection["chosen"]),
                "throughput": score.get("throughput"),
                "p50_ms": score.get("p50_ms"),
                "p99_ms": score.get("p99_ms"),
                "concurrency": score.get("concurrency"),
                "speedup": round(score["throughput"] / scores["baseline"]["throughput"], 3)
                if score.get("throughput") and scores["baseline"].get("throughput")
                else None,
                "reason": score.get("reason") if variant != selection["chosen"] else None,
                "extra_metrics": verdict.get("extra_metrics") or {},
                "expectations": _gate_summary(verdict.get("expectations")),
                "points": bench.get("points", []),
            }
        )
    return rows


def _gate_summary(expectations: dict[str, Any] | None) -> dict[str, Any] | None:
    """validate's ``expectations`` without the artifact URI: ``{"success", "suite", "failed"}``."""
    if not expectations:
        return None
    return {k: expectations.get(k) for k in ("success", "suite", "failed")}


def _status(variant: str, verdict: dict[str, Any], score: dict[str, Any], chosen: str | None) -> str:
    """chosen | source | rejected/failed (accuracy gate) | excluded (benchmark failed or SLO missed) | slower."""
    if variant == chosen:
        return Status.CHOSEN
    if variant == "baseline":
        return Status.SOURCE
    if verdict.get("status") != Status.ACCEPTED:
        return verdict.get("status") or Status.FAILED
    return Status.SLOWER if score["eligible"] else Status.EXCLUDED


def plot_search(searches: dict[str, Any], slo_ms: float, path: Path) -> Path | None:
    """The configuration search's plot (every measured configuration); see ``config_search.plot_search``."""
    from modelops.evaluation.config_search import plot_search as plot

    return plot(searches, slo_ms, path)


def _pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display; imported only when a plot is drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, ax: Any, path: Path) -> Path:
    """The finish both plots share: grid, legend, PNG at ``path``; the figure is closed."""
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_throughput_vs_p99(benchmark: dict[str, Any], slo_ms: float, path: Path) -> Path:
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant, res in benchmark.get("variants", {}).items():
        pts = sorted(res.get("points", []), key=lambda p: p["concurrency"])
        if not pts:
            continue
        ax.plot([p["p99_ms"] for p in pts], [p["throughput"] for p in pts], marker="o", label=variant)
        for p in pts:
            ax.annotate(
                f"c{p['concurrency']}",
                (p["p99_ms"], p["throughput"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.axvline(slo_ms, color="grey", linestyle="--", linewidth=1, label=f"SLO {slo_ms:g} ms")
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("throughput (infer/s)")
    ax.set_title("perf_analyzer: throughput vs p99 per variant")
    return _save(fig, ax, path)


def plot_accuracy_vs_throughput(
    rows: list[dict[str, Any]], metric_name: str, floor: float | None, path: Path
) -> Path | None:
    """Each variant's accuracy metric against its best throughput (under the SLO, else at any latency).

    ``floor`` (source metric - tolerance) is drawn as the gate line. Returns None when nothing has both.
    """
    points = []
    for row in rows:
        throughput = row.get("throughput") or max((p["throughput"] for p in row.get("points") or []), default=None)
        if throughput is not None and row.get("metric") is not None:
            points.append((row["variant"], float(throughput), float(row["metric"]), row.get("status")))
    if not points:
        return None
    plt = _pyplot()

    markers = {"chosen": "*", "source": "s", "rejected": "x", "failed": "x", "excluded": "v"}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant, throughput, metric, status in points:
        ax.scatter([throughput], [metric], marker=markers.get(status or "", "o"), s=90, label=f"{variant} ({status})")
        ax.annotate(variant, (throughput, metric), fontsize=7, xytext=(4, 4), textcoords="offset points")
    if floor is not None:
        ax.axhline(floor, color="grey", linestyle="--", linewidth=1, label=f"gate: {metric_name} >= {floor:.4g}")
    ax.set_xlabel("best throughput (infer/s)")
    ax.set_ylabel(metric_name)
    ax.set_title(f"accuracy vs throughput per variant ({metric_name})")
    return _save(fig, ax, path)


def not_built(optimize: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Variants optimize could not build (failed, or skipped e.g. TensorRT without a GPU), with the reason."""
    return {
        variant: {"status": cand.get("status") or Status.FAILED, "reason": cand.get("reason")}
        for variant, cand in optimize.get("candidates", {}).items()
        if cand.get("status") != Status.DONE
    }


def gate_metrics(validate: dict[str, Any]) -> dict[str, float]:
    """MLflow metrics from validate: extra metrics, gate pass/fail and the failed expectations' observed values."""
    metrics: dict[str, float] = {}
    for variant, verdict in validate.get("candidates", {}).items():
        for name, value in (verdict.get("extra_metrics") or {}).items():
            if value is not None:
                metrics[f"{variant}.{name}"] = float(value)
        gx = verdict.get("expectations")
        if not gx:
            continue
        metrics[f"{variant}.gate_passed"] = 1.0 if gx.get("success") else 0.0
        metrics[f"{variant}.gate_failed_expectations"] = float(len(gx.get("failed") or []))
        for failed in gx.get("failed") or []:
            if failed.get("observed") is not None:
                key = f"{variant}.gate.{failed['expectation']}.{failed.get('column') or 'table'}"
                metrics[key] = float(failed["observed"])
    return metrics


def _download_gate_artifacts(storage: Storage, validate: dict[str, Any], dest: Path) -> None:
    """Each candidate's ``comparison.csv`` and ``expectations.json`` into ``dest/<variant>/``."""
    for variant, verdict in validate.get("candidates", {}).items():
        uris = {
            "comparison.csv": verdict.get("comparison"),
            "expectations.json": (verdict.get("expectations") or {}).get("uri"),
        }
        for name, uri in uris.items():
            if not uri:
                continue
            try:
                storage.download_file(uri, dest / variant / name)
            except FileNotFoundError:
                log.warning("%s of %s is missing at %s", name, variant, uri)


def record_run(
    client: MlflowClient,
    storage: Storage,
    spec: dict[str, Any],
    results: dict[str, dict[str, Any]],
    selection: dict[str, Any],
    deployment: dict[str, Any] | None,
    serving: bool = True,
) -> dict[str, Any]:
    """Log the run and tag the model version. ``results`` maps step name -> step result.

    ``serving=False`` (``modelops optimize``: nothing is loaded in Triton): a chosen candidate tags its variant,
    speedup and run (and ``modelops.deployment`` when it was published) but no serving status; the caller puts back
    the status the version had. A run with nothing chosen is ``rejected`` either way.
    """
    run_id = spec["run_id"]
    validate, benchmark = results.get("validate", {}), results.get("benchmark", {})
    export = results.get("export", {})
    metrics: dict[str, float] = {}
    if export.get("metrics", {}).get("parity_max_abs_diff") is not None:
        metrics["export.parity_max_abs_diff"] = float(export["metrics"]["parity_max_abs_diff"])
    if validate.get("source_metric") is not None:
        metrics[f"source.{validate.get('metric_name', 'metric')}"] = float(validate["source_metric"])
    for variant, verdict in validate.get("candidates", {}).items():
        for key in ("metric", "max_abs_diff", "agreement"):
            if verdict.get(key) is not None:
                metrics[f"{variant}.{key}"] = float(verdict[key])
    metrics.update(gate_metrics(validate))
    for variant, res in benchmark.get("variants", {}).items():
        for point in res.get("points", []):
            c = point["concurrency"]
            for key in ("throughput", "p50_ms", "p99_ms", "itl_p50_ms", "ttft_p50_ms"):  # the last two: LLMs
                if point.get(key) is not None:
                    metrics[f"{variant}.c{c}.{key}"] = float(point[key])
    rows = summary_rows(validate, benchmark, selection)
    for row in rows:
        if row["throughput"] is not None:
            metrics[f"{row['variant']}.best_throughput"] = float(row["throughput"])
    if selection.get("speedup") is not None:
        metrics["speedup"] = float(selection["speedup"])
    for key, value in metrics.items():
        client.log_metric(run_id, key.replace(":", "_"), value)

    summary = {
        "model": spec["model_name"],
        "model_version": spec["model_version"],
        "run_id": run_id,
        "chosen": selection.get("chosen"),
        "speedup": selection.get("speedup"),
        "deployment": (deployment or {}).get("deployment"),
        "reason": selection.get("reason"),
        "metric_name": validate.get("metric_name"),
        "source_metric": validate.get("source_metric"),
        "accuracy_tolerance": validate.get("accuracy_tolerance"),
        "latency_slo_ms": spec.get("latency_slo_ms"),
        "rows": rows,
        "not_built": not_built(results.get("optimize", {})),
        "eval_data": spec.get("eval_data") or {},
    }
    with tempfile.TemporaryDirectory(prefix="modelops-record-") as tmp:
        tmpdir = Path(tmp)
        (tmpdir / "summary.json").write_text(json.dumps(summary, indent=2))
        (tmpdir / "spec.json").write_text(json.dumps(spec, indent=2))
        for step, res in results.items():
            (tmpdir / f"{step}_result.json").write_text(json.dumps(res, indent=2))
        client.log_artifacts(run_id, str(tmpdir))
        perf_dir = tmpdir / "perf"
        for variant, res in benchmark.get("variants", {}).items():
            if res.get("csv"):
                try:
                    storage.download_file(res["csv"], perf_dir / f"{variant}.csv")
                except FileNotFoundError:
                    log.warning("perf CSV of %s is missing at %s", variant, res["csv"])
            if (res.get("config_search") or {}).get("csv"):  # every configuration the search measured
                try:
                    storage.download_file(res["config_search"]["csv"], perf_dir / f"{variant}.config_search.csv")
                except FileNotFoundError:
                    log.warning("configuration search CSV of %s is missing", variant)
        if perf_dir.exists():
            client.log_artifacts(run_id, str(perf_dir), artifact_path="perf_analyzer")
        gate_dir = tmpdir / "accuracy"
        _download_gate_artifacts(storage, validate, gate_dir)
        if gate_dir.exists():
            client.log_artifacts(run_id, str(gate_dir), artifact_path="accuracy")
        plots: dict[str, Path] = {}
        if benchmark.get("variants"):
            plots["Throughput vs p99 latency"] = plot_throughput_vs_p99(
                benchmark, spec.get("ttft_slo_ms") if export.get("generative") else spec["latency_slo_ms"],
                tmpdir / "throughput_vs_p99.png",
            )
        searches = {v: r.get("config_search") for v, r in benchmark.get("variants", {}).items()}
        search_plot = plot_search(searches, spec["latency_slo_ms"], tmpdir / "config_search.png")
        if search_plot is not None:
            plots["Configuration search"] = search_plot
        floor = None
        if validate.get("source_metric") is not None:
            floor = float(validate["source_metric"]) - float(validate.get("accuracy_tolerance") or 0.0)
        accuracy_plot = plot_accuracy_vs_throughput(
            rows, validate.get("metric_name") or "metric", floor, tmpdir / "accuracy_vs_throughput.png"
        )
        if accuracy_plot is not None:
            plots["Accuracy vs throughput"] = accuracy_plot
        for plot in plots.values():
            client.log_artifact(run_id, str(plot))
        report = tmpdir / "report.html"
        report.write_text(render_report(summary, {t: p.read_bytes() for t, p in plots.items()}), encoding="utf-8")
        client.log_artifact(run_id, str(report))

    name, version = spec["model_name"], spec["model_version"]
    if not serving and selection.get("chosen"):
        tags = {TAG_VARIANT: selection["chosen"], TAG_SPEEDUP: selection["speedup"], TAG_RUN_ID: run_id}
        if deployment:
            tags[TAG_DEPLOYMENT] = deployment["deployment"]
        clear_version_tag(client, spec["model_name"], spec["model_version"], TAG_ERROR)
    elif deployment:
        tags = {
            # the first rollout step only: rollout_model moves it on to deployed (or rolled_back)
            TAG_STATUS: Status.CANARY if deployment.get("rollout") else Status.DEPLOYED,
            TAG_DEPLOYMENT: deployment["deployment"],
            TAG_VARIANT: selection["chosen"],
            TAG_SPEEDUP: selection["speedup"],
            TAG_RUN_ID: run_id,
        }
        clear_version_tag(client, spec["model_name"], spec["model_version"], TAG_ERROR)
    else:
        tags = {TAG_STATUS: Status.REJECTED, TAG_RUN_ID: run_id, TAG_ERROR: selection.get("reason") or "no candidate"}
    set_version_tags(client, name, version, tags)
    for key in (TAG_STATUS, TAG_DEPLOYMENT, TAG_VARIANT, TAG_SPEEDUP):
        if key in tags:
            client.set_tag(run_id, key, str(tags[key]))
    client.set_terminated(run_id, status="FINISHED")
    return summary
