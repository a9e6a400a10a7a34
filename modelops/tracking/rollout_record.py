"""Record a progressive rollout in MLflow: one run per rollout, per-step metrics, a plot, model-version statuses.

The run lives in experiment ``modelops/<model>`` and is named ``rollout <deployment>``; it carries the rollout's
params (steps, thresholds, mode), one metric point per judged step (``step`` = the step's index), the PNG plot of
p99 and success rate per step, the final state document and the tags ``modelops.outcome`` / ``modelops.error``.
The canary's model version (its manifest's ``model_version``) goes ``canary`` -> ``deployed`` | ``rolled_back``.
Core module: never imports Airflow; every function takes an ``MlflowClient``.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelops.contracts.naming import TAG_DEPLOYMENT, TAG_ERROR, TAG_RUN_ID, TAG_STATUS, deployment_uri, experiment_name
from modelops.contracts.status import Status
from modelops.storage import join
from modelops.tracking.registry import _is_not_found, clear_version_tag, set_version_tags

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from modelops.storage import Storage

log = logging.getLogger(__name__)

TAG_ROLLOUT = "modelops.rollout"  # on the rollout run: the deployment rolled out
TAG_OUTCOME = "modelops.outcome"  # on the rollout run: promoted | rolled_back | stopped
# per judged step: metric name -> how to read it from a state-document analysis entry
STEP_METRICS: dict[str, tuple[str, ...]] = {
    "weight": ("weight",),
    "canary_requests": ("canary", "requests"),
    "canary_success_rate": ("canary", "success_rate"),
    "canary_p99_ms": ("canary", "p99_ms"),
    "stable_requests": ("stable", "requests"),
    "stable_success_rate": ("stable", "success_rate"),
    "stable_p99_ms": ("stable", "p99_ms"),
}


def _dig(entry: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = entry
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def canary_version(storage: Storage, triton_bucket: str, deployment: str) -> tuple[str, str] | None:
    """``(registered model, version)`` of a deployment, from its manifest; None when it has no readable manifest."""
    try:
        manifest = storage.read_json(join(deployment_uri(triton_bucket, deployment), "manifest.json"))
        return str(manifest["model"]), str(manifest["model_version"])
    except (FileNotFoundError, KeyError, TypeError, ValueError) as exc:
        log.warning("no model version for %s: %s", deployment, exc)
        return None


def open_rollout_run(client: MlflowClient, model: str, deployment: str, airflow_run_id: str,
                     params: dict[str, Any]) -> str:
    """The MLflow run of this rollout, created once per Airflow run (a retried task finds it again).

    Args:
        client: MLflow client (tracking).
        model: public (registered) model name; the experiment is ``modelops/<model>``.
        deployment: the canary deployment; the run is named ``rollout <deployment>``.
        airflow_run_id: the DAG run id, kept in the tag ``airflow.run_id``.
        params: logged as run params (lists joined by commas, None as an empty string).

    Returns:
        The MLflow run id.
    """
    exp = client.get_experiment_by_name(experiment_name(model))
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment_name(model))
    safe_id = airflow_run_id.replace("'", "")
    found = client.search_runs([exp_id], filter_string=f"tags.`airflow.run_id` = '{safe_id}'", max_results=1)
    if found:
        return found[0].info.run_id
    run = client.create_run(exp_id, run_name=f"rollout {deployment}"[:250],
                            tags={"airflow.run_id": safe_id, "modelops.model": model, TAG_ROLLOUT: deployment})
    for key, value in params.items():
        text = ",".join(map(str, value)) if isinstance(value, list | tuple) else "" if value is None else str(value)
        client.log_param(run.info.run_id, key, text)
    return run.info.run_id


def mark_version(client: MlflowClient, model: str, version: str, status: str, *, deployment: str | None = None,
                 error: str | None = None, run_id: str | None = None) -> None:
    """Set ``modelops.status`` (and ``modelops.error`` when given, else clear it) on a model version."""
    if status not in {str(s) for s in (Status.CANARY, Status.DEPLOYED, Status.ROLLED_BACK)}:
        raise ValueError(f"not a rollout status: {status!r}")
    tags: dict[str, Any] = {TAG_STATUS: status}
    if deployment:
        tags[TAG_DEPLOYMENT] = deployment
    if run_id:
        tags[TAG_RUN_ID] = run_id
    if error:
        tags[TAG_ERROR] = error.splitlines()[0][:500]
    try:
        set_version_tags(client, model, version, tags)
    except Exception as exc:
        if not _is_not_found(exc):
            raise
        # a deployment published without a registered version (or whose version was deleted) still rolls out
        log.warning("model version %s/%s is not in the MLflow registry: status %s not recorded on it",
                    model, version, status)
        return
    if not error:
        clear_version_tag(client, model, version, TAG_ERROR)


def log_step(client: MlflowClient, run_id: str, entry: dict[str, Any]) -> dict[str, float]:
    """Log one judged step (an ``analysis`` entry of the state document) with ``step`` = its index.

    Returns:
        The metrics logged (a value missing from the entry, e.g. no p99 yet, is left out).
    """
    index = int(entry["step_index"])
    metrics = {name: v for name, path in STEP_METRICS.items() if (v := _dig(entry, path)) is not None}
    metrics["passed"] = {True: 1.0, False: 0.0}.get(entry.get("passed"), -1.0)  # -1 = no verdict
    for name, value in metrics.items():
        client.log_metric(run_id, name, value, step=index)
    return metrics


def log_ab_comparison(client: MlflowClient, run_id: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Log the A/B comparison of both deployments (an ``analysis`` entry) as ``ab.*`` metrics and a JSON artifact."""
    canary, stable = entry.get("canary") or {}, entry.get("stable") or {}
    comparison = {
        "canary": canary,
        "stable": stable,
        "passed": entry.get("passed"),
        "reasons": entry.get("reasons") or [],
        "winner": (canary.get("deployment") if entry.get("passed") else stable.get("deployment")),
    }
    for side, stats in (("canary", canary), ("stable", stable)):
        for key in ("requests", "success_rate", "p99_ms"):
            if isinstance(stats.get(key), int | float):
                client.log_metric(run_id, f"ab.{side}.{key}", float(stats[key]))
    if isinstance(canary.get("p99_ms"), int | float) and isinstance(stable.get("p99_ms"), int | float) \
            and stable["p99_ms"] > 0:
        client.log_metric(run_id, "ab.p99_ratio", float(canary["p99_ms"]) / float(stable["p99_ms"]))
    client.log_dict(run_id, comparison, "ab_comparison.json")
    return comparison


def plot_steps(analysis: list[dict[str, Any]], path: Path) -> Path | None:
    """p99 (canary vs stable) and canary success rate per judged step, as a PNG; None when nothing was judged."""
    if not analysis:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{int(e['step_index']) + 1}: {e.get('weight')}%" for e in analysis]
    xs = list(range(len(analysis)))
    fig, (ax_p99, ax_ok) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for side, style in (("canary", "o-"), ("stable", "s--")):
        ys = [_dig(e, (side, "p99_ms")) for e in analysis]
        if any(y is not None for y in ys):
            ax_p99.plot(xs, [float("nan") if y is None else y for y in ys], style, label=f"{side} p99")
    ax_p99.set_ylabel("p99 (ms)")
    ax_p99.set_title("rollout: p99 and success rate per step")
    rates = [_dig(e, ("canary", "success_rate")) for e in analysis]
    colors = ["tab:green" if e.get("passed") else "tab:red" if e.get("passed") is False else "tab:grey"
              for e in analysis]
    ax_ok.scatter(xs, [float("nan") if r is None else r for r in rates], c=colors, s=60, label="canary success rate")
    ax_ok.plot(xs, [float("nan") if r is None else r for r in rates], color="tab:blue", alpha=0.4)
    ax_ok.set_ylabel("success rate")
    ax_ok.set_xticks(xs, labels)
    ax_ok.set_xlabel("step: canary weight")
    for ax in (ax_p99, ax_ok):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def finish_rollout(client: MlflowClient, run_id: str, state: dict[str, Any], outcome: str,
                   error: str | None = None) -> None:
    """Close the rollout run: the plot, the state document, outcome/error tags; FINISHED when promoted, else FAILED.

    Args:
        client: MLflow client.
        run_id: the rollout's MLflow run.
        state: the final state document (``RolloutState.to_json()``).
        outcome: ``promoted`` | ``rolled_back`` | ``stopped``.
        error: the one-line reason of a rollback or stop.
    """
    with tempfile.TemporaryDirectory(prefix="modelops-rollout-") as tmp:
        plot = plot_steps(list(state.get("analysis") or []), Path(tmp) / "rollout_steps.png")
        if plot is not None:
            client.log_artifact(run_id, str(plot))
        (Path(tmp) / "rollout_state.json").write_text(json.dumps(state, indent=2, default=str))
        client.log_artifact(run_id, str(Path(tmp) / "rollout_state.json"))
    client.set_tag(run_id, TAG_OUTCOME, outcome)
    if error:
        client.set_tag(run_id, TAG_ERROR, error.splitlines()[0][:500])
    client.set_terminated(run_id, status="FINISHED" if outcome == "promoted" else "FAILED")
