"""verify_deployment: exactly the manifest's files (nothing unlisted for Triton to serve), each hashed as it streams."""

from __future__ import annotations

import json

import pytest

import modelops.serving.publish as publish_module
from modelops.serving.publish import CLAIM, MANIFEST, InvalidDeployment, file_table, verify_deployment
from tests.unit.test_publish_identity import PLAIN, publish


def test_a_published_deployment_is_exactly_its_manifest_plus_manifest_and_claim(s3):
    out = publish(s3, b"model-A")
    uri = out["uri"]
    keys = {k.removeprefix(uri + "/") for k in s3.objects if k.startswith(uri + "/")}
    manifest = verify_deployment(s3, uri)
    assert "config.pbtxt" in manifest["files"] and "1/model.onnx" in manifest["files"]
    assert keys == set(manifest["files"]) | {MANIFEST, CLAIM}  # the claim stays: it is allowed
    other = publish(s3, b"model-B", run_id="run-2")  # a digest name: no claim; the plain one is not its prefix
    assert other["deployment"] != PLAIN and verify_deployment(s3, other["uri"])["deployment"] == other["deployment"]


@pytest.mark.parametrize("extra", ["2/model.onnx", "1/extra.py", "config.pbtxt.bak", "1/model.onnx/x", "publish-claim.json/x"])
def test_an_unlisted_file_is_refused_naming_it(s3, extra):
    uri = publish(s3, b"model-A")["uri"]
    s3.write_bytes(f"{uri}/{extra}", b"served by Triton, never published")
    with pytest.raises(InvalidDeployment) as err:
        verify_deployment(s3, uri)
    assert str(err.value) == f"{uri}: {extra} not listed in the manifest; refusing to serve it"


def test_several_unlisted_files_name_the_first_ones_in_one_line(s3):
    uri = publish(s3, b"model-A")["uri"]
    for name in ("2/a", "2/b", "2/c", "2/d", "3/e"):
        s3.write_bytes(f"{uri}/{name}", b"x")
    with pytest.raises(InvalidDeployment, match=r": 2/a, 2/b, 2/c \(and 2 more\) not listed in the manifest; refusing"):
        verify_deployment(s3, uri)


def test_missing_and_changed_files_keep_their_messages(s3):
    uri = publish(s3, b"model-A")["uri"]
    original = s3.read_bytes(f"{uri}/1/model.onnx")
    s3.write_bytes(f"{uri}/1/model.onnx", original + b"!")
    with pytest.raises(InvalidDeployment, match=r": 1/model.onnx does not match its sha256 in the manifest$"):
        verify_deployment(s3, uri)
    s3.delete(f"{uri}/1/model.onnx")
    with pytest.raises(InvalidDeployment, match=r": 1/model.onnx is listed in the manifest but missing$"):
        verify_deployment(s3, uri)
    s3.delete(f"{uri}/{MANIFEST}")
    with pytest.raises(InvalidDeployment, match="has no manifest.json: not a published deployment"):
        verify_deployment(s3, uri)


def test_files_are_hashed_in_chunks_never_read_whole(s3, monkeypatch):
    uri = publish(s3, b"model-A" * 1000)["uri"]
    whole, chunks = [], []
    read_bytes, iter_chunks = s3.read_bytes, s3.iter_chunks
    monkeypatch.setattr(s3, "read_bytes", lambda u: whole.append(u) or read_bytes(u))

    def spy(u, chunk_size):
        for chunk in iter_chunks(u, chunk_size):
            chunks.append((u, len(chunk)))
            yield chunk

    monkeypatch.setattr(s3, "iter_chunks", spy)
    monkeypatch.setattr(publish_module, "HASH_CHUNK", 1000)
    manifest = verify_deployment(s3, uri)
    assert whole == [f"{uri}/{MANIFEST}"]  # only the manifest is read whole
    assert {u for u, _ in chunks} == {f"{uri}/{rel}" for rel in manifest["files"]}
    model = [n for u, n in chunks if u.endswith("/1/model.onnx")]
    assert max(n for _, n in chunks) <= 1000 and len(model) == 7 and sum(model) == 7000


def test_a_local_deployment_folder_is_checked_the_same_way(tmp_path):
    root = tmp_path / "m--v1-ort_fp32"
    (root / "1").mkdir(parents=True)
    (root / "config.pbtxt").write_text('name: "m--v1-ort_fp32"')
    (root / "1" / "model.onnx").write_bytes(b"onnx")
    (root / MANIFEST).write_text(json.dumps({"files": file_table(root)}))
    from modelops.storage import Storage

    assert set(verify_deployment(Storage(), str(root))["files"]) == {"config.pbtxt", "1/model.onnx"}
    (root / "2").mkdir()
    (root / "2" / "model.onnx").write_bytes(b"other")
    with pytest.raises(InvalidDeployment, match=r": 2/model.onnx not listed in the manifest"):
        verify_deployment(Storage(), str(root))
