"""S3 (SeaweedFS) killed in the middle of publishing a deployment.

The pipeline's publish (claim, files, then the manifest as the commit) uploads a model directory; SeaweedFS is
SIGKILLed right after the first file landed. What the run sees: a one-line ``StorageError`` naming the operation,
the object and the cause, no traceback text. Lost: nothing that was published: the partial folder has no manifest,
so nothing can load or route it (``verify_deployment`` refuses it); once ``stack up`` restarted SeaweedFS, the
retry of the same run completes its own claim and the deployment verifies.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest

pytestmark = [pytest.mark.chaos, pytest.mark.integration]


class KillAfterFirstUpload:
    """The storage, except that SeaweedFS is killed once the first file upload returned."""

    def __init__(self, storage, pid: int) -> None:
        self._storage, self._pid, self.uploads = storage, pid, 0

    def __getattr__(self, name):
        return getattr(self._storage, name)

    def upload_file(self, src, uri):
        out = self._storage.upload_file(src, uri)
        self.uploads += 1
        if self.uploads == 1:
            os.killpg(self._pid, signal.SIGKILL)  # the whole service (weed mini's process group)
            time.sleep(0.5)
        return out


@pytest.fixture(scope="module")
def broken_publish(stack, settings, storage, tmp_path_factory):
    from modelops.local import stack as stack_mod
    from modelops.serving.publish import (
        InvalidDeployment,
        build_manifest,
        deployment_uri,
        publish_content,
        verify_deployment,
    )
    from modelops.serving.triton.model_dir import build_model_dir
    from modelops.storage import StorageError

    model = f"chaos_s3_{uuid.uuid4().hex[:6]}"
    plain = f"{model}--v1-ort_fp32"
    tmp = tmp_path_factory.mktemp("s3chaos")
    weights = tmp / "weights.onnx"
    weights.write_bytes(os.urandom(256 * 1024))  # bytes are all publish looks at (it never loads the model here)
    io_spec = {"inputs": [{"name": "x", "dtype": "float32", "dims": [4]}],
               "outputs": [{"name": "y", "dtype": "float32", "dims": [4]}]}

    def render(name: str):
        return build_model_dir(tmp / name, name=name, kind="onnxruntime", model_path=weights, io=io_spec,
                               max_batch_size=8)

    def manifest_for(root, name: str) -> dict:
        spec = {"model_name": model, "model_version": "1", "recipe": "chaos", "model_uri": f"models:/{model}/1",
                "source_uri": "s3://nowhere/chaos", "run_id": kwargs["run_id"]}
        return build_manifest(root, spec, "ort_fp32", name, {})

    kwargs = {"model_name": model, "variant": "ort_fp32", "run_id": f"chaos-{model}"}
    pid = stack_mod.status()["s3"]["pid"]
    chaotic = KillAfterFirstUpload(storage, pid)
    started = time.monotonic()
    error: BaseException | None = None
    try:
        publish_content(chaotic, settings.triton_bucket, plain, render, manifest_for, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - what the run would fail with, asserted below
        error = exc
    failed_after = time.monotonic() - started
    stack_mod.up()  # restarts SeaweedFS (its data is on disk)
    uri = deployment_uri(settings.triton_bucket, plain)
    try:
        verify_deployment(storage, uri)
        partial = "verified"
    except InvalidDeployment as exc:
        partial = f"refused: {exc}"
    retry = publish_content(storage, settings.triton_bucket, plain, render, manifest_for, **kwargs)
    print(f"\nS3 killed during publish: {type(error).__name__}: {error} (after {failed_after:.1f} s); "
          f"partial folder {partial}; retry published {retry['deployment']}")
    return {"error": error, "StorageError": StorageError, "uploads": chaotic.uploads, "partial": partial,
            "retry": retry, "plain": plain, "uri": uri, "verified": verify_deployment(storage, uri),
            "failed_after": failed_after}


def test_the_publish_fails_in_one_line(broken_publish):
    error = broken_publish["error"]
    assert isinstance(error, broken_publish["StorageError"]), repr(error)
    message = str(error)
    assert "\n" not in message and "Traceback" not in message, message
    assert broken_publish["uploads"] == 1 and broken_publish["failed_after"] < 120


def test_the_partial_folder_is_never_served(broken_publish):
    assert broken_publish["partial"].startswith("refused"), broken_publish["partial"]


def test_the_retry_completes_the_same_deployment(broken_publish):
    retry = broken_publish["retry"]
    assert retry["deployment"] == broken_publish["plain"] and retry["reused"] is False
    assert broken_publish["verified"]["deployment"] == broken_publish["plain"]
