from __future__ import annotations

import json
import threading

import pytest

from modelops.contracts.naming import deployment_name, digest_name
from modelops.contracts.status import Status
from modelops.serving.publish import CLAIM, MANIFEST, content_digest, publish_candidate, verify_deployment

BUCKET = "triton"
IO = {"inputs": [{"name": "x", "dtype": "float32", "dims": [4]}], "outputs": [{"name": "y", "dtype": "float32", "dims": [4]}]}
EXPORT = {"outputs": {}, "io": IO, "max_batch_size": 8, "versions": {"onnxruntime": "test"}}
PLAIN = deployment_name("m", 3, "ort_fp32")


def spec(run_id: str = "run-1") -> dict:
    return {"model_name": "m", "model_version": "3", "recipe": "generic", "model_uri": "models:/m/3",
            "source_uri": "s3://mlflow/m/3", "run_id": run_id, "serving_device": "cpu"}


def optimized(s3, model_bytes: bytes, tag: str) -> dict:
    uri = f"s3://artifacts/{tag}/model.onnx"
    s3.write_bytes(uri, model_bytes)
    return {"candidates": {"ort_fp32": {"status": Status.DONE, "onnx": uri}}}


def publish(s3, model_bytes: bytes, run_id: str = "run-1", **kwargs) -> dict:
    return publish_candidate(s3, spec(run_id), "ort_fp32", EXPORT, optimized(s3, model_bytes, run_id), BUCKET, **kwargs)


def test_digest_name_rule():
    assert digest_name("m--v3-ort_fp32", "ABCDEF0123456789") == "m--v3-ort_fp32-abcdef01"
    for bad in ("abc", "zzzzzzzzzz", ""):
        with pytest.raises(ValueError):
            digest_name("m--v3-ort_fp32", bad)


def test_content_digest_is_order_independent_and_sees_every_file():
    a = {"1/model.onnx": {"sha256": "aa", "size": 1}, "config.pbtxt": {"sha256": "bb", "size": 2}}
    b = dict(reversed(list(a.items())))
    assert content_digest(a) == content_digest(b)
    assert content_digest(a) != content_digest({**a, "1/model.onnx": {"sha256": "ab", "size": 1}})
    assert content_digest(a) != content_digest({"1/model.onnx2": a["1/model.onnx"], "config.pbtxt": a["config.pbtxt"]})


def test_first_publish_takes_the_plain_name_and_the_same_bytes_are_reused(s3):
    first = publish(s3, b"model-A")
    assert first["deployment"] == PLAIN and not first["reused"]
    manifest = verify_deployment(s3, first["uri"])
    assert manifest["content_digest"] == first["content_digest"] == content_digest(manifest["files"])
    assert json.loads(s3.read_bytes(f"{first['uri']}/{CLAIM}"))["content_digest"] == first["content_digest"]
    writes = dict(s3.writes)
    again = publish(s3, b"model-A", run_id="run-2")
    assert again["deployment"] == PLAIN and again["reused"]
    assert {k: v for k, v in s3.writes.items() if "/artifacts/" not in k} == {
        k: v for k, v in writes.items() if "/artifacts/" not in k
    }  # nothing in the Triton bucket was written again


def test_other_bytes_get_a_content_addressed_name_and_never_touch_the_plain_one(s3):
    first = publish(s3, b"model-A")
    plain_objects = {k: v for k, v in s3.objects.items() if k.startswith(first["uri"] + "/")}
    second = publish(s3, b"model-B", run_id="run-2")
    assert second["deployment"] == digest_name(PLAIN, second["content_digest"]) and not second["reused"]
    assert second["content_digest"] != first["content_digest"]
    assert {k: v for k, v in s3.objects.items() if k.startswith(first["uri"] + "/")} == plain_objects
    manifest = verify_deployment(s3, second["uri"])
    assert manifest["deployment"] == second["deployment"] and manifest["content_digest"] == second["content_digest"]
    assert f'name: "{second["deployment"]}"' in s3.read_bytes(f"{second['uri']}/config.pbtxt").decode()
    # the same other bytes again: the content-addressed deployment is reused
    third = publish(s3, b"model-B", run_id="run-3")
    assert third["deployment"] == second["deployment"] and third["reused"]


def test_a_legacy_manifest_without_digest_is_compared_by_file_table(s3):
    first = publish(s3, b"model-A")
    manifest = json.loads(s3.read_bytes(f"{first['uri']}/{MANIFEST}"))
    del manifest["content_digest"]
    s3.objects[f"{first['uri']}/{MANIFEST}"] = json.dumps(manifest).encode()
    assert publish(s3, b"model-A", run_id="run-2")["reused"]
    assert publish(s3, b"model-B", run_id="run-3")["deployment"] != PLAIN


def test_claim_for_other_bytes_sends_a_concurrent_publisher_to_the_digest_name(s3):
    s3.write_bytes(f"s3://{BUCKET}/{PLAIN}/{CLAIM}", json.dumps({"content_digest": "0" * 64, "run_id": "x"}).encode())
    out = publish(s3, b"model-B")
    assert out["deployment"] == digest_name(PLAIN, out["content_digest"])
    assert not s3.exists(f"s3://{BUCKET}/{PLAIN}/{MANIFEST}")


def test_claim_for_the_same_bytes_whose_publisher_died_is_completed_after_the_wait(s3):
    probe = publish(s3, b"model-A", run_id="probe")  # learn the digest, then pretend only the claim was written
    for key in [k for k in s3.objects if k.startswith(probe["uri"] + "/")]:
        if not key.endswith(CLAIM):
            s3.delete(key)
    s3.write_bytes(f"{probe['uri']}/{CLAIM}", json.dumps({"content_digest": probe["content_digest"], "run_id": "dead"}).encode())
    out = publish(s3, b"model-A", run_id="run-2", claim_wait_s=0.2)
    assert out["deployment"] == PLAIN and not out["reused"]
    verify_deployment(s3, out["uri"])


def test_concurrent_publishers_of_different_bytes_leave_two_intact_deployments(s3):
    barrier = threading.Barrier(4)
    results: dict[int, dict] = {}

    def run(i: int) -> None:
        barrier.wait()
        results[i] = publish(s3, b"model-A" if i % 2 == 0 else b"model-B", run_id=f"run-{i}", claim_wait_s=5)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    by_content: dict[str, set[str]] = {}
    for out in results.values():
        by_content.setdefault(out["content_digest"], set()).add(out["deployment"])
    assert len(by_content) == 2 and all(len(names) == 1 for names in by_content.values())
    names = {n for names in by_content.values() for n in names}
    assert PLAIN in names and len(names) == 2
    for name in names:
        manifest = verify_deployment(s3, f"s3://{BUCKET}/{name}")
        assert manifest["content_digest"] in by_content
    assert sum(not out["reused"] for out in results.values()) == 2
