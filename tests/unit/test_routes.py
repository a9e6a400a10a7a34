from __future__ import annotations

import pytest

from modelops.contracts.naming import deployment_name, routes_uri, slug
from modelops.serving.routes import (
    InvalidRoutes,
    RoutesConflict,
    canary_weights,
    read_routes,
    validate_weights,
    write_routes,
)
from modelops.storage import Storage


def test_deployment_name_contract():
    assert deployment_name("Digits CNN", 3, "ort_int8_dynamic") == "digits-cnn--v3-ort_int8_dynamic"
    assert deployment_name("bert.base", "12", "ORT_FP32") == "bert-base--v12-ort_fp32"
    with pytest.raises(ValueError):
        slug("///")


@pytest.mark.parametrize("weights", [{}, {"a": 50}, {"a": 60, "b": 50}, {"a": -10, "b": 110}, {"a": 99.5, "b": 0.5}])
def test_invalid_weights_are_refused(weights):
    with pytest.raises(InvalidRoutes):
        validate_weights(weights)


def test_canary_weights_sum_to_100():
    assert canary_weights({}, "new", 10) == {"new": 100}
    assert canary_weights({"old": 100}, "new", 100) == {"new": 100}
    assert canary_weights({"old": 100}, "new", 10) == {"new": 10, "old": 90}
    w = canary_weights({"a": 50, "b": 25, "c": 25}, "new", 33)
    assert sum(w.values()) == 100 and w["new"] == 33 and w["a"] > w["b"]
    with pytest.raises(InvalidRoutes):
        canary_weights({}, "new", 0)


def test_conditional_writes_detect_a_concurrent_rollout(tmp_path, monkeypatch):
    storage = Storage()
    # Local-path storage: emulate the bucket with a directory and ETags with the S3 code path below.
    bucket = "triton"
    calls = {}

    def read_with_etag(uri):
        path = tmp_path / uri.removeprefix("s3://")
        return (path.read_bytes(), str(path.stat().st_mtime_ns)) if path.exists() else (b"", None)

    def write_bytes(uri, data, *, if_match=None, if_none_match=False):
        path = tmp_path / uri.removeprefix("s3://")
        current = str(path.stat().st_mtime_ns) if path.exists() else None
        from modelops.storage import PreconditionFailed

        if (if_none_match and current is not None) or (if_match is not None and if_match != current):
            raise PreconditionFailed(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        calls[uri] = calls.get(uri, 0) + 1
        return str(path.stat().st_mtime_ns)

    monkeypatch.setattr(storage, "read_with_etag", read_with_etag)
    monkeypatch.setattr(storage, "write_bytes", write_bytes)
    first = read_routes(storage, bucket, "m")
    assert first.revision == 0 and first.etag is None
    one = write_routes(storage, bucket, first, {"m--v1-a": 100}, by="run1")
    assert one.revision == 1
    stale = first  # a second rollout that read before the first wrote
    with pytest.raises(RoutesConflict):
        write_routes(storage, bucket, stale, {"m--v1-b": 100}, by="run2")
    assert read_routes(storage, bucket, "m").weights() == {"m--v1-a": 100}
    assert calls[routes_uri(bucket, "m")] == 1


def test_local_storage_delete_is_idempotent(tmp_path):
    target = tmp_path / "routes" / "m.json"
    target.parent.mkdir()
    target.write_text("{}")
    storage = Storage()
    storage.delete(str(target))
    assert not target.exists()
    storage.delete(str(target))  # deleting what is gone is not an error
