"""The real stack (SeaweedFS, MLflow, Triton, Airflow), started once per test session.

It runs from its own state dir (.stack-test) on ports shifted by 100, so a demo stack can stay up
beside it. Set MODELOPS_TEST_KEEP_STACK=1 to leave it running after the session (faster reruns).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from tests.integration.browser import browser  # noqa: F401 - the headless chromium fixture of the browser tests

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def stack():
    os.environ.setdefault("MODELOPS_STACK_DIR", str(REPO / ".stack-test"))
    os.environ.setdefault("MODELOPS_PORT_OFFSET", "100")
    from modelops.local import stack as stack_mod
    from modelops.local.stack.auth import use_mlflow_credentials

    status = stack_mod.up()
    env = stack_mod.client_env(status)  # Airflow's: the pipeline S3 identity, MLflow's `airflow` user
    use_mlflow_credentials(status, environ=env)  # the tests act as the operator: MLflow's admin
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield status
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if not os.environ.get("MODELOPS_TEST_KEEP_STACK"):
        stack_mod.down()


@pytest.fixture(scope="session")
def settings(stack):
    from modelops.settings import Settings

    return Settings.from_env()


@pytest.fixture(scope="session")
def storage(stack):
    from modelops.local import stack as stack_mod
    from modelops.storage import Storage

    return Storage(stack_mod.s3_config(stack))  # the admin identity: tests also tamper with MLflow's bucket


@pytest.fixture(scope="session")
def mlflow_client(stack):
    """MLflow as its admin (the session's environment holds the admin's login)."""
    from mlflow import MlflowClient

    return MlflowClient(stack["mlflow"]["url"], registry_uri=stack["mlflow"]["url"])


@pytest.fixture(scope="session")
def triton(stack):
    import tritonclient.http as httpclient

    from modelops.serving.triton.admin import with_admin

    client = httpclient.InferenceServerClient(stack["triton"]["http"].removeprefix("http://"), network_timeout=120.0)
    # model control (load/unload in deploy) is locked behind the stack's admin header, as the pipeline's is; the
    # token is read at each use, as TritonHook does: a Triton restarted by a test has a new one
    token_file = Path(stack["triton"]["admin_token_file"])

    class CurrentAdmin:
        def __getattr__(self, name):
            return getattr(with_admin(client, stack["triton"]["admin_header"], token_file.read_text().strip()), name)

    return CurrentAdmin()


@pytest.fixture(scope="session")
def airflow(stack):
    from modelops.local.demo import airflow_client

    return airflow_client(stack)


@pytest.fixture(scope="session")
def register(stack, settings):
    """Train and register a demo model under a unique name; returns the registration record."""
    from modelops.local import stack as stack_mod
    from modelops.local.demo import register_demo_model

    def _register(kind: str, alias: str | None = "champion", serialization: str | None = None, name: str | None = None,
                  allow_pickle: bool | None = None):
        name = name or f"it_{kind}_{uuid.uuid4().hex[:6]}"
        return register_demo_model(settings, stack_mod.client_env(stack), kind, name, alias, serialization,
                                   allow_pickle)

    return _register


PLUS_K = """
import sys, onnx
from onnx import TensorProto, helper
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
k = helper.make_tensor("k", TensorProto.FLOAT, [1], [float(sys.argv[2])])
graph = helper.make_graph([helper.make_node("Add", ["x", "k"], ["y"])], "plus_k", [x], [y], [k])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
onnx.save(model, sys.argv[1])
"""


@pytest.fixture(scope="session")
def publish_plus_k(settings, storage, tmp_path_factory):
    """Publish a tiny ``y = x + k`` ONNX Runtime deployment as the pipeline does (files, manifest, smoke npz).

    The deployment is not loaded and not routed: hand the returned ``deploy_kwargs`` to
    :func:`modelops.serving.deploy.deploy` for that. Far cheaper than a DAG run; ``k`` tells deployments apart.
    """
    import io
    import json
    import subprocess

    import numpy as np

    from modelops.serving.publish import MANIFEST, file_table
    from modelops.serving.triton.model_dir import build_model_dir

    io_spec = {"inputs": [{"name": "x", "dtype": "float32", "dims": [4]}],
               "outputs": [{"name": "y", "dtype": "float32", "dims": [4]}]}
    x = np.arange(8, dtype=np.float32).reshape(2, 4)

    def npz(**arrays) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    def _publish(model: str, deployment: str, k: float) -> dict:
        tmp = tmp_path_factory.mktemp(deployment.replace("--", "-"))
        onnx_path = tmp / "plus_k.onnx"
        subprocess.run([str(settings.worker_python), "-c", PLUS_K, str(onnx_path), str(k)], check=True, timeout=120)
        root = build_model_dir(tmp / deployment, name=deployment, kind="onnxruntime", model_path=onnx_path,
                               io=io_spec, max_batch_size=8)
        uri = f"s3://{settings.triton_bucket}/{deployment}"
        files = file_table(root)
        for rel in files:
            storage.upload_file(root / rel, f"{uri}/{rel}")
        manifest = {"deployment": deployment, "model": model, "variant": "ort_fp32", "files": files}
        storage.write_bytes(f"{uri}/{MANIFEST}", json.dumps(manifest).encode(), if_none_match=True)
        prefix = f"s3://{settings.artifacts_bucket}/tests/{deployment}"
        storage.write_bytes(f"{prefix}/samples.npz", npz(x=x, **{"output:y": x + k}))
        storage.write_bytes(f"{prefix}/candidate.npz", npz(y=x + k))
        return {"model": model, "deployment": deployment, "k": k, "x": x,
                "deploy_kwargs": {"samples_uri": f"{prefix}/samples.npz",
                                  "candidate_outputs_uri": f"{prefix}/candidate.npz", "run_id": f"test-{deployment}"}}

    return _publish
