"""Light steps of ``optimize_model``: registry, selection, S3 publish, Triton rollout, MLflow records.

They run inside Airflow workers and call ``modelops`` with clients built by the hooks. DAG files wrap
them in ``@task``; heavy imports happen here, at run time, never at DAG parse time.
"""

from __future__ import annotations

import logging
from typing import Any

from modelops.contracts.status import Status
from modelops.contracts.variants import DEFAULT_VARIANTS
from modelops.settings import Settings

log = logging.getLogger(__name__)

def _hooks(context: dict[str, Any] | None = None):
    """MLflow, S3 and Triton hooks on the connections the running DAG names in ``default_args``
    (``mlflow_conn_id``, ``s3_conn_id``, ``triton_conn_id``; unset: ``mlflow_default``, ``s3_default``,
    ``triton_default``)."""
    from modelops_airflow.hooks import pipeline_hooks

    if context is None:
        from airflow.sdk import get_current_context

        try:
            context = get_current_context()
        except RuntimeError:  # not inside a task (a callback, a test): the default connections
            context = {}
    dag = context.get("dag")
    return pipeline_hooks(getattr(dag, "default_args", None))


def _fail(message: str):
    from airflow.sdk.exceptions import AirflowFailException

    return AirflowFailException(message)


def spec_uri_of(spec: dict[str, Any]) -> str:
    return f"{spec['run_prefix']}/spec.json"


def resolve(params: dict[str, Any], airflow_run_id: str) -> dict[str, Any]:
    """Resolve the MLflow version, pick the recipe, open the MLflow run, write the run spec to S3.

    The spec (``modelops.contracts.RunSpec``) is complete when written: every later step reads it as is.
    """
    from modelops.contracts import SpecError, UnknownVariant
    from modelops.contracts.naming import TAG_ERROR, TAG_RECIPE, TAG_RUN_ID, TAG_STATUS
    from modelops.contracts.variants import BuildStep, Family, built_by, check_variants, variants_for
    from modelops.recipes import UnsupportedModel, recipe_infos, select_recipe
    from modelops.tracking.registry import (
        ResolveError,
        build_spec,
        clear_version_tag,
        mark_failed,
        open_run,
        resolve_version,
        set_version_tags,
    )

    settings = Settings.from_env()
    mlflow_hook, s3_hook, _ = _hooks()
    client, storage = mlflow_hook.get_client(), s3_hook.storage()
    try:
        variants = check_variants(list(params.get("variants") or DEFAULT_VARIANTS))
    except UnknownVariant as exc:
        raise _fail(str(exc)) from None
    try:
        resolved = resolve_version(
            client,
            storage,
            (params.get("model_name") or "").strip(),
            str(params["model_version"]).strip() if params.get("model_version") not in (None, "") else None,
            (params.get("model_alias") or "").strip() or None,
            settings.mlflow_bucket,
        )
    except ResolveError as exc:
        raise _fail(str(exc)) from None
    # one optimization per (model, version) at a time, whatever triggered it; record / on_failure release it
    _lock_optimization(storage, settings.triton_bucket, resolved.name, resolved.version, airflow_run_id)
    try:
        try:
            recipe = select_recipe(resolved.mlmodel, explicit=(params.get("recipe") or "").strip() or None)
        except UnsupportedModel as exc:
            # the version exists: say on it why it was not optimized (the failure callback has no XCom yet)
            mark_failed(client, resolved.name, resolved.version, f"resolve: {exc}")
            raise _fail(str(exc)) from None
        try:  # an LLM gets the LLM variants for the default request; a mismatched explicit request is refused
            family = Family.LLM if recipe_infos()[recipe].generative else Family.TENSOR
            variants = variants_for(variants, family)
        except UnknownVariant as exc:
            mark_failed(client, resolved.name, resolved.version, f"resolve: {exc}")
            raise _fail(str(exc)) from None
        run_params = {
            "model_name": resolved.name,
            "model_version": resolved.version,
            "model_alias": resolved.alias or "",
            "recipe": recipe,
            "variants": variants,
            "latency_slo_ms": params["latency_slo_ms"],
            "ttft_slo_ms": params.get("ttft_slo_ms") or 2000.0,
            "accuracy_tolerance": params["accuracy_tolerance"],
            "rollout_steps": params.get("rollout_steps") or [],
            "rollout": params.get("rollout") or "",
            "execution": settings.execution,
            "serving_device": params.get("serving_device") or settings.serving_device,
        }
        run_id = open_run(client, resolved.name, resolved.version, airflow_run_id, run_params)
        try:
            spec = build_spec(
                resolved,
                recipe,
                run_id,
                settings.artifacts_bucket,
                triton_bucket=settings.triton_bucket,
                variants=variants,
                latency_slo_ms=float(params["latency_slo_ms"]),
                ttft_slo_ms=float(params.get("ttft_slo_ms") or 2000.0),
                accuracy_tolerance=float(params["accuracy_tolerance"]),
                rollout=int(params["rollout"]) if params.get("rollout") is not None else 100,
                rollout_steps=list(params["rollout_steps"]) if params.get("rollout_steps") else None,
                rollout_interval_s=float(params.get("rollout_interval_s") or 60),
                benchmark=_search_params(params),
                serving_device=run_params["serving_device"],
                text_in=recipe_infos()[recipe].text_in,
            )
        except SpecError as exc:
            mark_failed(client, resolved.name, resolved.version, f"resolve: {exc}", run_id)
            raise _fail(str(exc)) from None
        document = spec.to_json()
        storage.write_json(spec_uri_of(document), document)
        set_version_tags(
            client, resolved.name, resolved.version, {TAG_STATUS: Status.OPTIMIZING, TAG_RUN_ID: run_id, TAG_RECIPE: recipe}
        )
        clear_version_tag(client, resolved.name, resolved.version, TAG_ERROR)
        log.info("resolved %s v%s (recipe %s); run %s; spec %s", resolved.name, resolved.version, recipe, run_id,
                 spec_uri_of(document))  # fmt: skip
        return {
            "spec_uri": spec_uri_of(document),
            "model_name": resolved.name,
            "model_version": resolved.version,
            "run_id": run_id,
            "recipe": recipe,
            "engine_variants": built_by(BuildStep.COMPILE, list(variants)),
        }
    except BaseException:
        # this run never got going: free the version at once (not only at expiry), without masking the error
        _unlock_optimization(storage, settings.triton_bucket, resolved.name, resolved.version, airflow_run_id)
        raise


# Lease on locks/optimize/<model>--v<version>.json: longer than a run can take (each task's execution_timeout is
# 2 h, the heavy steps run one after another); if a run dies without its callbacks, expiry frees the version.
OPTIMIZE_LOCK_TTL_S = 6 * 3600.0


def _optimize_lock_uri(triton_bucket: str, model: str, version: str | int) -> str:
    from modelops.serving.locks import lock_uri

    return lock_uri(triton_bucket, "optimize", f"{model}--v{version}")


def _lock_optimization(storage, triton_bucket: str, model: str, version: str | int, owner: str):
    """Take the (model, version) optimization lease for this Airflow run, or fail the run with the holder's line."""
    from modelops.serving.locks import LockHeld, acquire

    try:
        return acquire(storage, _optimize_lock_uri(triton_bucket, model, version), owner=owner,
                       ttl_s=OPTIMIZE_LOCK_TTL_S, what=f"the optimization of {model} v{version}")  # fmt: skip
    except LockHeld as exc:
        # the other run's version tags stay as they are: only this run fails
        raise _fail(str(exc)) from None


def _unlock_optimization(storage, triton_bucket: str, model: str, version: str | int, owner: str | None) -> None:
    """Release this run's optimization lease, best effort and only if still ours (expiry is the safety net)."""
    from modelops.serving.locks import release

    if not owner:
        return
    try:
        release(storage, _optimize_lock_uri(triton_bucket, model, version), owner=owner)
    except Exception as exc:  # noqa: BLE001 - never fail (or mask the failure of) a run over its lease
        log.warning("could not release the optimization lease of %s v%s: %s", model, version, exc)


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


def _search_params(params: dict[str, Any]) -> dict[str, Any]:
    """The benchmark block's configuration-search keys from the DAG params (absent keys keep the spec defaults)."""
    out: dict[str, Any] = {}
    if params.get("config_search") is not None:
        out["config_search"] = bool(params["config_search"])
    if params.get("config_search_budget_s") is not None:
        out["config_search_budget_s"] = float(params["config_search_budget_s"])
    return out


def select(spec_uri: str) -> dict[str, Any]:
    from modelops.evaluation.selection import select as select_winner
    from modelops.steps._common import load_result

    _, s3_hook, _ = _hooks()
    storage = s3_hook.storage()
    spec = _load(storage, spec_uri)
    # LLMs: points carry output tokens/s as throughput and TTFT as latency, bounded by the TTFT SLO
    llm = bool(load_result(storage, spec, "export").get("generative"))
    slo_ms = float(spec.get("ttft_slo_ms") or 2000.0) if llm else spec["latency_slo_ms"]
    selection = select_winner(load_result(storage, spec, "validate"), load_result(storage, spec, "benchmark"),
                              slo_ms).to_json()
    selection["slo_ms"], selection["generative"] = slo_ms, llm
    storage.write_json(f"{spec['run_prefix']}/select/result.json", selection)
    if selection["chosen"]:
        log.info("chosen: %s (%.2fx the PyTorch baseline)", selection["chosen"], selection["speedup"] or 0)
    else:
        log.warning("nothing chosen: %s", selection["reason"])
    return selection


def publish(spec_uri: str, selection: dict[str, Any]) -> dict[str, Any]:
    from airflow.sdk.exceptions import AirflowSkipException

    from modelops.serving.publish import PublishError, publish_candidate
    from modelops.steps._common import load_result

    if not selection.get("chosen"):
        raise AirflowSkipException(f"nothing to publish: {selection.get('reason')}")
    _, s3_hook, _ = _hooks()
    storage = s3_hook.storage()
    spec = _load(storage, spec_uri)
    export, optimize = load_result(storage, spec, "export"), load_result(storage, spec, "optimize")
    try:
        if export.get("generative"):
            out = _publish_llm(storage, spec, selection["chosen"], optimize)
        else:
            out = publish_candidate(storage, spec, selection["chosen"], export, optimize, spec["triton_bucket"],
                                    serving_config=selection.get("config"))  # benchmark's configuration search
    except PublishError as exc:
        raise _fail(str(exc)) from None
    return {"deployment": out["deployment"], "uri": out["uri"], "reused": out["reused"]}


def _publish_llm(storage, spec: dict[str, Any], variant: str, optimize: dict[str, Any]) -> dict[str, Any]:
    """Publish the chosen ORT GenAI build of an LLM as a decoupled python-backend deployment."""
    import tempfile
    from pathlib import Path

    from modelops.serving.triton.llm_dir import publish_llm

    with tempfile.TemporaryDirectory(prefix="modelops-publish-llm-") as tmp:
        model_dir = storage.download_dir(optimize["candidates"][variant]["artifacts"]["model_dir"], Path(tmp) / "m")
        try:
            return publish_llm(storage, model_dir=model_dir, model_name=spec["model_name"],
                               model_version=spec["model_version"], triton_bucket=spec["triton_bucket"],
                               variant=variant, model_uri=spec.get("model_uri") or None, run_id=spec["run_id"],
                               recipe=spec.get("recipe") or "text_generation",
                               device=str(spec.get("serving_device") or "cpu"))  # fmt: skip
        except ValueError as exc:
            raise _fail(f"cannot publish {variant}: {exc}") from None


def deploy(spec_uri: str, selection: dict[str, Any], publication: dict[str, Any]) -> dict[str, Any]:
    """Load, smoke-test and route the first rollout step; ``rollout`` in the result is the rollout_model conf
    when the new deployment got less than 100% (None when it replaced everything at once)."""
    from modelops.serving.deploy import DeployError
    from modelops.serving.deploy import deploy as deploy_to_triton
    from modelops.steps._common import load_result

    _, s3_hook, triton_hook = _hooks()
    storage = s3_hook.storage()
    spec = _load(storage, spec_uri)
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
            gateway_metrics_urls=_gateway_metrics_urls(),
        )
    except DeployError as exc:
        raise _fail(str(exc)) from None
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


def _gateway_metrics_urls() -> list[str]:
    """The gateway's /metrics (deploy drains a replaced deployment there before unloading it); none without the
    ``gateway_default`` connection (then a replaced deployment is unloaded at once)."""
    from airflow.exceptions import AirflowNotFoundException

    from modelops_airflow.hooks import GatewayHook

    try:
        return [f"{GatewayHook().url()}/metrics"]
    except AirflowNotFoundException:
        log.warning("no gateway_default connection: replaced deployments are unloaded without draining")
        return []


def record(spec_uri: str, selection: dict[str, Any], deployment: dict[str, Any] | None) -> dict[str, Any]:
    from modelops.steps._common import load_result
    from modelops.tracking.record import record_run

    mlflow_hook, s3_hook, triton_hook = _hooks()
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
    mlflow_hook, s3_hook, _ = _hooks(context)
    _unlock_optimization(s3_hook.storage(), Settings.from_env().triton_bucket, meta["model_name"], meta["model_version"],
                         _airflow_run_id(context))  # fmt: skip
    try:
        mark_failed(mlflow_hook.get_client(), meta["model_name"], meta["model_version"], error, meta.get("run_id"))
    except Exception as cb_exc:  # noqa: BLE001 - never mask the task's own failure
        log.error("could not record the failure on the model version: %s", cb_exc)
