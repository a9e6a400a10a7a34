"""Tasks of ``rollout_model`` and ``rollback_model``: progressive rollout judged on live metrics.

The DAG files wrap these in ``@task`` (begin, gate, promote, rollback, manual rollback) or use
:class:`RolloutStepsOperator`, which walks the judged steps without holding a worker slot: it writes a step's
weights, then defers on a :class:`TimeDeltaTrigger` in chunks of at most ``min(interval_s, 10)`` seconds and
judges the canary at each wake (PromQL over the time since the step began). The rollout's state lives in
``s3://<triton bucket>/rollouts/<model>.json`` (:mod:`modelops.rollout`), its record in MLflow
(:mod:`modelops.tracking.rollout_record`). Heavy imports happen here at run time, never at DAG parse time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import BaseOperator

from modelops.contracts.status import Status
from modelops_airflow.connections import Connections
from modelops_airflow.operators.rollout_params import check_params, thresholds

log = logging.getLogger(__name__)

CHUNK_S = 10.0  # longest single deferral; the canary is judged at every wake
MIN_WINDOW_S = 10.0  # shortest PromQL window a verdict is taken over
MANUAL_BY = " by rollback_model run "  # how a manual rollback signs the state's error


def fail(message: str) -> Exception:
    from airflow.sdk.exceptions import AirflowFailException

    return AirflowFailException(message.splitlines()[0][:500] if message else "rollout failed")


@dataclass
class Backends:
    """What the rollout tasks talk to, built from the Airflow connections."""

    storage: Any
    bucket: str
    prometheus_url: str
    gateway_metrics_urls: list[str]
    triton: Any = None  # tritonclient.http client with the admin header (built on first use)
    connections: Connections = field(default_factory=Connections)
    _triton_hook: Any = None
    _mlflow_hook: Any = None
    _mlflow: Any = None

    def client(self) -> Any:
        if self.triton is None:
            self.triton = self._triton_hook.get_client()
        return self.triton

    @property
    def mlflow(self) -> Any:
        """The MlflowClient, built on first use: importing MLflow takes seconds on a busy host, and a failing
        step rolls back before it records anything in MLflow."""
        if self._mlflow is None:
            self._mlflow = self._mlflow_hook.get_client()
        return self._mlflow


def backends(connections: Connections | None = None) -> Backends:
    """Hooks on the task's connections (its operator's ``*_conn_id`` arguments; defaults ``*_default``)."""
    from modelops.settings import Settings

    conns = connections or Connections()
    return Backends(storage=conns.s3().storage(), bucket=Settings.from_env().triton_bucket,
                    prometheus_url=conns.prometheus().url(), gateway_metrics_urls=[f"{conns.gateway().url()}/metrics"],
                    connections=conns, _triton_hook=conns.triton(), _mlflow_hook=conns.mlflow())


def step_label(state: Any, index: int) -> str:
    return f"step {index + 1}/{len(state.steps)} ({state.steps[index]}%)"


def begin(params: dict[str, Any], run_id: str, connections: Connections | None = None) -> dict[str, Any]:
    """Take the model's rollout lease, write the state document, open the MLflow run, tag the canary version."""
    from modelops.rollout import controller
    from modelops.rollout.state import RolloutError
    from modelops.tracking import rollout_record as rr

    cfg = check_params(params)
    be = backends(connections)
    version = rr.canary_version(be.storage, be.bucket, cfg["deployment"])
    if version is None:
        raise fail(f"deployment {cfg['deployment']} has no readable manifest in s3://{be.bucket}: not published")
    if version[0] != cfg["model"]:
        raise fail(f"deployment {cfg['deployment']} belongs to model {version[0]!r}, not {cfg['model']!r}")
    ensure_loaded(be, cfg["deployment"])
    try:
        state = controller.begin(be.storage, be.bucket, cfg["model"], cfg["deployment"], run_id=run_id,
                                 steps=cfg["steps"], mode=cfg["mode"], thresholds=thresholds(cfg["thresholds"]),
                                 interval_s=cfg["interval_s"])
    except RolloutError as exc:
        raise fail(str(exc)) from None
    try:
        mlflow_run = rr.open_rollout_run(be.mlflow, cfg["model"], cfg["deployment"], run_id, {
            "steps": state.steps, "mode": cfg["mode"], "interval_s": cfg["interval_s"], "stable": state.stable,
            "require_approval": cfg["require_approval"], **cfg["thresholds"]})
        rr.mark_version(be.mlflow, version[0], version[1], Status.CANARY, deployment=cfg["deployment"],
                        run_id=mlflow_run)
    except Exception as exc:  # nothing was routed yet: give the lease back so a retry or another run can start
        _abandon(be, state, f"MLflow: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else exc!r}")
        raise
    log.info("rollout of %s (%s) over %s: steps %s, stable %s; MLflow run %s", cfg["deployment"], cfg["mode"],
             cfg["model"], state.steps, state.stable or "none", mlflow_run)
    from modelops_airflow.links import serving_links

    return {"model": cfg["model"], "deployment": cfg["deployment"], "mlflow_run_id": mlflow_run,
            "version": list(version), "steps": state.steps, "mode": cfg["mode"],
            "links": serving_links(be.connections, cfg["model"], cfg["deployment"])}


def _abandon(be: Backends, state: Any, why: str) -> None:
    """Mark a rollout that never routed anything ``aborted`` and release its lease."""
    from dataclasses import replace

    from modelops.rollout import state as rollout_state
    from modelops.serving.locks import lock_uri, release

    rollout_state.update(be.storage, be.bucket, state.model,
                         lambda current: replace(current or state, status="aborted", error=why))
    release(be.storage, lock_uri(be.bucket, "rollout", state.model), owner=state.run_id)


def ensure_loaded(be: Backends, deployment: str) -> None:
    """Load the canary in Triton when it is not ready yet (a rollout started by hand), after checking its files."""
    from modelops.contracts.naming import deployment_uri
    from modelops.serving.publish import InvalidDeployment, verify_deployment

    client = be.client()
    if client.is_model_ready(deployment):
        return
    try:
        verify_deployment(be.storage, deployment_uri(be.bucket, deployment))
    except InvalidDeployment as exc:
        raise fail(str(exc)) from None
    from modelops.serving.deploy import DeployError, wait_ready

    log.info("loading %s in Triton", deployment)
    try:
        client.load_model(deployment)
        wait_ready(client, deployment)
    except DeployError as exc:
        raise fail(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - InferenceServerException or a connection error: one line
        raise fail(f"Triton could not load {deployment}: {str(exc).strip().splitlines()[0][:300]}") from None


def _load_ours(be: Backends, model: str, run_id: str) -> Any:
    """The state document if it is still this run's running rollout; else the one-line reason it stopped."""
    from modelops.rollout import controller
    from modelops.rollout.state import FINISHED
    from modelops.serving.routes import read_routes

    state = controller.load_state(be.storage, be.bucket, model)
    if state is None or state.run_id != run_id:
        return f"stopped: another rollout of {model} ({state.run_id if state else 'none'}) replaced this one"
    routes = read_routes(be.storage, be.bucket, model)
    if state.status in FINISHED or routes.revision != state.routes_revision:
        return f"stopped: routes were changed by {changed_by(routes.updated_by, state)} (revision {routes.revision})"
    return state


def changed_by(updated_by: str | None, state: Any) -> str:
    """Who changed the routes under a rollout. The controller writes a manual rollback's routes under the
    rollout's own run id; the manual rollback names itself at the end of the state's error (``... by <who>``)."""
    if updated_by and updated_by != state.run_id:
        return updated_by
    if state.error and MANUAL_BY in state.error:
        return state.error[state.error.index(MANUAL_BY) + len(" by "):]
    return updated_by or "someone"


class RolloutStepsOperator(BaseOperator):
    """Every judged step of a rollout (all steps but the last), deferring between judgements.

    Canary mode: each step is judged at every wake; a failing verdict rolls back at once; after ``interval_s``
    a passed verdict moves to the next step and no verdict (too few canary requests) fails the step. A/B mode
    (one held step): judged once, over the whole ``ab_duration_s``; the comparison goes to MLflow.
    The ``_``-methods below are its only I/O (S3 state and routes, Prometheus, MLflow, Triton).
    """

    ui_color = "#d9ead3"

    def __init__(self, *, chunk_s: float = CHUNK_S, mlflow_conn_id: str = "mlflow_default",
                 aws_conn_id: str = "s3_default", triton_conn_id: str = "triton_default",
                 prometheus_conn_id: str = "prometheus_default", gateway_conn_id: str = "gateway_default",
                 openwebui_conn_id: str = "openwebui_default", **kwargs: Any) -> None:  # fmt: skip
        super().__init__(**kwargs)
        self.chunk_s = chunk_s
        self.connections = Connections(mlflow_conn_id=mlflow_conn_id, aws_conn_id=aws_conn_id,
                                       triton_conn_id=triton_conn_id, prometheus_conn_id=prometheus_conn_id,
                                       gateway_conn_id=gateway_conn_id, openwebui_conn_id=openwebui_conn_id)
        self._be: Backends | None = None

    # -- I/O ----------------------------------------------------------------------------------------
    def _backends(self, context: dict[str, Any]) -> Backends:
        if self._be is None:
            self._be = backends(self.connections)
        return self._be

    def _meta(self, context: dict[str, Any]) -> dict[str, Any]:
        return context["ti"].xcom_pull(task_ids="begin")

    def _current(self, context: dict[str, Any]) -> Any:
        """This run's running state, or the one-line reason it was stopped."""
        return _load_ours(self._backends(context), self._meta(context)["model"], context["run_id"])

    def _apply(self, context: dict[str, Any], state: Any, index: int) -> Any:
        from modelops.rollout import controller

        be = self._backends(context)
        return controller.apply_step(be.storage, be.bucket, state, index)

    def _judge(self, context: dict[str, Any], state: Any, window_s: float) -> Any:
        from modelops.rollout import analysis

        prom = analysis.PrometheusClient(self._backends(context).prometheus_url)
        try:
            return analysis.analyze(prom, state.model, state.deployment, state.stable[0] if state.stable else None,
                                    window_s, thresholds(state.thresholds))
        except analysis.PrometheusError as exc:  # no verdict: wait on; at the end of the step it rolls back
            return analysis.Verdict(None, [f"Prometheus: {exc}"],
                                    analysis.DeploymentStats(state.deployment, 0.0, None, None), None)

    def _record(self, context: dict[str, Any], state: Any, verdict: Any) -> Any:
        """The verdict into the rollout state (S3); MLflow follows in :meth:`_log` (after a rollback, if any)."""
        from modelops.rollout import controller

        be = self._backends(context)
        return controller.record_verdict(be.storage, be.bucket, state, verdict)

    def _log(self, context: dict[str, Any], state: Any) -> None:
        from modelops.tracking import rollout_record as rr

        be, run = self._backends(context), self._meta(context)["mlflow_run_id"]
        rr.log_step(be.mlflow, run, state.analysis[-1])
        if state.mode == "ab":
            rr.log_ab_comparison(be.mlflow, run, state.analysis[-1])

    def _rollback(self, context: dict[str, Any], state: Any, reason: str) -> None:
        from modelops.rollout import controller

        be = self._backends(context)
        controller.rollback(be.storage, be.bucket, state, reason, client=be.client(),
                            gateway_metrics_urls=be.gateway_metrics_urls)

    # -- the loop -----------------------------------------------------------------------------------
    def execute(self, context: dict[str, Any]) -> Any:
        meta = self._meta(context)
        if len(meta["steps"]) < 2:
            self.log.info("no stable deployment to compare with: %s goes to 100%% at once", meta["deployment"])
            return None
        return self._start(context, 0)

    def _start(self, context: dict[str, Any], index: int) -> Any:
        from modelops.rollout.state import RolloutError

        state = self._current(context)
        if isinstance(state, str):
            self._stop(context, state)
        try:
            state = self._apply(context, state, index)
        except RolloutError as exc:
            self._stop(context, str(exc) if str(exc).startswith("stopped:") else f"stopped: {exc}")
        self.log.info("%s: %s gets %d%% (routes revision %d)", step_label(state, index), state.deployment,
                      state.steps[index], state.routes_revision)
        self._wait(index, datetime.now(UTC).isoformat(), state.interval_s, 0.0)

    def _wait(self, index: int, started: str, interval_s: float, elapsed: float) -> None:
        from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger

        end = max(interval_s, MIN_WINDOW_S)
        delay = max(min(self.chunk_s, interval_s, end - elapsed), 1.0)
        self.defer(trigger=TimeDeltaTrigger(timedelta(seconds=delay)), method_name="wake",
                   kwargs={"index": index, "started": started})

    def wake(self, context: dict[str, Any], event: Any = None, *, index: int, started: str) -> Any:
        """Resumed by the trigger: judge the step; roll back, fail, go on waiting, or start the next step."""
        state = self._current(context)
        if isinstance(state, str):
            self._stop(context, state)
        elapsed = (datetime.now(UTC) - datetime.fromisoformat(started)).total_seconds()
        done = elapsed >= max(state.interval_s, MIN_WINDOW_S) - 0.5  # the trigger fires at the end, give or take
        if elapsed < MIN_WINDOW_S or (state.mode == "ab" and not done):
            return self._wait(index, started, state.interval_s, elapsed)
        verdict = self._judge(context, state, max(elapsed, MIN_WINDOW_S))
        label = step_label(state, index)
        self.log.info("%s after %.0f s: passed=%s %s", label, elapsed, verdict.passed, "; ".join(verdict.reasons))
        if verdict.passed is not False and not done:
            return self._wait(index, started, state.interval_s, elapsed)
        state = self._record(context, state, verdict)
        if verdict.passed:
            self._log(context, state)
            if index + 2 < len(state.steps):
                return self._start(context, index + 1)
            self.log.info("every judged step passed; %s is ready for %d%%", state.deployment, state.steps[-1])
            return {"passed_steps": index + 1}
        why = "; ".join(verdict.reasons) or "no verdict"
        if verdict.passed is None:
            why = f"no verdict after {elapsed:.0f} s: {why}"
        reason = f"{label}: {why}"
        context["ti"].xcom_push(key="reason", value=reason)
        self.log.error("rolling back %s: %s", state.deployment, reason)
        self._rollback(context, state, reason)
        self._log(context, state)
        raise fail(f"rolled back: {reason}")

    def _stop(self, context: dict[str, Any], reason: str) -> None:
        context["ti"].xcom_push(key="reason", value=reason)
        raise fail(reason)


def gate(require_approval: bool, run_id: str, connections: Connections | None = None) -> str:
    """Branch: ``approve`` (the state says waiting_approval) when a human must approve the last step, else
    ``promote``."""
    if not require_approval:
        return "promote"
    from modelops.rollout import state as rollout_state
    from modelops.settings import Settings

    storage, bucket = (connections or Connections()).s3().storage(), Settings.from_env().triton_bucket
    meta = xcom("begin")

    def waiting(current: Any) -> Any:
        if current is None or current.run_id != run_id or current.status != "running":
            raise rollout_state.RolloutError(f"stopped: the rollout of {meta['model']} is no longer this run's")
        current.status = "waiting_approval"
        return current

    try:
        rollout_state.update(storage, bucket, meta["model"], waiting)
    except rollout_state.RolloutError as exc:
        raise fail(str(exc)) from None
    return "approve"


def xcom(task_id: str, key: str = "return_value") -> Any:
    from airflow.sdk import get_current_context

    return get_current_context()["ti"].xcom_pull(task_ids=task_id, key=key)


def promote(run_id: str, connections: Connections | None = None) -> dict[str, Any]:
    """The last step: the canary takes 100%, the stable is drained and unloaded, MLflow says deployed."""
    from modelops.rollout import controller
    from modelops.rollout.state import RolloutError
    from modelops.tracking import rollout_record as rr

    be, meta = backends(connections), xcom("begin")
    state = _load_ours(be, meta["model"], run_id)
    if isinstance(state, str):
        raise fail(state)
    try:
        state = controller.promote(be.storage, be.bucket, state, client=be.client(),
                                   gateway_metrics_urls=be.gateway_metrics_urls)
    except RolloutError as exc:
        raise fail(str(exc)) from None
    model, version = meta["version"]
    rr.mark_version(be.mlflow, model, version, Status.DEPLOYED, deployment=state.deployment,
                    run_id=meta["mlflow_run_id"])
    rr.finish_rollout(be.mlflow, meta["mlflow_run_id"], state.to_json(), "promoted")
    log.info("promoted %s to 100%% of %s (routes revision %d); retired %s", state.deployment, state.model,
             state.routes_revision, state.stable or "nothing")
    from modelops_airflow.operators.openwebui_tasks import refresh_quietly

    refresh_quietly(f"promoting {state.deployment}", be.connections)
    return {"deployment": state.deployment, "routes_revision": state.routes_revision, "retired": state.stable}

