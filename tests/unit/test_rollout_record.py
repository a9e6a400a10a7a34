"""The rollout's MLflow record against a real MLflow (SQLite tracking + registry, file artifacts; no server)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from modelops.contracts.status import VERSION_STATUSES, Status
from modelops.storage import Storage
from modelops.tracking import rollout_record as rr


def _entry(index: int, weight: int, passed: bool | None, *, rate: float = 1.0, p99: float | None = 12.0) -> dict:
    return {"step_index": index, "weight": weight, "at": "2026-01-01T00:00:00+00:00", "passed": passed,
            "reasons": [] if passed else ["canary success rate 0.5 < 0.99"],
            "canary": {"deployment": "m--v2-ort_fp32", "requests": 40.0, "success_rate": rate, "p99_ms": p99},
            "stable": {"deployment": "m--v1-ort_fp32", "requests": 200.0, "success_rate": 1.0, "p99_ms": 10.0}}


@pytest.fixture()
def client(tmp_path):
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/m.db"
    # MLflow's global URIs (and the MLFLOW_TRACKING_URI it exports) must not leak into later tests: the integration
    # tests in the same session register models through the environment (a leaked sqlite URI broke 24 of them)
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    c.create_experiment("modelops/m", artifact_location=(tmp_path / "artifacts").as_uri())
    c.create_registered_model("m")
    for _ in range(2):
        c.create_model_version("m", source=str(tmp_path), run_id=None)
    yield c
    mlflow.set_tracking_uri(None)  # unset: MLflow falls back to the environment again
    mlflow.set_registry_uri(None)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_new_statuses_are_version_statuses():
    assert Status.CANARY in VERSION_STATUSES and Status.ROLLED_BACK in VERSION_STATUSES
    assert (str(Status.CANARY), str(Status.ROLLED_BACK)) == ("canary", "rolled_back")


def test_one_run_per_airflow_run_with_params(client):
    params = {"steps": [10, 50, 100], "mode": "canary", "min_success_rate": 0.99, "max_p99_ms": None}
    run_id = rr.open_rollout_run(client, "m", "m--v2-ort_fp32", "manual__1", params)
    assert rr.open_rollout_run(client, "m", "m--v2-ort_fp32", "manual__1", params) == run_id  # a retry finds it
    run = client.get_run(run_id)
    assert run.info.run_name == "rollout m--v2-ort_fp32"
    assert client.get_experiment(run.info.experiment_id).name == "modelops/m"
    assert run.data.params == {"steps": "10,50,100", "mode": "canary", "min_success_rate": "0.99", "max_p99_ms": ""}
    assert run.data.tags[rr.TAG_ROLLOUT] == "m--v2-ort_fp32"
    assert rr.open_rollout_run(client, "m", "m--v2-ort_fp32", "manual__2", params) != run_id


def test_steps_metrics_plot_and_outcome(client, tmp_path):
    run_id = rr.open_rollout_run(client, "m", "m--v2-ort_fp32", "r1", {"steps": [10, 50, 100]})
    first = rr.log_step(client, run_id, _entry(0, 10, True))
    assert first["canary_p99_ms"] == 12.0 and first["passed"] == 1.0
    no_p99 = rr.log_step(client, run_id, _entry(1, 50, False, rate=0.5, p99=None))
    assert "canary_p99_ms" not in no_p99 and no_p99["passed"] == 0.0
    history = client.get_metric_history(run_id, "canary_success_rate")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5)]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "weight")] == [(0, 10.0), (1, 50.0)]

    state = {"model": "m", "deployment": "m--v2-ort_fp32", "analysis": [_entry(0, 10, True), _entry(1, 50, False)],
             "status": "rolled_back", "error": "step 2/3 (50%): canary success rate 0.5 < 0.99"}
    rr.finish_rollout(client, run_id, state, "rolled_back", state["error"])
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags[rr.TAG_OUTCOME] == "rolled_back"
    assert run.data.tags["modelops.error"].startswith("step 2/3")
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"rollout_steps.png", "rollout_state.json"} <= artifacts
    png = Path(client.download_artifacts(run_id, "rollout_steps.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_promoted_run_is_finished_and_plot_skipped_without_steps(client, tmp_path):
    run_id = rr.open_rollout_run(client, "m", "m--v2-ort_fp32", "r2", {})
    assert rr.plot_steps([], tmp_path / "x.png") is None
    rr.finish_rollout(client, run_id, {"analysis": []}, "promoted")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "modelops.error" not in run.data.tags
    assert {a.path for a in client.list_artifacts(run_id)} == {"rollout_state.json"}


def test_version_statuses_canary_then_rolled_back_then_deployed(client):
    rr.mark_version(client, "m", "2", Status.CANARY, deployment="m--v2-ort_fp32", run_id="abc")
    tags = client.get_model_version("m", "2").tags
    assert tags["modelops.status"] == "canary" and tags["modelops.deployment"] == "m--v2-ort_fp32"
    rr.mark_version(client, "m", "2", Status.ROLLED_BACK, error="step 1/3 (10%): p99 30 ms > 12.5 ms\nmore")
    tags = client.get_model_version("m", "2").tags
    assert tags["modelops.status"] == "rolled_back" and tags["modelops.error"] == "step 1/3 (10%): p99 30 ms > 12.5 ms"
    rr.mark_version(client, "m", "2", Status.DEPLOYED)
    tags = client.get_model_version("m", "2").tags
    assert tags["modelops.status"] == "deployed" and "modelops.error" not in tags
    assert client.get_model_version("m", "1").tags == {}
    with pytest.raises(ValueError, match="not a rollout status"):
        rr.mark_version(client, "m", "2", "optimizing")


def test_ab_comparison_names_the_winner(client):
    run_id = rr.open_rollout_run(client, "m", "m--v2-ort_fp32", "r3", {"mode": "ab"})
    comparison = rr.log_ab_comparison(client, run_id, _entry(0, 50, True))
    assert comparison["winner"] == "m--v2-ort_fp32"
    assert client.get_run(run_id).data.metrics["ab.p99_ratio"] == pytest.approx(1.2)
    lost = rr.log_ab_comparison(client, run_id, _entry(0, 50, False))
    assert lost["winner"] == "m--v1-ort_fp32" and lost["reasons"]
    assert json.loads(Path(client.download_artifacts(run_id, "ab_comparison.json")).read_text())["passed"] is False


class _DirStorage(Storage):
    """Storage with ``s3://<bucket>/...`` mapped onto a local directory (the manifest read is the real code)."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def read_bytes(self, uri: str) -> bytes:
        return super().read_bytes(str(self.root / uri.removeprefix("s3://")))


def test_canary_version_reads_the_manifest(tmp_path):
    (tmp_path / "triton" / "m--v2-ort_fp32").mkdir(parents=True)
    (tmp_path / "triton" / "m--v2-ort_fp32" / "manifest.json").write_text(json.dumps({"model": "m", "model_version": "2"}))
    storage = _DirStorage(tmp_path)
    assert rr.canary_version(storage, "triton", "m--v2-ort_fp32") == ("m", "2")
    assert rr.canary_version(storage, "triton", "m--v9-ort_fp32") is None
