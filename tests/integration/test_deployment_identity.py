"""Deployment identity and leases against the stack's real SeaweedFS (its conditional writes, its ETags)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from modelops.contracts.naming import deployment_name, digest_name
from modelops.contracts.status import Status
from modelops.serving.locks import LockHeld, LockLost, acquire, holder, lock_uri, release
from modelops.serving.publish import publish_candidate, verify_deployment

IO = {"inputs": [{"name": "x", "dtype": "float32", "dims": [4]}], "outputs": [{"name": "y", "dtype": "float32", "dims": [4]}]}
EXPORT = {"outputs": {}, "io": IO, "max_batch_size": 8, "versions": {}}


@pytest.fixture
def publisher(storage, settings):
    """Publish ``model_bytes`` as ``<model>--v1-ort_fp32`` the way the publish task does (not loaded)."""
    model = f"identity_{uuid.uuid4().hex[:8]}"

    def _publish(model_bytes: bytes, run_id: str) -> dict:
        onnx = f"s3://{settings.artifacts_bucket}/tests/{model}/{run_id}/model.onnx"
        storage.write_bytes(onnx, model_bytes)
        spec = {"model_name": model, "model_version": "1", "recipe": "generic", "model_uri": f"models:/{model}/1",
                "source_uri": onnx, "run_id": run_id, "serving_device": "cpu"}
        optimize = {"candidates": {"ort_fp32": {"status": Status.DONE, "onnx": onnx}}}
        return publish_candidate(storage, spec, "ort_fp32", EXPORT, optimize, settings.triton_bucket, claim_wait_s=30)

    _publish.plain = deployment_name(model, "1", "ort_fp32")
    return _publish


def _concurrently(*calls) -> list:
    barrier, results, errors = threading.Barrier(len(calls)), [None] * len(calls), []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    return results


def test_concurrent_publishers_of_different_bytes_leave_two_intact_deployments(publisher, storage, settings):
    a, b = _concurrently(lambda: publisher(b"bytes of model A" * 1000, "run-a"),
                         lambda: publisher(b"bytes of model B" * 1000, "run-b"))  # fmt: skip
    assert a["content_digest"] != b["content_digest"]
    assert {a["deployment"], b["deployment"]} == {
        publisher.plain,
        digest_name(publisher.plain, (b if a["deployment"] == publisher.plain else a)["content_digest"]),
    }
    for out, body in ((a, b"bytes of model A"), (b, b"bytes of model B")):
        manifest = verify_deployment(storage, out["uri"])
        assert manifest["content_digest"] == out["content_digest"] and not out["reused"]
        assert storage.read_bytes(f"{out['uri']}/1/model.onnx") == body * 1000  # each deployment has its own bytes


def test_the_same_bytes_published_twice_or_concurrently_are_one_deployment(publisher, storage):
    first, second = _concurrently(lambda: publisher(b"same bytes" * 1000, "run-1"),
                                  lambda: publisher(b"same bytes" * 1000, "run-2"))  # fmt: skip
    assert first["deployment"] == second["deployment"] == publisher.plain
    assert sorted([first["reused"], second["reused"]]) == [False, True]
    again = publisher(b"same bytes" * 1000, "run-3")
    assert again["deployment"] == publisher.plain and again["reused"]
    verify_deployment(storage, again["uri"])
    other = publisher(b"new bytes after a re-optimization" * 100, "run-4")
    assert other["deployment"] == digest_name(publisher.plain, other["content_digest"]) and not other["reused"]
    assert publisher(b"new bytes after a re-optimization" * 100, "run-5")["deployment"] == other["deployment"]


def test_a_lease_refuses_another_owner_and_is_taken_over_after_expiry(storage, settings):
    uri = lock_uri(settings.triton_bucket, "optimize", f"identity_{uuid.uuid4().hex[:8]}--v1")
    first = acquire(storage, uri, owner="run-a", ttl_s=2.0, what="the optimization of m v1")
    with pytest.raises(LockHeld, match=r"^the optimization of m v1 is already held by run-a since .* \(expires .*\)$"):
        acquire(storage, uri, owner="run-b", ttl_s=60, what="the optimization of m v1")
    assert acquire(storage, uri, owner="run-a", ttl_s=2.0, what="retry").owner == "run-a"  # same owner: a retry
    time.sleep(2.5)
    second = acquire(storage, uri, owner="run-b", ttl_s=60, what="the optimization of m v1")
    with pytest.raises(LockLost):
        first.renew()
    assert first.release() is False and release(storage, uri, owner="run-a") is False
    assert holder(storage, uri)["owner"] == "run-b"
    second.renew()
    assert second.release() is True and holder(storage, uri) is None
    racers = _concurrently(*[lambda i=i: _try_acquire(storage, uri, f"racer-{i}") for i in range(4)])
    assert sum(r is not None for r in racers) == 1


def _try_acquire(storage, uri: str, owner: str):
    try:
        return acquire(storage, uri, owner=owner, ttl_s=60, what="race")
    except LockHeld:
        return None
