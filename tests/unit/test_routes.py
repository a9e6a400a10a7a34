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


def test_conditional_writes_detect_a_concurrent_rollout(s3):
    """On the conftest's S3 storage (ETags, If-Match, If-None-Match), as the integration tests on SeaweedFS."""
    bucket = "triton"
    uri = routes_uri(bucket, "m")
    first = read_routes(s3, bucket, "m")
    assert first.revision == 0 and first.etag is None
    one = write_routes(s3, bucket, first, {"m--v1-a": 100}, by="run1")
    assert one.revision == 1 and one.etag == s3.read_with_etag(uri)[1]
    stale = first  # a second rollout that read before the first wrote: If-None-Match fails
    with pytest.raises(RoutesConflict):
        write_routes(s3, bucket, stale, {"m--v1-b": 100}, by="run2")
    two = write_routes(s3, bucket, one, {"m--v1-a": 50, "m--v1-b": 50}, by="run3")
    with pytest.raises(RoutesConflict):  # read revision 1, which is no longer there: If-Match fails
        write_routes(s3, bucket, one, {"m--v1-c": 100}, by="run4")
    now = read_routes(s3, bucket, "m")
    assert now.revision == 2 and now.weights() == {"m--v1-a": 50, "m--v1-b": 50} and now.etag == two.etag
    assert now.updated_by == "run3"
    assert s3.writes[uri] == 2  # the losers wrote nothing


def test_routes_conflict_when_the_file_appears_after_an_empty_read(s3):
    empty = read_routes(s3, "triton", "m")
    write_routes(s3, "triton", read_routes(s3, "triton", "m"), {"x": 100}, by="other")
    with pytest.raises(RoutesConflict, match="changed since revision 0"):
        write_routes(s3, "triton", empty, {"y": 100}, by="me")
    assert read_routes(s3, "triton", "m").weights() == {"x": 100}


def test_local_storage_delete_is_idempotent(tmp_path):
    target = tmp_path / "routes" / "m.json"
    target.parent.mkdir()
    target.write_text("{}")
    storage = Storage()
    storage.delete(str(target))
    assert not target.exists()
    storage.delete(str(target))  # deleting what is gone is not an error
