"""Optimization without Airflow: :func:`optimize` (``modelops.optimize``) and ``modelops optimize MODEL_URI``.

The same run as ``optimize_model``: resolve (the version, recipe, data, MLflow run and lease), the heavy steps
(export, optimize, compile when an engine variant is asked, validate, benchmark) as local subprocesses in the
worker environment, select, and the MLflow record and model-version tags. Nothing is loaded in Triton and nothing
routed: the chosen candidate is published to the S3 Triton repository only when ``publish`` is asked, and the
version keeps the serving status it had (``modelops.variant``/``speedup``/``run_id`` say what was found).

MLflow is the one ``MLFLOW_TRACKING_URI`` names (with ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``) and S3 the one the
``AWS_*`` variables name; :func:`stack_environment` gives both for the embedded stack.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelops.contracts.status import Status

log = logging.getLogger(__name__)

_MODEL_URI = re.compile(r"^models:/(?P<name>[A-Za-z0-9][A-Za-z0-9_.\-]*)(?:/(?P<version>[0-9]+)|@(?P<alias>[A-Za-z0-9_\-]+))$")


class OptimizeError(Exception):
    """The optimization could not run or a step failed; one line naming why (also on the model version)."""


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``(name, version, alias)`` of ``models:/<name>/<version>`` or ``models:/<name>@<alias>``.

    Raises:
        OptimizeError: any other form.
    """
    m = _MODEL_URI.match((uri or "").strip())
    if not m:
        raise OptimizeError(f"model URI {uri!r} is not models:/<name>/<version> or models:/<name>@<alias>")
    return m["name"], m["version"], m["alias"]


def stack_environment() -> dict[str, str]:
    """MLflow and S3 variables of the running embedded stack (its ``airflow`` MLflow user, ``pipeline`` S3 identity).

    Raises:
        OptimizeError: no stack is running here.
    """
    from modelops.local import stack

    status = stack.status()
    if not status.get("initialized") or not status.get("mlflow", {}).get("running"):
        raise OptimizeError(f"no MLflow: set MLFLOW_TRACKING_URI, or start the embedded stack (`modelops stack up`; "
                            f"none runs in {status.get('stack_dir')})")  # fmt: skip
    return {k: v for k, v in stack.client_env(status).items() if not k.startswith("AIRFLOW_CONN_")}


def _run_step(step: str, spec_uri: str, settings: Any, workdir: Path, env: dict[str, str]) -> tuple[int, dict | None, str]:
    """One heavy step in the worker environment; ``(exit code, result, last error line)``."""
    from modelops.process_tree import die_with_parent
    from modelops.steps import step_command

    result = workdir / f"{step}.json"
    cmd = [str(settings.worker_python), *step_command(step, spec_uri, str(result))]
    step_env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(settings.repo_root), env.get("PYTHONPATH")])),
                "PYTHONUNBUFFERED": "1"}  # fmt: skip
    proc = subprocess.run(cmd, env=step_env, cwd=workdir, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=settings.step_timeout_s, check=False, preexec_fn=die_with_parent())
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    reason = next((line for line in reversed(lines) if line.startswith(f"{step}:")), lines[-1] if lines else "")
    loaded = json.loads(result.read_text()) if result.exists() else None
    return proc.returncode, loaded, reason


def optimize(
    model_uri: str,
    *,
    variants: list[str] | None = None,
    eval_data: str | None = None,
    publish: bool = False,
    latency_slo_ms: float = 100.0,
    accuracy_tolerance: float = 0.01,
    config_search: bool = True,
    recipe: str | None = None,
    env: dict[str, str] | None = None,
    on_step: Callable[[str, str], None] | None = None,
) -> dict[str, Any]:
    """Optimize a registered model version outside Airflow, as ``optimize_model`` does (without serving it).

    Args:
        model_uri: ``models:/<name>/<version>`` or ``models:/<name>@<alias>``.
        variants: candidates to build (default: the recipe's family defaults,
            :data:`~modelops.contracts.variants.KIND_DEFAULTS`).
        eval_data: an ``eval_data_uri`` (S3 or local Parquet / CSV / JSON lines / npz) for the gate and calibration.
        publish: publish the chosen candidate to the S3 Triton repository (an immutable deployment, not loaded).
        latency_slo_ms, accuracy_tolerance, config_search, recipe: as the DAG's params.
        env: MLflow and S3 variables (default: this process's environment; :func:`stack_environment` for the
            embedded stack).
        on_step: called with ``(step, status)`` as each step ends (progress for a CLI or notebook).

    Returns:
        ``{"model_name", "model_version", "eval_data", "chosen_variant", "variants": [{"variant", "status",
        "metric", "throughput", "reason"}], "mlflow_run_id", "summary"}`` and ``"deployment"`` when published.

    Raises:
        OptimizeError: one line naming why (a refused request, a failed step, a failed publish).
    """
    from modelops.runs.outcome import publish_run, select_run
    from modelops.runs.resolve import RunRefused, resolve_run, unlock_optimization
    from modelops.serving.publish import PublishError
    from modelops.settings import Settings
    from modelops.steps import EXIT_SKIPPED
    from modelops.steps._common import load_result
    from modelops.storage import S3Config, Storage
    from modelops.tracking.record import record_run
    from modelops.tracking.registry import mark_failed

    env = dict(os.environ if env is None else {**os.environ, **env})
    if not env.get("MLFLOW_TRACKING_URI"):
        raise OptimizeError("no MLflow: set MLFLOW_TRACKING_URI (or use the embedded stack)")
    name, version, alias = parse_model_uri(model_uri)
    settings = Settings.from_env()
    client = _client(env)
    storage = Storage(S3Config.from_env(env))
    params = {"model_name": name, "model_version": version, "model_alias": alias, "variants": variants or None,
              "latency_slo_ms": latency_slo_ms, "accuracy_tolerance": accuracy_tolerance, "rollout": 100,
              "config_search": config_search, "eval_data_uri": eval_data, "recipe": recipe}  # fmt: skip
    run_key = f"local__{uuid.uuid4().hex[:12]}"
    before = _status_of(client, name, version, alias)
    try:
        meta = resolve_run(client, storage, settings, params, run_key)
    except RunRefused as exc:
        raise OptimizeError(str(exc)) from None
    _notify(on_step, "resolve", f"done (eval data: {meta['eval_data']})")
    spec = storage.read_json(meta["spec_uri"])
    try:
        steps = ["export", "optimize", *(["compile"] if meta["engine_variants"] else []), "validate", "benchmark"]
        with tempfile.TemporaryDirectory(prefix="modelops-optimize-local-") as tmp:
            for step in steps:
                rc, _, reason = _run_step(step, meta["spec_uri"], settings, Path(tmp), env)
                if rc == EXIT_SKIPPED:
                    _notify(on_step, step, f"skipped: {reason}")
                    continue
                if rc != 0:
                    error = reason if reason.startswith(f"{step}:") else f"{step}: {reason or f'exit code {rc}'}"
                    mark_failed(client, meta["model_name"], meta["model_version"], error, meta["run_id"])
                    raise OptimizeError(error)
                _notify(on_step, step, "done")
        selection = select_run(storage, spec)
        publication = None
        if publish and selection.get("chosen"):
            try:
                publication = publish_run(storage, spec, selection)
            except PublishError as exc:
                mark_failed(client, meta["model_name"], meta["model_version"], f"publish: {exc}", meta["run_id"])
                raise OptimizeError(f"publish: {exc}") from None
            _notify(on_step, "publish", publication["deployment"])
        results = {s: load_result(storage, spec, s) for s in ("export", "optimize", "validate", "benchmark")}
        summary = record_run(client, storage, spec, results, selection, publication, serving=False)
        if selection.get("chosen"):  # nothing was served: the version keeps the serving status it had
            _restore_status(client, meta["model_name"], meta["model_version"], before)
    except OptimizeError:
        raise
    except Exception as exc:  # the version must not stay "optimizing": say why on it, then fail as is
        mark_failed(client, meta["model_name"], meta["model_version"], f"{type(exc).__name__}: {exc}", meta["run_id"])
        raise
    finally:
        unlock_optimization(storage, settings.triton_bucket, meta["model_name"], meta["model_version"], run_key)
    out = {
        "model_name": meta["model_name"],
        "model_version": meta["model_version"],
        "eval_data": meta["eval_data"],
        "chosen_variant": selection.get("chosen"),
        "variants": [{"variant": r["variant"], "status": r["status"], "metric": r.get("metric"),
                      "throughput": r.get("throughput"), "reason": r.get("reason")} for r in summary["rows"]],
        "mlflow_run_id": meta["run_id"],
        "generative": bool(selection.get("generative")),
        "summary": summary,
    }  # fmt: skip
    if publication is not None:
        out["deployment"] = publication["deployment"]
    return out


def _client(env: dict[str, str]):
    """An MlflowClient on ``env``'s tracking URI and login (MLflow reads the login from the process environment)."""
    from mlflow import MlflowClient

    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        if env.get(key):
            os.environ[key] = env[key]
    return MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])


def _status_of(client: Any, name: str, version: str | None, alias: str | None) -> str | None:
    from modelops.contracts.naming import TAG_STATUS

    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except Exception:  # noqa: BLE001 - resolve says why in one line
        return None
    return (mv.tags or {}).get(TAG_STATUS)


def _restore_status(client: Any, name: str, version: str, before: str | None) -> None:
    from modelops.contracts.naming import TAG_STATUS
    from modelops.tracking.registry import clear_version_tag, set_version_tags

    if before and before not in (Status.OPTIMIZING, Status.FAILED):
        set_version_tags(client, name, version, {TAG_STATUS: before})
    else:
        clear_version_tag(client, name, version, TAG_STATUS)


def _notify(on_step: Callable[[str, str], None] | None, step: str, status: str) -> None:
    log.info("%s: %s", step, status)
    if on_step is not None:
        on_step(step, status)
