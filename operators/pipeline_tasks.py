"""Light steps of ``optimize_model``: registry, selection, S3 publish, Triton rollout, MLflow records.

They run inside Airflow workers and call ``modelops`` with clients built by the hooks. DAG files wrap
them in ``@task``; heavy imports happen here, at run time, never at DAG parse time.
"""

from __future__ import annotations

import logging
from typing import Any

from modelops.settings import Settings
from modelops_airflow.connections import Connections

log = logging.getLogger(__name__)

def _hooks(connections: Connections | None):
    """The MLflow, S3 and Triton hooks on the task's connections (its operator's ``*_conn_id`` arguments)."""
    conns = connections or Connections()
    return conns.mlflow(), conns.s3(), conns.triton()


def _fail(message: str):
    from airflow.sdk.exceptions import AirflowFailException

    return AirflowFailException(message)


def resolve(params: dict[str, Any], airflow_run_id: str, connections: Connections | None = None) -> dict[str, Any]:
    """Resolve the MLflow version, pick the recipe, open the MLflow run, prepare the data, write the run spec to S3
    (:func:`modelops.runs.resolve.resolve_run` with this DAG's connections; a refusal fails the task in one line)."""
    from modelops.runs.resolve import RunRefused, resolve_run
    from modelops_airflow.links import mlflow_run_url

    mlflow_hook, s3_hook, _ = _hooks(connections)
    try:
        meta = resolve_run(mlflow_hook.get_client(), s3_hook.storage(), Settings.from_env(), params, airflow_run_id)
    except RunRefused as exc:
        raise _fail(str(exc)) from None
    # where the run's extra links point (the step tasks' "MLflow run" and "Run report")
    return {**meta, "mlflow_run_url": mlflow_run_url(mlflow_hook.tracking_uri(), meta["experiment_id"], meta["run_id"])}


def _lock_optimization(storage, triton_bucket: str, model: str, version: str | int, owner: str):
    """Take the (model, version) optimization lease for this Airflow run, or fail the run with the holder's line."""
    from modelops.runs.resolve import RunRefused, lock_optimization

    try:
        return lock_optimization(storage, triton_bucket, model, version, owner)
    except RunRefused as exc:
        raise _fail(str(exc)) from None


def _fence(storage, spec: dict[str, Any]) -> None:
    """Renew the run's optimization lease before a step that writes, or fail the task saying it was lost."""
    from modelops.runs.resolve import RunRefused, fence_optimization

    try:
        fence_optimization(storage, spec["triton_bucket"], spec["model_name"], spec["model_version"], _airflow_run_id())
    except RunRefused as exc:
        raise _fail(str(exc)) from None


def _unlock_optimization(storage, triton_bucket: str, model: str, version: str | int, owner: str | None) -> None:
    from modelops.runs.resolve import unlock_optimization

    unlock_optimization(storage, triton_bucket, model, version, owner)


def _airflow_run_id(context: dict[str, Any] | None = None) -> str | None:
    if context is None:
        from airflow.sdk import get_current_context

        try:
            context = get_current_context()
        except RuntimeError:
            return None
    dag_run = context.get("dag_run")
    return context.get("run_id") or getattr(dag_run, "run_id", None)


def _load(storage, spec_uri: str) -> dict[str, Any]:
    return storage.read_json(spec_uri)


def select(spec_uri: str, connections: Connections | None = None) -> dict[str, Any]:
    from modelops.runs.outcome import select_run

    _, s3_hook, _ = _hooks(connections)
    storage = s3_hook.storage()
    spec = _load(storage, spec_uri)
    _fence(storage, spec)  # renewed after the heavy steps (hours): publish and deploy renew it again
    return select_run(storage, spec)


def publish(spec_uri: str, selection: dict[str, Any], connections: Connections | None = None) -> dict[str, Any]:
    from airflow.sdk.exceptions import AirflowSkipException

    from modelops.runs.outcome import publish_run
    from modelops.serving.publish import PublishError

    if not selection.get("chosen"):
        raise AirflowSkipException(f"nothing to publish: {selection.get('reason')}")
    _, s3_hook, _ = _hooks(connections)
    storage = s3_hook.storage()
    spec = _load(storage, spec_uri)
    _fence(storage, spec)
    try:
        return publish_run(storage, spec, selection)
    except PublishError as exc:
        raise _fail(str(exc)) from None


def deploy(spec_uri: str, selection: dict[str, Any], publication: dict[str, Any],
           connections: Connections | None = None) -> dict[str, Any]:
    """Load, smoke-test and route the first rollout step; ``rollout`` in the result is the rollout_model conf
    when the new deployment got less than 100% (None when it replaced everything at once), ``links`` where the
    task's extra links point (:func:`modelops_airflow.links.serving_links`)."""
    from modelops.serving.deploy import DeployError
    from modelops.serving.deploy import deploy as deploy_to_triton
    from modelops.steps._common import load_result

    conns = connections or Connections()
    _, s3_hook, triton_hook = _hooks(conns)
    storage = s3_hook.storage()
    spec = _load(storage, spec_uri)
    _fence(storage, spec)
    export = load_result(storage, spec, "export")
    verdict = load_result(storage, spec, "validate")["candidates"][selection["chosen"]]
    steps = list(spec.get("rollout_steps") or [int(spec.get("rollout", 100))])
    if export.get("generative"):  # an LLM: stream one greedy answer from the loaded deployment
        from functools import partial

        from modelops.serving.deploy import llm_smoke

        smoke_args = {"smoke": partial(llm_smoke, f"http://{triton_hook.url()}", publication["deployment"])}
    else:  # text-in recipes: Triton is asked with raw text (serving samples), not the ONNX token ids
        smoke_args = {"samples_uri": export["outputs"].get("serving_samples") or export["outputs"]["samples"],
                      "candidate_outputs_uri": verdict["sample_outputs"]}  # fmt: skip
    try:
        result = deploy_to_triton(
            triton_hook.get_client(),
            storage,
            spec["triton_bucket"],
            spec["model_name"],
            publication["deployment"],
            **smoke_args,
            run_id=spec["run_id"],
            rollout_percent=steps[0],
            gateway_metrics_urls=_gateway_metrics_urls(conns),
        )
    except DeployError as exc:
        raise _fail(str(exc)) from None
    from modelops_airflow.links import serving_links

    result["links"] = serving_links(conns, spec["model_name"], publication["deployment"])
    share = result["routes"].get(publication["deployment"], 0)
    if share >= 100:
        # replaced at once: kept as a finished rollout, so rollback_model knows what it replaced
        from modelops.rollout.controller import record_replacement

        previous = [d for d in result["previous_routes"] if d != publication["deployment"]]
        record_replacement(storage, spec["triton_bucket"], spec["model_name"], publication["deployment"],
                           previous=previous, run_id=spec["run_id"], routes_revision=result["routes_revision"])
        result["rollout"] = None
        return result
    result["rollout"] = {
        "model_name": spec["model_name"],
        "deployment": publication["deployment"],
        "steps": [s for s in steps if s >= share] or [100],
        "interval_s": float(spec.get("rollout_interval_s") or 60),
    }
    return result


def _gateway_metrics_urls(conns: Connections) -> list[str]:
    """The gateway's /metrics (deploy drains a replaced deployment there before unloading it); none without the
    gateway connection (then a replaced deployment is unloaded at once)."""
    from airflow.exceptions import AirflowNotFoundException

    try:
        return [f"{conns.gateway().url()}/metrics"]
    except AirflowNotFoundException:
        log.warning("no %s connection: replaced deployments are unloaded without draining", conns.gateway_conn_id)
        return []


def record(spec_uri: str, selection: dict[str, Any], deployment: dict[str, Any] | None,
           connections: Connections | None = None) -> dict[str, Any]:
    from modelops.steps._common import load_result
    from modelops.tracking.record import record_run

    mlflow_hook, s3_hook, triton_hook = _hooks(connections)
    storage = s3_hook.storage()
    spec = _load(storage, spec_uri)
    results = {step: load_result(storage, spec, step) for step in ("export", "optimize", "validate", "benchmark")}
    summary = record_run(mlflow_hook.get_client(), storage, spec, results, selection, deployment)
    _unlock_optimization(storage, spec["triton_bucket"], spec["model_name"], spec["model_version"], _airflow_run_id())
    summary["triton_url"] = f"http://{triton_hook.url()}"
    summary["mlflow_url"] = mlflow_hook.tracking_uri()
    summary["mlflow_run_url"] = f"{mlflow_hook.tracking_uri()}/#/experiments/{_experiment_id(mlflow_hook, spec)}/runs/{spec['run_id']}"
    return summary


def _experiment_id(mlflow_hook, spec: dict[str, Any]) -> str:
    return mlflow_hook.get_client().get_run(spec["run_id"]).info.experiment_id


def _run_connections(context: dict[str, Any]) -> Connections:
    """The connections of the run's ``resolve`` task: where it opened the MLflow run and took the lease."""
    dag = context.get("dag")
    try:
        return Connections.of(dag.get_task("resolve")) if dag is not None else Connections()
    except Exception:  # noqa: BLE001 - a DAG without resolve (a test): the defaults
        return Connections()


def on_failure(context: dict[str, Any]) -> None:
    """Task failure callback: say why on the MLflow model version (status failed + error) and close the run."""
    from modelops.tracking.registry import mark_failed

    ti = context.get("ti") or context.get("task_instance")
    exc = context.get("exception")
    task_id = ti.task_id if ti else "task"
    error = str(exc) if exc else f"{task_id} failed"
    if not error.startswith(f"{task_id}:"):
        error = f"{task_id}: {error}"
    try:
        meta = ti.xcom_pull(task_ids="resolve") if ti else None
    except Exception:  # noqa: BLE001 - resolve itself may have failed
        meta = None
    if not meta:
        log.error("run failed before a model version was resolved: %s", error)
        return
    mlflow_hook, s3_hook, _ = _hooks(_run_connections(context))
    _unlock_optimization(s3_hook.storage(), Settings.from_env().triton_bucket, meta["model_name"], meta["model_version"],
                         _airflow_run_id(context))  # fmt: skip
    try:
        mark_failed(mlflow_hook.get_client(), meta["model_name"], meta["model_version"], error, meta.get("run_id"))
    except Exception as cb_exc:  # noqa: BLE001 - never mask the task's own failure
        log.error("could not record the failure on the model version: %s", cb_exc)
