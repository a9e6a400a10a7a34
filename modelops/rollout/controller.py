"""The rollout state machine: begin -> apply_step ... -> promote | rollback, one rollout per model at a time.

Each function takes the state it was given only for its identity (model, run id): it re-reads the stored
document (:func:`modelops.rollout.state.update`), so a retried Airflow task or a stale XCom never undoes a
change. Routes changes are conditional writes; a lost race is retried from a fresh read, and a fresh read
that no longer names the canary or the stable deployments means someone changed serving by hand: the
rollout stops (status ``aborted``) instead of overwriting them. ``promote`` and ``rollback`` are idempotent
and release the model's rollout lease (``locks/rollout/<model>.json``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from typing import Any

from modelops.contracts.naming import deployment_uri
from modelops.rollout.analysis import Thresholds, Verdict
from modelops.rollout.state import (
    FINISHED,
    HISTORY_MAX,
    MODES,
    RolloutError,
    RolloutState,
    now,
    read,
    update,
)
from modelops.serving.deploy import DeployError, wait_ready
from modelops.serving.drain import retire
from modelops.serving.locks import LockHeld, acquire, lock_uri, release
from modelops.serving.publish import InvalidDeployment, verify_deployment
from modelops.serving.routes import Routes, RoutesConflict, canary_weights, read_routes, write_routes
from modelops.serving.triton import client as triton_client
from modelops.storage import Storage

__all__ = [
    "RolloutError", "RolloutState", "apply_step", "begin", "last_stable", "load_state", "promote", "record_verdict",
    "rollback",
]  # fmt: skip

log = logging.getLogger(__name__)

ROUTES_ATTEMPTS = 4  # the first write and 3 retries from a fresh read
LEASE_MARGIN_S = 24 * 3600.0  # approval may wait; expiry is only the crash safety net (rollback_model releases)


def _lease_uri(bucket: str, model: str) -> str:
    return lock_uri(bucket, "rollout", model)


def _validate_steps(steps: list[int]) -> list[int]:
    steps = [int(s) for s in steps]
    if not steps or any(not 1 <= s <= 100 for s in steps) or steps != sorted(set(steps)) or steps[-1] != 100:
        raise RolloutError(f"steps must be increasing percents in 1..100 ending with 100, got {steps}")
    return steps


def load_state(storage: Storage, bucket: str, model: str) -> RolloutState | None:
    """The latest rollout of ``model`` (None if it never had one)."""
    return read(storage, bucket, model)[0]


def begin(
    storage: Storage,
    bucket: str,
    model: str,
    deployment: str,
    *,
    run_id: str,
    steps: list[int],
    mode: str,
    thresholds: Thresholds,
    interval_s: float,
) -> RolloutState:
    """Take the model's rollout lease and store a new running state (step_index -1).

    The stable deployments are those the routes name other than ``deployment``; without any, the rollout has the
    single step 100. A retried task of the same run gets the state it stored before.

    Raises:
        RolloutError: another rollout of ``model`` holds the lease, or invalid steps / mode.
    """
    steps = _validate_steps(steps)
    if mode not in MODES:
        raise RolloutError(f"mode must be one of {list(MODES)}, got {mode!r}")
    try:
        acquire(storage, _lease_uri(bucket, model), owner=run_id, ttl_s=LEASE_MARGIN_S + len(steps) * interval_s,
                what=f"a rollout of {model}")  # fmt: skip
    except LockHeld as exc:
        raise RolloutError(f"a rollout of {model} is already running: {exc}") from None
    routes = read_routes(storage, bucket, model)
    stable = [d for d, w in routes.weights().items() if d != deployment and w > 0]

    def change(current: RolloutState | None) -> RolloutState:
        if current is not None and current.run_id == run_id:
            return current  # a retried begin
        history: list[dict[str, Any]] = []
        if current is not None:
            history = ([current.summary()] + current.history)[:HISTORY_MAX]
        return RolloutState(
            model=model, deployment=deployment, stable=stable, steps=steps if stable else [100], step_index=-1,
            mode=mode, status="running", run_id=run_id, started_at=now(), updated_at=now(),
            thresholds=asdict(thresholds), interval_s=float(interval_s), routes_revision=routes.revision,
            analysis=[], error=None, history=history,
        )  # fmt: skip

    state = update(storage, bucket, model, change)
    log.info("rollout %s of %s begins: stable %s, steps %s", run_id, deployment, state.stable, state.steps)
    return state


def _mine(state: RolloutState, current: RolloutState | None) -> RolloutState:
    """The stored state of this rollout (fresh), refusing a document that belongs to another run."""
    if current is None or current.run_id != state.run_id:
        other = "nothing" if current is None else f"rollout {current.run_id}"
        raise RolloutError(f"rollouts/{state.model}.json holds {other}, not rollout {state.run_id}")
    return current


def _stopped_by_hand(state: RolloutState, routes: Routes) -> str | None:
    """Why the fresh routes show that someone else changed serving (one line), or None."""
    names = routes.weights()
    missing = []
    if state.deployment not in names and state.step_index >= 0:  # before the first step it may not be routed yet
        missing.append(f"the canary {state.deployment}")
    if state.stable and not any(s in names for s in state.stable):
        missing.append(f"the stable {', '.join(state.stable)}")
    if not missing:
        return None
    return (
        f"stopped: routes were changed by {routes.updated_by or 'someone'} (revision {routes.revision}) and no "
        f"longer name {' or '.join(missing)}"
    )


def _abort(storage: Storage, bucket: str, state: RolloutState, why: str) -> RolloutError:
    def change(current: RolloutState | None) -> RolloutState:
        return replace(_mine(state, current), status="aborted", error=why)

    update(storage, bucket, state.model, change)
    release(storage, _lease_uri(bucket, state.model), owner=state.run_id)
    return RolloutError(why)


def apply_step(storage: Storage, bucket: str, state: RolloutState, index: int) -> RolloutState:
    """Route ``steps[index]`` percent to the canary (the rest to the others in proportion) and record the step.

    Raises:
        RolloutError: the routes were changed by hand (the canary or the stable is gone: the rollout is marked
            ``aborted`` and its lease released), the rollout is finished, or the routes kept changing.
    """
    fresh = _mine(state, read(storage, bucket, state.model)[0])
    if fresh.status in FINISHED:
        why = f": {fresh.error}" if fresh.error else ""  # e.g. an operator's rollback_model during the rollout
        raise RolloutError(f"stopped: rollout {fresh.run_id} of {fresh.model} is already {fresh.status}{why}")
    if not 0 <= index < len(fresh.steps):
        raise RolloutError(f"step {index} out of range: the rollout has steps {fresh.steps}")
    percent = fresh.steps[index]
    for _ in range(ROUTES_ATTEMPTS):
        routes = read_routes(storage, bucket, fresh.model)
        why = _stopped_by_hand(fresh, routes)
        if why:
            raise _abort(storage, bucket, fresh, why)
        weights = canary_weights(routes.weights(), fresh.deployment, percent)
        if weights == routes.weights():
            after = routes  # a retried step: already written
            break
        try:
            after = write_routes(storage, bucket, routes, weights, by=fresh.run_id)
            break
        except RoutesConflict:
            log.warning("routes of %s changed while writing step %d; retrying from a fresh read", fresh.model, index)
    else:
        raise RolloutError(f"routes of {fresh.model} kept changing; step {index} ({percent}%) not written")

    def change(current: RolloutState | None) -> RolloutState:
        return replace(_mine(state, current), step_index=index, routes_revision=after.revision, status="running")

    new = update(storage, bucket, fresh.model, change)
    log.info("rollout %s: step %d, %s at %d%% (routes revision %d)", new.run_id, index, new.deployment, percent,
             after.revision)  # fmt: skip
    return new


def _stats_json(stats: Any) -> dict[str, Any]:
    """A deployment's stats for the state document; the histogram stays out (it holds +Inf, not JSON)."""
    return {k: v for k, v in asdict(stats).items() if k != "buckets"}


def record_verdict(storage: Storage, bucket: str, state: RolloutState, verdict: Verdict) -> RolloutState:
    """Append the verdict of the current step to ``analysis``."""

    def change(current: RolloutState | None) -> RolloutState:
        mine = _mine(state, current)
        entry = {
            "step_index": mine.step_index,
            "weight": mine.weight,
            "at": now(),
            "passed": verdict.passed,
            "reasons": list(verdict.reasons),
            "canary": _stats_json(verdict.canary),
            "stable": _stats_json(verdict.stable) if verdict.stable else None,
        }
        return replace(mine, analysis=[*mine.analysis, entry])

    return update(storage, bucket, state.model, change)


def _route_all(storage: Storage, bucket: str, model: str, target: str, *, by: str) -> tuple[Routes, dict[str, int]]:
    """Routes -> {target: 100} (no write when already so); returns the new routes and the weights before."""
    for _ in range(ROUTES_ATTEMPTS):
        routes = read_routes(storage, bucket, model)
        before = routes.weights()
        if before == {target: 100}:
            return routes, before
        try:
            return write_routes(storage, bucket, routes, {target: 100}, by=by), before
        except RoutesConflict:
            log.warning("routes of %s changed while routing all to %s; retrying from a fresh read", model, target)
    raise RolloutError(f"routes of {model} kept changing; could not route 100% to {target}")


def promote(
    storage: Storage, bucket: str, state: RolloutState, *, client: Any, gateway_metrics_urls: list[str]
) -> RolloutState:
    """Route 100% to the canary, retire the deployments it replaces, mark promoted, release the lease.

    Idempotent: a second call finds the routes already written and the old deployments already unloaded.
    """
    fresh = _mine(state, read(storage, bucket, state.model)[0])
    if fresh.status in ("rolled_back", "aborted"):
        raise RolloutError(f"rollout {fresh.run_id} of {fresh.model} is {fresh.status}; it cannot be promoted")
    routes = read_routes(storage, bucket, fresh.model)
    if fresh.status != "promoted" and (why := _stopped_by_hand(fresh, routes)):
        raise _abort(storage, bucket, fresh, why)
    after, before = _route_all(storage, bucket, fresh.model, fresh.deployment, by=fresh.run_id)
    old = [d for d in dict.fromkeys([*fresh.stable, *before]) if d != fresh.deployment]
    retired = retire(client, gateway_metrics_urls, fresh.model, old, after.revision, storage=storage,
                     triton_bucket=bucket)  # fmt: skip

    def change(current: RolloutState | None) -> RolloutState:
        mine = _mine(state, current)
        return replace(mine, status="promoted", routes_revision=max(mine.routes_revision, after.revision),
                       step_index=len(mine.steps) - 1)  # fmt: skip

    new = update(storage, bucket, fresh.model, change)
    release(storage, _lease_uri(bucket, fresh.model), owner=fresh.run_id)
    log.info("rollout %s: %s promoted (retired: %s)", new.run_id, new.deployment, retired)
    return new


def _ensure_loaded(client: Any, storage: Storage, bucket: str, deployment: str) -> None:
    try:
        verify_deployment(storage, deployment_uri(bucket, deployment))
    except InvalidDeployment as exc:
        raise RolloutError(f"refusing to roll back to {deployment}: {exc}") from None
    try:
        ready = bool(client.is_model_ready(deployment))
    except Exception:  # noqa: BLE001 - an unknown model is simply not ready
        ready = False
    if ready:
        return
    try:
        client.load_model(deployment)
        wait_ready(client, deployment)
    except DeployError as exc:
        raise RolloutError(f"cannot roll back to {deployment}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - InferenceServerException or a connection error: one line
        first = triton_client.error_text(exc).splitlines()[0]
        raise RolloutError(f"cannot roll back to {deployment}: Triton could not load it: {first}") from None


def rollback(
    storage: Storage,
    bucket: str,
    state: RolloutState,
    reason: str,
    *,
    client: Any,
    gateway_metrics_urls: list[str],
    to: str | None = None,
) -> RolloutState:
    """Route 100% to ``to`` (default the first stable deployment), retire the others, mark rolled_back.

    ``to`` must be a valid published deployment (manifest checked); it is loaded first when Triton does not
    have it ready. Without ``to``, a rollout already ``rolled_back`` (a retry, or an operator's rollback to some
    other deployment) or ``aborted`` (routes changed by hand) leaves the routes alone: rolling back again would
    overwrite that change. Idempotent; releases the lease.

    Raises:
        RolloutError: nothing to roll back to, an invalid target, or a target Triton cannot load.
    """
    fresh = _mine(state, read(storage, bucket, state.model)[0])
    if fresh.status in ("aborted", "rolled_back") and to is None:
        # aborted: the routes were changed by hand; rolled_back: already done (a retry), or by hand to another target
        log.info("rollout %s is %s (%s); leaving the routes alone", fresh.run_id, fresh.status, fresh.error)
        release(storage, _lease_uri(bucket, fresh.model), owner=fresh.run_id)
        return fresh
    target = to or (fresh.stable[0] if fresh.stable else None)
    if not target:
        raise RolloutError(f"rollout of {fresh.deployment} has no stable deployment of {fresh.model} to roll back to")
    _ensure_loaded(client, storage, bucket, target)
    after, before = _route_all(storage, bucket, fresh.model, target, by=fresh.run_id)
    old = [d for d in dict.fromkeys([fresh.deployment, *before]) if d != target]
    retired = retire(client, gateway_metrics_urls, fresh.model, old, after.revision, storage=storage,
                     triton_bucket=bucket)  # fmt: skip

    def change(current: RolloutState | None) -> RolloutState:
        mine = _mine(state, current)
        error = mine.error if mine.status == "rolled_back" and mine.error else reason
        return replace(mine, status="rolled_back", error=error, routes_revision=max(mine.routes_revision,
                       after.revision))  # fmt: skip

    new = update(storage, bucket, fresh.model, change)
    release(storage, _lease_uri(bucket, fresh.model), owner=fresh.run_id)
    log.info("rollout %s: rolled back to %s (%s); retired: %s", new.run_id, target, reason, retired)
    return new


def record_replacement(
    storage: Storage, bucket: str, model: str, deployment: str, *, previous: list[str], run_id: str,
    routes_revision: int,
) -> RolloutState:
    """Store a deploy that replaced ``previous`` at once (rollout steps ``[100]``, or a model's first deployment)
    as a finished rollout, so ``rollback_model`` and ``modelops rollout status`` know the deployment it replaced.
    """

    def change(current: RolloutState | None) -> RolloutState:
        if current is not None and current.run_id == run_id and current.deployment == deployment:
            return current  # a retried deploy
        history = ([current.summary()] + current.history)[:HISTORY_MAX] if current is not None else []
        return RolloutState(
            model=model, deployment=deployment, stable=list(previous), steps=[100], step_index=0, mode="canary",
            status="promoted", run_id=run_id, started_at=now(), updated_at=now(), thresholds={}, interval_s=0.0,
            routes_revision=routes_revision, analysis=[], error=None, history=history,
        )  # fmt: skip

    return update(storage, bucket, model, change)


def last_stable(storage: Storage, bucket: str, model: str) -> str | None:
    """The deployment ``rollback_model`` returns to by default.

    The stable of the latest promoted or rolled-back rollout; else the heaviest deployment of the current routes.
    """
    state = load_state(storage, bucket, model)
    if state is not None:
        for entry in [state.summary(), *state.history]:
            if entry.get("status") in ("promoted", "rolled_back") and entry.get("stable"):
                return str(entry["stable"][0])
    weights = read_routes(storage, bucket, model).weights()
    return max(weights, key=lambda d: weights[d]) if weights else None
