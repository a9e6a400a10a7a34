"""Steps on the real stack for a second architecture, and the bad inputs that must leave serving untouched."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from tests.integration.helpers import randomize_weights, run_step
from tests.integration.helpers import resolve as _resolve

pytestmark = pytest.mark.integration




@pytest.fixture(scope="module")
def wine(register, settings, storage, tmp_path_factory):
    """A residual MLP on wine, pickled (the generic PyTorch recipe), carried through export/optimize/validate."""
    reg = register("wine", alias="champion", serialization="pickle")
    meta = _resolve({"model_name": reg["name"], "model_alias": "champion"})
    assert meta["recipe"] == "pytorch_generic"
    tmp = tmp_path_factory.mktemp("wine")
    for step in ("export", "optimize", "validate"):
        proc = run_step(settings, step, meta["spec_uri"], tmp)
        assert proc.returncode == 0, proc.stderr[-2000:]
    return reg, meta, storage.read_json(meta["spec_uri"])


def test_second_architecture_published_and_served_like_the_source(wine, storage, triton, settings):
    from modelops.serving.deploy import deploy, load_npz, triton_infer
    from modelops.serving.publish import publish_candidate, verify_deployment
    from modelops.serving.routes import read_routes
    from modelops.steps._common import load_result

    reg, _meta, spec = wine
    export, optimize, validate = (load_result(storage, spec, s) for s in ("export", "optimize", "validate"))
    assert export["metrics"]["parity_max_abs_diff"] < 1e-3
    assert validate["candidates"]["ort_fp32"]["status"] == "accepted"
    pub = publish_candidate(storage, spec, "ort_fp32", export, optimize, settings.triton_bucket)
    assert pub["deployment"] == f"{reg['name']}--v{reg['version']}-ort_fp32".lower()
    verify_deployment(storage, pub["uri"])
    again = publish_candidate(storage, spec, "ort_fp32", export, optimize, settings.triton_bucket)
    assert again["reused"]  # never overwritten
    out = deploy(triton, storage, settings.triton_bucket, reg["name"], pub["deployment"],
                 samples_uri=export["outputs"]["samples"],
                 candidate_outputs_uri=validate["candidates"]["ort_fp32"]["sample_outputs"], run_id=spec["run_id"])
    assert out["smoke"]["max_abs_diff_vs_source"] < 1e-3
    samples = load_npz(storage, export["outputs"]["samples"])
    inputs = {k: v for k, v in samples.items() if not k.startswith("output:")}
    name = export["io"]["outputs"][0]["name"]
    got = triton_infer(triton, pub["deployment"], inputs, [name])[name]
    np.testing.assert_allclose(got, samples[f"output:{name}"], atol=1e-3)
    assert read_routes(storage, settings.triton_bucket, reg["name"]).weights() == {pub["deployment"]: 100}


def test_a_pickled_model_loads_only_with_the_opt_in(wine, register, mlflow_client):
    """The fixture's version was tagged modelops.allow_pickle=true at registration: its steps ran under MLflow's open
    pickle gate. The same model without the tag is refused at resolve, in one line, and the version says why."""
    from airflow.sdk.exceptions import AirflowFailException

    _reg, _meta, spec = wine
    assert spec["allow_pickle"] is True
    reg = register("wine", alias=None, serialization="pickle", allow_pickle=False)
    with pytest.raises(AirflowFailException) as err:
        _resolve({"model_name": reg["name"], "model_version": str(reg["version"])})
    line = str(err.value)
    assert f"model {reg['name']} version {reg['version']} runs code from its own files when loaded: its PyTorch " \
           "module is pickled" in line and "modelops.allow_pickle=true" in line and "\n" not in line
    tags = mlflow_client.get_model_version(reg["name"], reg["version"]).tags
    assert "modelops.allow_pickle" not in tags and "runs code from its own files" in tags["modelops.error"]


def test_candidate_failing_accuracy_is_rejected_and_never_published(wine, storage, settings, tmp_path):
    """A candidate with random weights (posing as ort_int8_static, a variant this run did not build): validate
    must reject it, select skip it, and it is never published."""
    from modelops.evaluation.selection import select
    from modelops.serving.publish import verify_deployment
    from modelops.steps._common import load_result, result_uri

    reg, _meta, spec = wine
    optimize = load_result(storage, spec, "optimize")
    cand_uri = optimize["candidates"]["ort_fp32"]["onnx"]
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    storage.download_file(cand_uri, good)
    randomize_weights(settings, good, bad)  # onnx lives in the worker environment
    broken = "ort_int8_static"  # a registry name (the spec's variants are checked); not built by this run
    assert broken not in optimize["candidates"]
    bad_uri = f"{spec['run_prefix']}/{broken}/model.onnx"
    storage.upload_file(bad, bad_uri)
    bad_spec = {**spec, "variants": ["ort_fp32", broken], "run_prefix": spec["run_prefix"] + "-bad"}
    for step in ("export",):
        storage.write_json(result_uri(bad_spec, step), load_result(storage, spec, step))
    storage.write_json(result_uri(bad_spec, "optimize"), {"status": "done", "candidates": {
        **optimize["candidates"],
        broken: {"status": "done", "onnx": bad_uri, "size_bytes": 1, "reason": None, "runtime": "onnxruntime"}}})
    spec_uri = f"{bad_spec['run_prefix']}/spec.json"
    storage.write_json(spec_uri, bad_spec)
    proc = run_step(settings, "validate", spec_uri, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    verdict = proc.result["candidates"][broken]
    assert verdict["status"] == "rejected" and verdict["reason"]
    assert proc.result["candidates"]["ort_fp32"]["status"] == "accepted"
    # the broken candidate measures by far the fastest: only the validate verdict can keep it out
    bench = {"variants": {v: {"status": "done", "points": [{"concurrency": 1, "throughput": t, "p50_ms": 1, "p99_ms": 2}]}
                          for v, t in (("baseline", 10.0), ("ort_fp32", 20.0), (broken, 1e6))}}
    accepted_too = {**proc.result, "candidates": {**proc.result["candidates"], broken: {"status": "accepted"}}}
    assert select(accepted_too, bench, 100).chosen == broken  # control: the bench alone would pick it
    kinds = {"baseline": "pytorch", "ort_fp32": "onnxruntime", broken: "onnxruntime"}
    storage.write_json(result_uri(bad_spec, "benchmark"), {"status": "done", "variants": {
        v: {**m, "kind": kinds[v]} for v, m in bench["variants"].items()}})
    # the pipeline's own select and publish tasks, on what validate wrote
    from modelops_airflow.operators import pipeline_tasks

    selection = pipeline_tasks.select(spec_uri)
    assert selection["chosen"] == "ort_fp32"
    publication = pipeline_tasks.publish(spec_uri, selection)
    assert publication["deployment"] == f"{reg['name']}--v{reg['version']}-ort_fp32".lower()
    verify_deployment(storage, publication["uri"])
    broken_uri = f"s3://{settings.triton_bucket}/{reg['name']}--v{reg['version']}-{broken}".lower()
    assert storage.list(broken_uri) == []  # not a file of it, manifest or not


def test_unknown_alias_and_version_fail_resolve_with_one_line(register, wine):
    from airflow.sdk.exceptions import AirflowFailException

    reg, _, _ = wine
    with pytest.raises(AirflowFailException) as err:
        _resolve({"model_name": reg["name"], "model_alias": "nope"})
    assert str(err.value) == f"registered model {reg['name']!r} has no alias 'nope'"
    with pytest.raises(AirflowFailException) as err:
        _resolve({"model_name": reg["name"], "model_version": "999"})
    assert str(err.value) == f"registered model {reg['name']!r} has no version '999'"
    # a well-formed request (an alias given) for a model that does not exist: the missing model is the reason
    missing = f"never_registered_{uuid.uuid4().hex[:6]}"
    with pytest.raises(AirflowFailException) as err:
        _resolve({"model_name": missing, "model_alias": "champion"})
    assert str(err.value) == f"registered model {missing!r} not found in MLflow"
    with pytest.raises(AirflowFailException) as err:  # and a malformed one says so, for a model that exists
        _resolve({"model_name": reg["name"]})
    assert str(err.value) == "give exactly one of model_version or model_alias"


def test_a_given_version_wins_over_the_default_alias(wine, mlflow_client):
    """{"model_version": N} alone (the form and REST fill in model_alias=champion) runs version N."""
    reg, _, _ = wine
    src = mlflow_client.get_model_version(reg["name"], reg["version"])
    newer = mlflow_client.create_model_version(reg["name"], src.source, run_id=src.run_id,
                                               model_id=src.source.removeprefix("models:/"))  # MLflow 3: a logged model
    mlflow_client.set_model_version_tag(reg["name"], newer.version, "modelops.allow_pickle", "true")  # still a pickle
    run = f"test__{uuid.uuid4().hex[:8]}"  # one Airflow run: it may take its own (model, version) lease again
    meta = _resolve({"model_name": reg["name"], "model_version": str(newer.version), "model_alias": "champion"}, run)
    assert meta["model_version"] == str(newer.version) != str(reg["version"])
    mlflow_client.set_registered_model_alias(reg["name"], "staging_here", newer.version)
    meta = _resolve({"model_name": reg["name"], "model_version": str(newer.version), "model_alias": "staging_here"}, run)
    assert meta["model_version"] == str(newer.version)  # an alias that agrees with the version is no conflict
    from airflow.sdk.exceptions import AirflowFailException

    mlflow_client.set_registered_model_alias(reg["name"], "staging_here", reg["version"])
    with pytest.raises(AirflowFailException) as err:
        _resolve({"model_name": reg["name"], "model_version": str(newer.version), "model_alias": "staging_here"}, run)
    assert str(err.value) == (f"model_version {newer.version} and model_alias 'staging_here' (version {reg['version']}) "
                              f"of {reg['name']!r} disagree: give one of them")


def test_corrupt_artifact_fails_the_run_and_says_why_on_the_version(register, airflow, storage, mlflow_client, settings):
    from modelops.local.demo import run_optimize
    from modelops.serving.routes import read_routes

    reg = register("digits", alias="champion")
    src = mlflow_client.get_model_version_download_uri(reg["name"], reg["version"])
    from modelops.tracking.registry import to_s3_uri

    prefix = to_s3_uri(src, settings.mlflow_bucket)
    files = [u for u in storage.list(prefix) if u.endswith((".pt2", ".pth", ".pt"))]
    assert files, storage.list(prefix)
    for uri in files:
        storage.write_bytes(uri, b"this is not a model")
    before = read_routes(storage, settings.triton_bucket, reg["name"])
    run_id, state = run_optimize(airflow, {"model_name": reg["name"], "model_version": str(reg["version"]),
                                           "model_alias": None}, show_progress=False, timeout_s=900)
    assert state == "failed"
    assert airflow.task_states("optimize_model", run_id)["export"] == "failed"
    mv = mlflow_client.get_model_version(reg["name"], reg["version"])
    assert mv.tags["modelops.status"] == "failed"
    assert "export" in mv.tags["modelops.error"] and "\n" not in mv.tags["modelops.error"]
    log = airflow.task_log("optimize_model", run_id, "export")
    assert "export: error:" in log
    after = read_routes(storage, settings.triton_bucket, reg["name"])
    assert (after.revision, after.weights()) == (before.revision, before.weights())


def test_deployment_triton_cannot_load_leaves_routes_unchanged(wine, storage, triton, settings):
    """A published deployment whose model file is garbage (manifest consistent): load fails, routes stay."""
    import json

    from modelops.serving.deploy import DeployError, deploy
    from modelops.serving.publish import MANIFEST, file_table
    from modelops.serving.routes import read_routes
    from modelops.steps._common import load_result

    reg, _meta, spec = wine
    export, validate = load_result(storage, spec, "export"), load_result(storage, spec, "validate")
    deployment = f"{reg['name']}--v{reg['version']}-garbage"
    uri = f"s3://{settings.triton_bucket}/{deployment}"
    live = read_routes(storage, settings.triton_bucket, reg["name"])
    # a repository entry Triton must refuse: the python model raises at initialize
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "1").mkdir()
        (root / "1" / "model.onnx").write_bytes(b"garbage, not onnx")
        from modelops.serving.triton.model_dir import build_model_dir

        built = build_model_dir(root / deployment, name=deployment, kind="onnxruntime", model_path=root / "1" / "model.onnx",
                                io=export["io"], max_batch_size=int(export["max_batch_size"]))
        for rel in file_table(built):
            storage.upload_file(built / rel, f"{uri}/{rel}")
        manifest = {"deployment": deployment, "model": reg["name"], "variant": "garbage", "files": file_table(built)}
        storage.write_bytes(f"{uri}/{MANIFEST}", json.dumps(manifest).encode())
    with pytest.raises(DeployError) as err:
        deploy(triton, storage, settings.triton_bucket, reg["name"], deployment,
               samples_uri=export["outputs"]["samples"],
               candidate_outputs_uri=validate["candidates"]["ort_fp32"]["sample_outputs"], run_id="test")
    assert str(err.value).startswith(f"Triton could not serve {deployment}:")
    assert "\n" not in str(err.value)
    after = read_routes(storage, settings.triton_bucket, reg["name"])
    assert (after.revision, after.weights()) == (live.revision, live.weights())
    assert not triton.is_model_ready(deployment)


def test_deployment_without_manifest_is_never_loaded(wine, storage, triton, settings):
    from modelops.serving.deploy import DeployError, deploy

    reg, _, _spec = wine
    deployment = f"{reg['name']}--v{reg['version']}-nomanifest"
    storage.write_bytes(f"s3://{settings.triton_bucket}/{deployment}/config.pbtxt", b'backend: "python"')
    with pytest.raises(DeployError, match="no manifest.json"):
        deploy(triton, storage, settings.triton_bucket, reg["name"], deployment, samples_uri="unused",
               candidate_outputs_uri="unused", run_id="test")
    assert not triton.is_model_ready(deployment)


def test_routes_conditional_write_on_real_s3(storage, settings):
    from modelops.serving.routes import RoutesConflict, read_routes, write_routes

    model = f"routes_{uuid.uuid4().hex[:6]}"
    a, b = f"{model}--v1-ort_fp32", f"{model}--v2-ort_fp32"
    first = read_routes(storage, settings.triton_bucket, model)
    write_routes(storage, settings.triton_bucket, first, {a: 100}, by="one")
    with pytest.raises(RoutesConflict):
        write_routes(storage, settings.triton_bucket, first, {b: 100}, by="two")
    current = read_routes(storage, settings.triton_bucket, model)
    assert current.weights() == {a: 100} and current.revision == 1
    nxt = write_routes(storage, settings.triton_bucket, current, {a: 90, b: 10}, by="three")
    with pytest.raises(RoutesConflict):
        write_routes(storage, settings.triton_bucket, current, {b: 100}, by="four")
    assert read_routes(storage, settings.triton_bucket, model).revision == nxt.revision == 2
