"""The user's own data on the real stack: logged MLflow datasets, eval_data_uri on SeaweedFS, and no data at all.

Resolve (the pipeline's task) reads the data through the real MLflow server and S3, checks it against the
signature and records ``modelops.eval_data`` on the model version; the heavy steps run as worker subprocesses.
"""

from __future__ import annotations

import io
import uuid

import numpy as np
import pandas as pd
import pytest

from tests.integration.helpers import resolve, run_step

pytestmark = pytest.mark.integration


def _version_tags(mlflow_client, reg) -> dict[str, str]:
    return mlflow_client.get_model_version(reg["name"], reg["version"]).tags


def _parquet(frame: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def test_logged_datasets_calibrate_and_gate_a_model_fed_raw_features(register, mlflow_client, storage, settings,
                                                                     tmp_path):  # fmt: skip
    """Wine's raw features (proline in the hundreds) are far from N(0, 1); the demo logs its splits as a user would."""
    reg = register("wine", alias=None, serialization="pickle")
    meta = resolve({"model_name": reg["name"], "model_version": str(reg["version"]),
                    "variants": ["ort_fp32", "ort_int8_static"]})  # fmt: skip
    spec = storage.read_json(meta["spec_uri"])
    data = spec["eval_data"]
    assert data["source"] == "mlflow_dataset" and data["labels"] is True
    assert data["origin"].startswith(f"{reg['name']}-evaluation@") and f"{reg['name']}-training@" in data["origin"]
    assert data["eval_rows"] == 54 and data["calibration_rows"] == 124  # wine's held-out 30% / training 70%
    assert _version_tags(mlflow_client, reg)["modelops.eval_data"] == "mlflow_dataset"
    assert mlflow_client.get_run(meta["run_id"]).data.tags["modelops.eval_data"] == "mlflow_dataset"
    rows = np.load(io.BytesIO(storage.read_bytes(data["eval_uri"])))
    assert rows["f12"].min() > 200  # proline: the raw values reach the gate
    for step in ("export", "optimize", "validate"):
        proc = run_step(settings, step, meta["spec_uri"], tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
    static = proc.result["candidates"]["ort_int8_static"]
    assert static["status"] in ("accepted", "rejected") and static["metric"] is not None
    optimized = storage.read_json(f"{spec['run_prefix']}/optimize/result.json")
    calibration = optimized["candidates"]["ort_int8_static"]["quantization"]["calibration"]
    assert calibration.startswith("pytorch_generic.calibration_data[:"), calibration


# one Airflow run for the ONNX model's resolves: it may take its own (model, version) lease again
ONNX_RUN = f"test__{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def onnx_model(register):
    """The ONNX demo model: a named tensor input, no input example, no dataset."""
    return register("onnx", alias=None)


def test_no_data_at_all_is_synthetic_and_static_int8_is_skipped(onnx_model, mlflow_client, storage, settings,
                                                                tmp_path):  # fmt: skip
    meta = resolve({"model_name": onnx_model["name"], "model_version": str(onnx_model["version"]),
                    "variants": ["ort_fp32", "ort_int8_static"]}, ONNX_RUN)  # fmt: skip
    spec = storage.read_json(meta["spec_uri"])
    assert spec["eval_data"]["source"] == "synthetic" and "synthetic inputs" in spec["eval_data"]["note"]
    assert _version_tags(mlflow_client, onnx_model)["modelops.eval_data"] == "synthetic"
    assert "synthetic" in mlflow_client.get_run(meta["run_id"]).data.tags["modelops.eval_data_note"]
    for step in ("export", "optimize"):
        proc = run_step(settings, step, meta["spec_uri"], tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
    static = proc.result["candidates"]["ort_int8_static"]
    assert static["status"] == "skipped" and "modelops.eval_data=synthetic" in static["reason"]
    assert proc.result["candidates"]["ort_fp32"]["status"] == "done"


def test_eval_data_uri_on_seaweedfs_and_the_files_resolve_refuses(onnx_model, mlflow_client, storage, settings):
    name, version = onnx_model["name"], str(onnx_model["version"])
    prefix = f"s3://{settings.artifacts_bucket}/user-data/{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(0)
    good = pd.DataFrame({"input": [rng.integers(0, 17, 64).astype(np.float32).tolist() for _ in range(80)],
                         "label": rng.integers(0, 10, 80)})  # fmt: skip
    storage.write_bytes(f"{prefix}/eval.parquet", _parquet(good))
    meta = resolve({"model_name": name, "model_version": version, "eval_data_uri": f"{prefix}/eval.parquet"}, ONNX_RUN)
    data = storage.read_json(meta["spec_uri"])["eval_data"]
    assert (data["source"], data["origin"], data["eval_rows"], data["calibration_rows"]) == (
        "uri", f"{prefix}/eval.parquet", 60, 20)
    assert _version_tags(mlflow_client, onnx_model)["modelops.eval_data"] == "uri"
    from airflow.sdk.exceptions import AirflowFailException

    bad = {
        "broken.parquet": (b"PAR1 not really parquet", "is not a readable Parquet file"),
        "renamed.parquet": (_parquet(good.rename(columns={"input": "pixels"})),
                            "has no column 'input' of the signature's inputs ['input'] (it has ['pixels'])"),
        "empty.parquet": (_parquet(good.iloc[:0]), "is empty (no rows)"),
    }  # fmt: skip
    for file, (content, message) in bad.items():
        uri = f"{prefix}/{file}"
        storage.write_bytes(uri, content)
        with pytest.raises(AirflowFailException) as err:
            resolve({"model_name": name, "model_version": version, "eval_data_uri": uri}, ONNX_RUN)
        line = str(err.value)
        assert "\n" not in line and uri in line and message in line, line
        assert _version_tags(mlflow_client, onnx_model)["modelops.error"] == f"resolve: {line}"


def test_modelops_optimize_runs_the_steps_outside_airflow_and_publishes_when_asked(register, mlflow_client, storage,
                                                                                   settings):  # fmt: skip
    """``modelops optimize`` on the stack's MLflow (MLFLOW_TRACKING_URI and the AWS_* variables of the session)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from modelops.local.optimize_cli import JSON_KEYS
    from modelops.serving.publish import verify_deployment
    from modelops.serving.routes import read_routes

    reg = register("tabular", alias=None)
    cli = Path(sys.executable).parent / "modelops"
    proc = subprocess.run([str(cli), "optimize", f"models:/{reg['name']}/{reg['version']}", "--variants", "ort_fp32",
                           "--no-config-search", "--publish", "--json"],
                          capture_output=True, text=True, timeout=900, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert set(out) == set(JSON_KEYS)
    assert (out["model_name"], out["model_version"]) == (reg["name"], str(reg["version"]))
    assert out["eval_data"] == "mlflow_dataset" and out["chosen_variant"] == "ort_fp32"
    rows = {row["variant"]: row for row in out["variants"]}
    assert rows["ort_fp32"]["status"] == "chosen" and rows["ort_fp32"]["throughput"] > 0
    assert all(set(row) == {"variant", "status", "metric", "throughput", "reason"} for row in out["variants"])
    assert out["deployment"] == f"{reg['name']}--v{reg['version']}-ort_fp32".lower()
    verify_deployment(storage, f"s3://{settings.triton_bucket}/{out['deployment']}")
    assert read_routes(storage, settings.triton_bucket, reg["name"]).etag is None  # published, never routed
    tags = _version_tags(mlflow_client, reg)
    assert tags["modelops.variant"] == "ort_fp32" and tags["modelops.run_id"] == out["mlflow_run_id"]
    assert tags["modelops.eval_data"] == "mlflow_dataset" and "modelops.status" not in tags  # never served
    run = mlflow_client.get_run(out["mlflow_run_id"])
    assert run.info.status == "FINISHED" and "report.html" in {a.path for a in mlflow_client.list_artifacts(run.info.run_id)}
    bad = subprocess.run([str(cli), "optimize", f"models:/{reg['name']}/999", "--json"], capture_output=True,
                         text=True, timeout=120, check=False)  # fmt: skip
    assert bad.returncode == 1 and bad.stderr.strip() == f"error: registered model {reg['name']!r} has no version '999'"
