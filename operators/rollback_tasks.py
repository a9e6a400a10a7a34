"""Rollbacks: ``rollout_model``'s ``rollback`` task (after a failure) and ``rollback_model`` (by hand).

``rollback_model`` puts a model back on one deployment, whatever rollout is running.

The routes go to 100% on the chosen deployment (a conditional write through :func:`modelops.rollout.controller
.rollback`), every other deployment is drained and unloaded, and MLflow says ``deployed`` / ``rolled_back`` on the
model versions. A ``rollout_model`` run of the same model stops at its next wake with "stopped: routes were
changed by ..." instead of rolling back over this one.
"""

from __future__ import annotations

import logging
from typing import Any

from modelops.contracts.status import Status
from modelops_airflow.connections import Connections
from modelops_airflow.operators.openwebui_tasks import refresh_quietly
from modelops_airflow.operators.rollout_tasks import MANUAL_BY, backends, fail, xcom

log = logging.getLogger(__name__)


def manual_rollback(params: dict[str, Any], run_id: str, connections: Connections | None = None) -> dict[str, Any]:
    """``rollback_model``: routes 100% to ``to_deployment`` (default: the last stable one), retire the others.

    A rollout of the model that is still running stops at its next wake ("stopped: routes were changed by ...").
    """
    from modelops.rollout import controller
    from modelops.rollout.state import FINISHED, RolloutError
    from modelops.serving.routes import read_routes
    from modelops.tracking import rollout_record as rr

    model = str(params["model_name"]).strip()
    be = backends(connections)
    target = (params.get("to_deployment") or "").strip() or controller.last_stable(be.storage, be.bucket, model)
    if not target:
        raise fail(f"no stable deployment of {model} is known; name one in to_deployment")
    version = rr.canary_version(be.storage, be.bucket, target)
    if version is None or version[0] != model:
        raise fail(f"{target} is not a published deployment of {model}")
    state = controller.load_state(be.storage, be.bucket, model)
    if state is None:
        raise fail(f"{model} has no rollout state in s3://{be.bucket}/rollouts/; nothing to roll back")
    before = set(read_routes(be.storage, be.bucket, model).weights())
    reason = f"rolled back by hand to {target}{MANUAL_BY}{run_id}"
    try:
        state = controller.rollback(be.storage, be.bucket, state, reason, client=be.client(),
                                    gateway_metrics_urls=be.gateway_metrics_urls, to=target)
    except RolloutError as exc:
        raise fail(str(exc)) from None
    retired = sorted((before | {state.deployment}) - {target})
    for deployment in retired:
        found = rr.canary_version(be.storage, be.bucket, deployment)
        if found:
            rr.mark_version(be.mlflow, found[0], found[1], Status.ROLLED_BACK, deployment=deployment, error=reason)
    rr.mark_version(be.mlflow, version[0], version[1], Status.DEPLOYED, deployment=target)
    refresh_quietly(f"the rollback of {model} to {target}", be.connections)
    log.info("%s: 100%% on %s (routes revision %d); retired %s; the rollout state was %s", model, target,
             state.routes_revision, retired or "nothing", "finished" if state.status in FINISHED else "running")
    return {"model": model, "deployment": target, "routes_revision": state.routes_revision, "retired": retired}


def _reason(run_id: str, state: Any) -> str:
    """Why the rollout failed: what a task said, a rejected approval, the state's error or last verdict."""
    for task_id in ("steps", "promote"):
        said = xcom(task_id, key="reason")
        if said:
            return str(said)
    from airflow.sdk import get_current_context

    ctx = get_current_context()
    try:
        states = ctx["ti"].get_task_states(dag_id=ctx["dag"].dag_id, task_ids=["approve"], run_ids=[run_id])
    except Exception:  # noqa: BLE001 - informative only
        states = {}
    if (states.get(run_id) or {}).get("approve") == "failed":
        return "the last step was not approved (rejected or timed out)"
    if state is not None and state.error:
        return state.error
    if state is not None and state.analysis and state.analysis[-1].get("passed") is not True:
        last = state.analysis[-1]
        return f"step {int(last['step_index']) + 1}/{len(state.steps)}: " + "; ".join(last.get("reasons") or [])
    return "a rollout task failed (see its log)"


def rollback_after_failure(run_id: str, connections: Connections | None = None) -> None:
    """``rollback`` (trigger rule one_failed): roll back with the failure's reason unless that already happened
    (a failing verdict rolls back at once; a manual rollback stops the rollout), then fail with one line."""
    from modelops.rollout import controller
    from modelops.rollout.state import FINISHED, RolloutError
    from modelops.tracking import rollout_record as rr

    meta = xcom("begin")
    if not meta:
        raise fail("the rollout did not begin (see the begin task's log); nothing to roll back")
    be = backends(connections)
    state = controller.load_state(be.storage, be.bucket, meta["model"])
    reason = _reason(run_id, state)
    model, version = meta["version"]
    if state is None or state.run_id != run_id or reason.startswith("stopped:"):
        from modelops.serving.routes import read_routes

        if meta["deployment"] not in read_routes(be.storage, be.bucket, meta["model"]).weights():
            rr.mark_version(be.mlflow, model, version, Status.ROLLED_BACK, deployment=meta["deployment"],
                            error=reason, run_id=meta["mlflow_run_id"])
        rr.finish_rollout(be.mlflow, meta["mlflow_run_id"], state.to_json() if state else {}, "stopped", reason)
        raise fail(reason)
    if state.status not in FINISHED:
        log.error("rolling back %s: %s", state.deployment, reason)
        try:
            state = controller.rollback(be.storage, be.bucket, state, reason, client=be.client(),
                                        gateway_metrics_urls=be.gateway_metrics_urls)
        except RolloutError as exc:
            raise fail(f"rollback failed: {exc} (after: {reason})") from None
    outcome = "promoted" if state.status == "promoted" else "rolled_back"
    if outcome == "rolled_back":
        rr.mark_version(be.mlflow, model, version, Status.ROLLED_BACK, deployment=state.deployment, error=reason,
                        run_id=meta["mlflow_run_id"])
    rr.finish_rollout(be.mlflow, meta["mlflow_run_id"], state.to_json(), outcome, reason)
    refresh_quietly(f"rolling back {state.deployment}", be.connections)
    raise fail(f"rolled back: {reason}" if outcome == "rolled_back" else reason)

