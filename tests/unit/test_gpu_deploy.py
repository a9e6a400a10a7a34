"""Deploy of a TensorRT engine deployment on the CPU stack's Triton: it fails loudly and leaves serving untouched.

A real tritonserver 2.51 (the CPU build the stack runs, python backend only) over real HTTP, the real ``deploy``: the
published ``tensorrt_plan`` deployment is verified, loaded, refused by Triton (no tensorrt backend), unloaded, and the
routes file keeps its revision and weights while the deployment already routed keeps answering. Storage is the
in-memory S3 of conftest.py; the Triton repository is the bucket mirrored to a local folder.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from modelops.contracts.naming import deployment_uri
from modelops.local.synthetic import publish_synthetic
from modelops.serving.deploy import DeployError, deploy
from modelops.serving.publish import publish_candidate
from modelops.serving.routes import read_routes
from modelops.serving.triton import client as triton_client
from modelops.serving.triton.admin import ADMIN_HEADER, with_admin
from modelops.serving.triton.local_server import TritonProcess
from modelops.settings import Settings

BUCKET = "triton"
RUN = "s3://artifacts/runs/clf/2/r2"
IO = {"inputs": [{"name": "x", "dtype": "float32", "dims": [4]}],
      "outputs": [{"name": "y", "dtype": "float32", "dims": [4]}]}  # fmt: skip

pytestmark = pytest.mark.skipif(not Settings.from_env().tritonserver_bin.exists(), reason="tritonserver: make tools")


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_a_gpu_deployment_fails_loudly_on_the_cpu_triton_and_serving_is_untouched(s3, tmp_path):
    stable = "clf--v1-synthetic"
    publish_synthetic(s3, BUCKET, "clf", stable, k=1.0)
    s3.write_bytes(f"{RUN}/trt_fp16/NVIDIA-H100-80GB-HBM3/model.plan", b"engine bytes for sm_90")
    engine = {"status": "done", "plan": f"{RUN}/trt_fp16/NVIDIA-H100-80GB-HBM3/model.plan",
              "gpu_product": "NVIDIA-H100-80GB-HBM3", "compute_capability": "9.0"}  # fmt: skip
    s3.write_bytes(f"{RUN}/compile/result.json", json.dumps({"status": "done", "engines": {"trt_fp16": engine}}).encode())
    spec = {"model_name": "clf", "model_version": "2", "recipe": "pytorch_generic", "model_uri": "models:/clf/2",
            "source_uri": "s3://mlflow/clf/2", "run_id": "r2", "run_prefix": RUN, "serving_device": "gpu"}  # fmt: skip
    gpu = publish_candidate(s3, spec, "trt_fp16", {"io": IO, "max_batch_size": 8, "outputs": {}, "versions": {}},
                            {"candidates": {}}, BUCKET)  # fmt: skip
    assert gpu["manifest"]["target_device"] == "gpu"
    repo = tmp_path / "repo"
    for uri in s3.list(f"s3://{BUCKET}"):
        if not uri.startswith(f"s3://{BUCKET}/routes/"):
            s3.download_file(uri, repo / uri.removeprefix(f"s3://{BUCKET}/"))
    x = np.arange(8, dtype=np.float32).reshape(2, 4) / 10
    s3.write_bytes(f"{RUN}/samples.npz", _npz(x=x))
    s3.write_bytes(f"{RUN}/expected.npz", _npz(y=x + 1.0))
    smoke = {"samples_uri": f"{RUN}/samples.npz", "candidate_outputs_uri": f"{RUN}/expected.npz"}
    with TritonProcess(repo, [], log_path=tmp_path / "triton.log", timeout_s=120) as triton:
        client = with_admin(triton_client.http_client(triton.http_url), ADMIN_HEADER, triton._admin_token)
        deploy(client, s3, BUCKET, "clf", stable, run_id="r1", **smoke)
        before = read_routes(s3, BUCKET, "clf")
        with pytest.raises(DeployError, match=rf"Triton could not serve {gpu['deployment']}: .*tensorrt") as failed:
            deploy(client, s3, BUCKET, "clf", gpu["deployment"], run_id="r2", **smoke)
        assert "\n" not in str(failed.value)  # one line
        after = read_routes(s3, BUCKET, "clf")
        assert (after.revision, after.weights()) == (before.revision, {stable: 100})
        assert client.is_model_ready(stable) and not client.is_model_ready(gpu["deployment"])
        np.testing.assert_allclose(triton.infer(stable, {"x": x})["y"], x + 1.0)
    assert s3.exists(f"{deployment_uri(BUCKET, gpu['deployment'])}/manifest.json")  # published whole, never routed
