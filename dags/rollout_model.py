"""rollout_model: move traffic to a new deployment in judged steps, promote it or roll it back.

begin -> steps -> gate -> [approve] -> promote, and rollback (trigger rule one_failed) after any of them.

``steps`` writes each step's weights to ``s3://<triton bucket>/routes/<model>.json`` and judges the canary on its
own success rate and p99 against the stable deployment (PromQL on the stack's Prometheus) while it waits,
deferred, without holding a worker slot; a failing step rolls back at once. ``approve`` (only with
``require_approval``) is a human-in-the-loop approval before the last step; a rejection rolls back. Mode ``ab``
holds ``ab_weight`` percent for ``ab_duration_s``, writes the A/B comparison to MLflow and promotes the canary
only if it passes the same thresholds. This file is wiring only: the work is in ``modelops_airflow.operators.rollout_tasks`` (operators/).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param, dag, task

from modelops_airflow.decorators import modelops_serving_task, modelops_task
from modelops_airflow.operators.rollout_tasks import RolloutStepsOperator

PARAMS = {
    "model_name": Param("digits_cnn", type="string", minLength=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
                        title="Model", description="Public (registered) model name whose routes change."),
    "deployment": Param(None, type=["null", "string"], pattern=r"^[a-z0-9][a-z0-9_-]*$", title="New deployment",
                        description="Required: the published deployment to roll out "
                        "(e.g. digits_cnn--v3-ort_int8_dynamic)."),
    "steps": Param([10, 50, 100], type="array", items={"type": "integer", "minimum": 1, "maximum": 100},
                   minItems=1, uniqueItems=True, title="Steps (percent)",
                   description="Canary weights, ascending, the last one 100 (the promotion). [100] replaces at once."),
    "interval_s": Param(60, type="number", minimum=1, maximum=86400, title="Step interval (s)",
                        description="How long each step is held and judged before the next one."),
    "min_success_rate": Param(0.99, type="number", minimum=0, maximum=1, title="Minimum success rate",
                              description="Share of the canary's answers that must not be 5xx over the step."),
    "max_p99_ms": Param(None, type=["null", "number"], exclusiveMinimum=0, title="Maximum p99 (ms)",
                        description="Absolute bound on the canary's p99 latency through the gateway (empty: none)."),
    "max_p99_regression": Param(0.25, type="number", minimum=0, maximum=100, title="Maximum p99 regression",
                                description="The canary's p99 may be at most this fraction above the stable's."),
    "min_requests": Param(20, type="integer", minimum=1, title="Minimum requests per step",
                          description="Fewer canary requests in a step: no verdict (the step fails at its end)."),
    "require_approval": Param(False, type="boolean", title="Require approval",
                              description="A human approves (Airflow's Required Actions) before the last step."),
    "mode": Param("canary", type="string", enum=["canary", "ab"], title="Mode",
                  description="canary: judged steps; ab: hold ab_weight for ab_duration_s, compare, promote or not."),
    "ab_weight": Param(50, type="integer", minimum=1, maximum=99, title="A/B weight (percent)",
                       description="Mode ab: share of traffic the new deployment gets during the test."),
    "ab_duration_s": Param(300, type="number", minimum=10, maximum=86400, title="A/B duration (s)",
                           description="Mode ab: how long both deployments serve before they are compared."),
}


@dag(
    dag_id="rollout_model",
    schedule=None,
    catchup=False,
    # started by optimize_model's start_rollout (and by hand): a fresh Airflow must not create it paused,
    # or the rollout waits queued forever
    is_paused_upon_creation=False,
    params=PARAMS,
    tags=["modelops", "triton", "rollout"],
    max_active_runs=8,
    default_args={"retries": 0, "execution_timeout": timedelta(hours=1)},
    doc_md=__doc__,
)
def rollout_model():
    @modelops_serving_task
    def begin(params=None, run_id=None, connections=None) -> dict:
        from modelops_airflow.operators import rollout_tasks

        return rollout_tasks.begin(dict(params), run_id, connections)

    @task.branch
    def gate(params=None, run_id=None, aws_conn_id="s3_default") -> str:
        """(Airflow fills ``aws_conn_id`` from ``default_args`` too: a TaskFlow argument with a default.)"""
        from modelops_airflow.connections import Connections
        from modelops_airflow.operators import rollout_tasks

        return rollout_tasks.gate(bool(params.get("require_approval")), run_id, Connections(aws_conn_id=aws_conn_id))

    @modelops_task(trigger_rule="none_failed_min_one_success")
    def promote(run_id=None, connections=None) -> dict:
        from modelops_airflow.operators import rollout_tasks

        return rollout_tasks.promote(run_id, connections)

    @modelops_task(trigger_rule="one_failed")
    def rollback(run_id=None, connections=None) -> None:
        from modelops_airflow.operators import rollback_tasks

        rollback_tasks.rollback_after_failure(run_id, connections)

    started = begin()
    steps = RolloutStepsOperator(task_id="steps", execution_timeout=None)
    approve = ApprovalOperator(
        task_id="approve",
        subject="Promote {{ params.deployment }} to 100% of {{ params.model_name }}?",
        body="Every judged step of rollout {{ run_id }} passed (see the steps task's log and the MLflow run "
        "'rollout {{ params.deployment }}'). Approve sends all traffic to the new deployment; Reject rolls back.",
        fail_on_reject=True,  # a rejection fails the task, so rollback (one_failed) runs
        execution_timeout=None,
    )
    branch, promoted = gate(), promote()
    started >> steps >> branch >> [approve, promoted]
    approve >> promoted
    [started, steps, branch, approve, promoted] >> rollback()


rollout_model()
