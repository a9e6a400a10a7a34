"""rollback_model: put a model back on one deployment by hand.

Routes 100% to ``to_deployment`` (default: the stable deployment of the model's last finished rollout, else the
heaviest routed one), drains and unloads the others and records the statuses on the MLflow model versions. A
running ``rollout_model`` of the same model stops at its next wake ("stopped: routes were changed by ...")
instead of rolling back over this. Wiring only: the work is in ``modelops_airflow.operators.rollback_tasks`` (operators/).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag

from modelops_airflow.decorators import modelops_task

PARAMS = {
    "model_name": Param("digits_cnn", type="string", minLength=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
                        title="Model", description="Public (registered) model name to roll back."),
    "to_deployment": Param(None, type=["null", "string"], pattern=r"^[a-z0-9][a-z0-9_-]*$",
                           title="Deployment to return to",
                           description="Leave empty for the last stable deployment of the model."),
}


@dag(
    dag_id="rollback_model",
    schedule=None,
    catchup=False,
    # started by optimize_model's start_rollout (and by hand): a fresh Airflow must not create it paused,
    # or the rollout waits queued forever
    is_paused_upon_creation=False,
    params=PARAMS,
    tags=["modelops", "triton", "rollout"],
    default_args={"retries": 0, "execution_timeout": timedelta(minutes=15)},
    doc_md=__doc__,
)
def rollback_model():
    @modelops_task
    def rollback(params=None, run_id=None, connections=None) -> dict:
        from modelops_airflow.operators import rollback_tasks

        return rollback_tasks.manual_rollback(dict(params), run_id, connections)

    rollback()


rollback_model()
