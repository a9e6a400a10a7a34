"""Resolve a run: the MLflow version, the recipe, the MLflow run, the user's data, the run spec on S3, the lease.

:func:`resolve_run` is the body of ``optimize_model``'s ``resolve`` task and of ``modelops optimize``; a request that
cannot run raises :class:`RunRefused` with one line (the Airflow task turns it into a failed task, the CLI into an
error), after saying why on the model version where one was found.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from modelops.contracts.status import Status

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from modelops.recipes.trust import Trust
    from modelops.settings import Settings
    from modelops.storage import Storage
    from modelops.tracking.registry import ResolvedVersion

log = logging.getLogger(__name__)

# Lease on locks/optimize/<model>--v<version>.json: longer than a run can take (each task's execution_timeout is
# 2 h, the heavy steps run one after another); if a run dies without its callbacks, expiry frees the version.
OPTIMIZE_LOCK_TTL_S = 6 * 3600.0


class RunRefused(Exception):
    """The request cannot run (unknown model or variant, unusable data, a run already holds the version). One line."""


def spec_uri_of(spec: dict[str, Any]) -> str:
    return f"{spec['run_prefix']}/spec.json"


def optimize_lock_uri(triton_bucket: str, model: str, version: str | int) -> str:
    from modelops.serving.locks import lock_uri

    return lock_uri(triton_bucket, "optimize", f"{model}--v{version}")


def lock_optimization(storage: Storage, triton_bucket: str, model: str, version: str | int, owner: str):
    """Take the (model, version) optimization lease for this run, or :class:`RunRefused` with the holder's line."""
    from modelops.serving.locks import LockHeld, acquire

    try:
        return acquire(storage, optimize_lock_uri(triton_bucket, model, version), owner=owner,
                       ttl_s=OPTIMIZE_LOCK_TTL_S, what=f"the optimization of {model} v{version}")  # fmt: skip
    except LockHeld as exc:
        # the other run's version tags stay as they are: only this run fails
        raise RunRefused(str(exc)) from None


def fence_optimization(storage: Storage, triton_bucket: str, model: str, version: str | int, owner: str | None) -> None:
    """Renew this run's optimization lease, or :class:`RunRefused` when it was lost (expired, taken over): run
    before each step that writes (publish, deploy), so a run that lost its lease never publishes beside another."""
    from modelops.serving.locks import LockLost, renew_held

    if not owner:
        return
    try:
        renew_held(storage, optimize_lock_uri(triton_bucket, model, version), owner=owner, ttl_s=OPTIMIZE_LOCK_TTL_S,
                   what=f"the optimization of {model} v{version}")
    except LockLost as exc:
        raise RunRefused(f"{exc}: another run may be optimizing this version; start a new run") from None


def unlock_optimization(storage: Storage, triton_bucket: str, model: str, version: str | int, owner: str | None) -> None:
    """Release this run's optimization lease, best effort and only if still ours (expiry is the safety net)."""
    from modelops.serving.locks import release

    if not owner:
        return
    try:
        release(storage, optimize_lock_uri(triton_bucket, model, version), owner=owner)
    except Exception as exc:  # noqa: BLE001 - never fail (or mask the failure of) a run over its lease
        log.warning("could not release the optimization lease of %s v%s: %s", model, version, exc)


def _trust(storage: Storage, resolved: ResolvedVersion) -> Trust:
    """What loading ``resolved`` through its flavor runs (``modelops.recipes.trust``), from MLmodel and its files."""
    from modelops.recipes import source_flavor
    from modelops.recipes.trust import assess
    from modelops.storage import relative

    files = [relative(resolved.source_uri, uri) for uri in storage.list(resolved.source_uri)]
    return assess(resolved.mlmodel, source_flavor(resolved.mlmodel), files, resolved.tags)


def search_params(params: dict[str, Any]) -> dict[str, Any]:
    """The benchmark block's configuration-search keys from the params (absent keys keep the spec defaults)."""
    out: dict[str, Any] = {}
    if params.get("config_search") is not None:
        out["config_search"] = bool(params["config_search"])
    if params.get("config_search_budget_s") is not None:
        out["config_search_budget_s"] = float(params["config_search_budget_s"])
    return out


def resolve_run(client: MlflowClient, storage: Storage, settings: Settings, params: dict[str, Any],
                run_key: str) -> dict[str, Any]:  # fmt: skip
    """Resolve the MLflow version, pick the recipe, open the MLflow run, prepare the data, write the run spec to S3.

    ``params`` are ``optimize_model``'s; ``run_key`` names this run (the Airflow run id): it owns the version's
    lease and finds its MLflow run again on a retry. The spec (``modelops.contracts.RunSpec``) is complete when
    written: every later step reads it as is.

    Returns:
        ``{"spec_uri", "model_name", "model_version", "run_id", "experiment_id", "recipe", "engine_variants",
        "eval_data"}``.

    Raises:
        RunRefused: one line naming why the run cannot go on.
    """
    from modelops.contracts import SpecError, UnknownVariant
    from modelops.contracts.naming import TAG_ERROR, TAG_RECIPE, TAG_RUN_ID, TAG_STATUS
    from modelops.contracts.variants import BuildStep, built_by, check_variants, variants_for
    from modelops.data import DataError
    from modelops.data.sources import prepare_for_version
    from modelops.recipes import UnsupportedModel, model_kind, recipe_infos, select_recipe
    from modelops.tracking.registry import (
        ResolveError,
        build_spec,
        clear_version_tag,
        mark_failed,
        open_run,
        record_eval_data,
        resolve_version,
        set_version_tags,
    )

    requested = list(params.get("variants") or [])  # []: the recipe's family defaults (known after selection)
    try:
        if requested:
            check_variants(requested)
    except UnknownVariant as exc:
        raise RunRefused(str(exc)) from None
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
        raise RunRefused(str(exc)) from None
    # one optimization per (model, version) at a time, whatever triggered it; record / on_failure release it
    lock_optimization(storage, settings.triton_bucket, resolved.name, resolved.version, run_key)
    try:
        try:
            recipe = select_recipe(resolved.mlmodel, explicit=(params.get("recipe") or "").strip() or None)
        except UnsupportedModel as exc:
            # the version exists: say on it why it was not optimized (the failure callback has no XCom yet)
            mark_failed(client, resolved.name, resolved.version, f"resolve: {exc}")
            raise RunRefused(str(exc)) from None
        trust = _trust(storage, resolved)
        if trust.refused:
            mark_failed(client, resolved.name, resolved.version, f"resolve: {trust.reason(resolved.name, resolved.version)}")
            raise RunRefused(trust.reason(resolved.name, resolved.version))
        try:  # no request: the family's defaults (an LLM's, a CNN's...); a request of the wrong family is refused
            kind = model_kind(recipe_infos()[recipe], resolved.mlmodel)
            variants = variants_for(requested, kind)
        except UnknownVariant as exc:
            mark_failed(client, resolved.name, resolved.version, f"resolve: {exc}")
            raise RunRefused(str(exc)) from None
        run_params = {
            "model_name": resolved.name,
            "model_version": resolved.version,
            "model_alias": resolved.alias or "",
            "recipe": recipe,
            "variants": variants,
            "variants_from": "request" if requested else f"{kind} defaults",
            "latency_slo_ms": params["latency_slo_ms"],
            "ttft_slo_ms": params.get("ttft_slo_ms") or 2000.0,
            "accuracy_tolerance": params["accuracy_tolerance"],
            "rollout_steps": params.get("rollout_steps") or [],
            "rollout": params.get("rollout") or "",
            "execution": settings.execution,
            "serving_device": params.get("serving_device") or settings.serving_device,
            "eval_data_uri": (params.get("eval_data_uri") or "").strip(),
        }
        run_id, experiment_id = open_run(client, resolved.name, resolved.version, run_key, run_params)
        try:  # the user's data is read and checked here: a file that cannot be used fails the run in one line
            eval_data = prepare_for_version(client, storage, settings, resolved, recipe_infos()[recipe], run_id,
                                            run_params["eval_data_uri"])  # fmt: skip
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
                benchmark=search_params(params),
                serving_device=run_params["serving_device"],
                text_in=recipe_infos()[recipe].text_in,
                eval_data=eval_data,
                allow_pickle=trust.allow_pickle,
            )
        except (SpecError, DataError) as exc:
            mark_failed(client, resolved.name, resolved.version, f"resolve: {exc}", run_id)
            raise RunRefused(str(exc)) from None
        document = spec.to_json()
        storage.write_json(spec_uri_of(document), document)
        set_version_tags(
            client, resolved.name, resolved.version, {TAG_STATUS: Status.OPTIMIZING, TAG_RUN_ID: run_id, TAG_RECIPE: recipe}
        )
        record_eval_data(client, resolved.name, resolved.version, run_id, eval_data)
        clear_version_tag(client, resolved.name, resolved.version, TAG_ERROR)
        log.info("resolved %s v%s (recipe %s); run %s; spec %s", resolved.name, resolved.version, recipe, run_id,
                 spec_uri_of(document))  # fmt: skip
        return {
            "spec_uri": spec_uri_of(document),
            "model_name": resolved.name,
            "model_version": resolved.version,
            "run_id": run_id,
            "experiment_id": experiment_id,
            "recipe": recipe,
            "engine_variants": built_by(BuildStep.COMPILE, list(variants)),
            "eval_data": str(eval_data.source),
        }
    except BaseException:
        # this run never got going: free the version at once (not only at expiry), without masking the error
        unlock_optimization(storage, settings.triton_bucket, resolved.name, resolved.version, run_key)
        raise
