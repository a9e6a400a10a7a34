"""Connection ids are operator arguments: the defaults, a DAG's ``default_args`` at parse time, what a task gets."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODELOPS_DAGS = ("optimize_model", "rollout_model", "rollback_model", "nightly_reoptimize")


@pytest.fixture(scope="module")
def bag():
    from airflow.dag_processing.dagbag import DagBag

    dags = DagBag(dag_folder=str(REPO / "dags"))
    assert not dags.import_errors, dags.import_errors
    return dags


def test_every_modelops_task_of_the_shipped_dags_holds_the_default_connections(bag):
    from modelops_airflow.connections import Connections

    held = {}
    for dag_id in MODELOPS_DAGS:
        for task in bag.dags[dag_id].tasks:
            if hasattr(task, "connections") or hasattr(task, "aws_conn_id"):
                held[f"{dag_id}.{task.task_id}"] = Connections.of(task)
    # the light tasks, the step operators and the rollout operator all take them
    for name in ("optimize_model.resolve", "optimize_model.deploy", "optimize_model.export", "optimize_model.record",
                 "rollout_model.begin", "rollout_model.steps", "rollout_model.promote", "rollback_model.rollback",
                 "nightly_reoptimize.start"):
        assert held.pop(name) == Connections(), name
    assert all(c == Connections() for c in held.values())


def test_default_args_set_the_connections_of_every_modelops_operator_when_the_dag_is_parsed():
    from airflow.sdk import dag

    from modelops_airflow.connections import Connections
    from modelops_airflow.decorators import modelops_serving_task, modelops_task
    from modelops_airflow.operators.rollout_tasks import RolloutStepsOperator
    from modelops_airflow.operators.step_operator import step_operator

    @dag(dag_id="prod_connections", schedule=None,
         default_args={"aws_conn_id": "s3_prod", "mlflow_conn_id": "mlflow_prod", "retries": 0})
    def prod():
        @modelops_task
        def light(value: int, connections=None) -> dict:
            return {"value": value, **connections.as_dict()}

        @modelops_serving_task(triton_conn_id="triton_eu")  # an argument on the task wins over default_args
        def serving(connections=None) -> dict:
            return connections.as_dict()

        light(3) >> serving()
        step_operator("export", "s3://bucket/spec.json")
        RolloutStepsOperator(task_id="steps")

    built = prod()
    prod_conns = Connections(mlflow_conn_id="mlflow_prod", aws_conn_id="s3_prod")
    assert built.get_task("light").connections == prod_conns
    assert built.get_task("serving").connections == Connections(mlflow_conn_id="mlflow_prod", aws_conn_id="s3_prod",
                                                                triton_conn_id="triton_eu")
    assert built.get_task("steps").connections == prod_conns
    export = built.get_task("export")
    assert (export.aws_conn_id, export.worker_aws_conn_id) == ("s3_prod", "s3_worker")
    # the callable gets its operator's connections as ``connections``; the templated op_kwargs never hold them
    light = built.get_task("light")
    assert "connections" not in light.op_kwargs
    assert light.execute({"params": {}}) == {"value": 3, **prod_conns.as_dict()}
    assert [link.name for link in built.get_task("serving").operator_extra_links] == [
        "MLflow run", "Run report", "Triton model", "Gateway model", "Grafana dashboard"]


def test_a_bad_connection_id_fails_the_dag_at_parse_time():
    from modelops_airflow.decorators import modelops_task

    @modelops_task(aws_conn_id="")
    def light(connections=None) -> None:
        return None

    from airflow.sdk import dag

    @dag(dag_id="bad_connection", schedule=None)
    def bad():
        light()

    with pytest.raises(ValueError, match="aws_conn_id must be a non-empty connection id"):
        bad()


def test_the_provider_registers_the_decorators_and_every_link_class():
    import importlib

    from modelops_airflow.provider_info import get_provider_info

    info = get_provider_info()
    for path in info["extra-links"] + [d["class-name"] for d in info["task-decorators"]]:
        module, _, name = path.rpartition(".")
        assert getattr(importlib.import_module(module), name)
    from modelops_airflow.decorators import ModelOpsServingTaskOperator

    registered = {p.rpartition(".")[2] for p in info["extra-links"]}
    assert {type(link).__name__ for link in ModelOpsServingTaskOperator.operator_extra_links} <= registered
