"""optimize_model end to end through Airflow's REST API on the real stack (the path `make demo` takes)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.integration
DAG = "optimize_model"


@pytest.fixture(scope="module")
def digits_run(register, airflow, stack):
    reg = register("digits", alias="champion")
    from modelops.local.demo import run_optimize

    run_id, state = run_optimize(airflow, {"model_name": reg["name"], "model_alias": "champion", "model_version": None},
                                 show_progress=False, timeout_s=1500)
    return reg, run_id, state


def test_run_succeeds_and_deploys(digits_run, airflow):
    reg, run_id, state = digits_run
    states = airflow.task_states(DAG, run_id)
    assert state == "success", states
    for task in ("resolve", "export", "optimize", "validate", "benchmark", "select", "publish", "deploy", "record"):
        assert states[task] == "success", (task, states)
    assert states["compile"] == "skipped"  # no engine variant requested: mapped over no GPU product
    summary = airflow.xcom(DAG, run_id, "record")
    image_defaults = ("ort_fp32", "ort_int8_static", "openvino_int8")  # the digits CNN's family defaults
    assert summary["chosen"] in image_defaults
    assert summary["deployment"] == f"{reg['name']}--v{reg['version']}-{summary['chosen']}".lower()
    assert summary["speedup"] and summary["speedup"] > 0
    variants = {row["variant"] for row in summary["rows"]}
    assert {"baseline", *image_defaults} <= variants
    for row in summary["rows"]:
        if row["variant"] != "baseline" and row["status"] in ("chosen", "eligible"):
            assert len(row["points"]) >= 2  # two or more concurrency levels measured


def test_deployment_is_immutable_verified_and_routed(digits_run, airflow, storage, settings):
    from modelops.serving.publish import verify_deployment
    from modelops.serving.routes import read_routes

    reg, run_id, _ = digits_run
    summary = airflow.xcom(DAG, run_id, "record")
    uri = f"s3://{settings.triton_bucket}/{summary['deployment']}"
    manifest = verify_deployment(storage, uri)
    assert manifest["variant"] == summary["chosen"] and manifest["model_version"] == str(reg["version"])
    assert "config.pbtxt" in manifest["files"] and any(f.startswith("1/") for f in manifest["files"])
    for key in ("source_model_uri", "recipe", "library_versions", "target_device", "created_at"):
        assert manifest[key], key
    routes = read_routes(storage, settings.triton_bucket, reg["name"])
    assert routes.weights() == {summary["deployment"]: 100}
    assert routes.revision >= 1


def test_triton_answers_like_the_source_model(digits_run, airflow, storage, triton):
    from modelops.serving.deploy import load_npz, triton_infer

    _reg, run_id, _ = digits_run
    summary = airflow.xcom(DAG, run_id, "record")
    assert triton.is_model_ready(summary["deployment"])
    spec = storage.read_json(airflow.xcom(DAG, run_id, "resolve")["spec_uri"])
    export = storage.read_json(f"{spec['run_prefix']}/export/result.json")
    samples = load_npz(storage, export["outputs"]["samples"])
    inputs = {k: v for k, v in samples.items() if not k.startswith("output:")}
    out_name = export["io"]["outputs"][0]["name"]
    got = triton_infer(triton, summary["deployment"], inputs, [out_name])[out_name]
    source = samples[f"output:{out_name}"]
    assert got.shape == source.shape
    assert np.mean(np.argmax(got, 1) == np.argmax(source, 1)) >= 0.99
    assert np.max(np.abs(got - source)) < 0.5  # logits; int8 may move them a little, never far


def test_mlflow_records_the_run(digits_run, airflow, mlflow_client):
    reg, run_id, _ = digits_run
    summary = airflow.xcom(DAG, run_id, "record")
    mv = mlflow_client.get_model_version(reg["name"], reg["version"])
    assert mv.tags["modelops.status"] == "deployed"
    assert mv.tags["modelops.deployment"] == summary["deployment"]
    assert mv.tags["modelops.variant"] == summary["chosen"]
    assert float(mv.tags["modelops.speedup"]) == pytest.approx(summary["speedup"])
    run = mlflow_client.get_run(mv.tags["modelops.run_id"])
    exp = mlflow_client.get_experiment(run.info.experiment_id)
    assert exp.name == f"modelops/{reg['name']}"
    assert run.info.status == "FINISHED"
    assert run.data.params["recipe"] == "digits_cnn"
    assert "baseline.best_throughput" in run.data.metrics and "ort_fp32.metric" in run.data.metrics
    artifacts = {a.path for a in mlflow_client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "throughput_vs_p99.png", "perf_analyzer"} <= artifacts
    perf = {a.path for a in mlflow_client.list_artifacts(run.info.run_id, "perf_analyzer")}
    assert "perf_analyzer/baseline.csv" in perf
    local = mlflow_client.download_artifacts(run.info.run_id, "summary.json")
    with open(local) as fh:
        assert json.load(fh)["deployment"] == summary["deployment"]


def test_unknown_model_fails_first_task_with_one_clear_line(airflow):
    from modelops.local.demo import run_optimize

    run_id, state = run_optimize(airflow, {"model_name": "no_such_model_xyz", "model_alias": "champion",
                                           "model_version": None}, show_progress=False, timeout_s=600)
    assert state == "failed"
    states = airflow.task_states(DAG, run_id)
    assert states["resolve"] == "failed"
    assert states["export"] in ("upstream_failed", None)
    assert "registered model 'no_such_model_xyz' not found in MLflow" in airflow.task_log(DAG, run_id, "resolve")


def test_publish_and_deploy_emit_asset_events(digits_run, airflow):
    """Other DAGs can be scheduled on x-modelops://deployed/<model> (and .../published/<model>)."""
    reg, run_id, _ = digits_run
    summary = airflow.xcom(DAG, run_id, "record")
    events = airflow.request("GET", "/assets/events", params={"source_dag_id": DAG, "source_run_id": run_id,
                                                             "limit": 100})["asset_events"]  # fmt: skip
    by_task = {e["source_task_id"]: e for e in events}
    assert set(by_task) >= {"publish", "deploy"}, events
    assert by_task["publish"]["uri"] == f"x-modelops://published/{reg['name']}"
    assert by_task["deploy"]["uri"] == f"x-modelops://deployed/{reg['name']}"
    for event in (by_task["publish"], by_task["deploy"]):
        assert event["extra"]["deployment"] == summary["deployment"]
        assert event["extra"]["model_version"] == str(reg["version"])
    assert by_task["deploy"]["extra"]["routes"] == {summary["deployment"]: 100}


def test_step_tasks_link_to_the_mlflow_run_and_its_report(digits_run, airflow, mlflow_client, stack):
    import requests

    reg, run_id, _ = digits_run
    mv = mlflow_client.get_model_version(reg["name"], reg["version"])
    mlflow_run = mlflow_client.get_run(mv.tags["modelops.run_id"])
    links = airflow.request("GET", f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/benchmark/links")["extra_links"]
    mlflow_url = stack["mlflow"]["url"].rstrip("/")
    assert links["MLflow run"] == (f"{mlflow_url}/#/experiments/{mlflow_run.info.experiment_id}/runs/"
                                   f"{mlflow_run.info.run_id}")  # fmt: skip
    report = requests.get(links["Run report"], timeout=30,
                          auth=(stack["mlflow"]["username"], stack["mlflow"]["password"]))
    assert report.status_code == 200 and "<html" in report.text.lower()[:2000]


def test_deploy_links_to_the_triton_and_gateway_model(digits_run, airflow, stack):
    """deploy's "Triton model" and "Gateway model" links answer with the deployment's metadata; no Grafana
    connection on the embedded stack, so no dashboard link."""
    import uuid

    import requests

    from modelops.serving.gateway.keys import KeyStore

    reg, run_id, _ = digits_run
    deployment = airflow.xcom(DAG, run_id, "record")["deployment"]
    links = airflow.request("GET", f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/deploy/links")["extra_links"]
    assert links["Triton model"] == f"{stack['triton']['http'].rstrip('/')}/v2/models/{deployment}"
    assert links["Gateway model"] == f"{stack['gateway']['url'].rstrip('/')}/v2/models/{reg['name']}"
    assert not links.get("Grafana dashboard")
    assert requests.get(links["Triton model"], timeout=30).json()["name"] == deployment
    _, key = KeyStore(stack["gateway"]["keys_db"]).create(f"it-links-{uuid.uuid4().hex[:6]}", reg["name"])
    answer = requests.get(links["Gateway model"], headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert answer.status_code == 200 and answer.headers["X-ModelOps-Deployment"] == deployment
