from __future__ import annotations

import asyncio
import json
import re

import pytest

from modelops.contracts.naming import deployment_name, routes_uri, slug
from modelops.serving.routes import (
    InvalidRoutes,
    Routes,
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
    write_routes(s3, "triton", read_routes(s3, "triton", "m"), {"m--v1-x": 100}, by="other")
    with pytest.raises(RoutesConflict, match="changed since revision 0"):
        write_routes(s3, "triton", empty, {"m--v1-y": 100}, by="me")
    assert read_routes(s3, "triton", "m").weights() == {"m--v1-x": 100}


def test_local_storage_delete_is_idempotent(tmp_path):
    target = tmp_path / "routes" / "m.json"
    target.parent.mkdir()
    target.write_text("{}")
    storage = Storage()
    storage.delete(str(target))
    assert not target.exists()
    storage.delete(str(target))  # deleting what is gone is not an error


def _put(s3, doc, model: str = "m") -> str:
    uri = routes_uri("triton", model)
    s3.write_bytes(uri, doc if isinstance(doc, bytes) else json.dumps(doc).encode())
    return uri


def _doc(*entries) -> dict:
    return {"model": "m", "revision": 4, "routes": [{"deployment": d, "weight": w} for d, w in entries]}


BAD_NAMES = ["../../v2/repository/index", "m--v1-a\nX-Admin: 1", "m--v1-a\n", "M--V1-A", "m--v1-a/x", "m--v1-a?x=1",
             "m--v1 a", "", "m-v1-a", "--v1", 5, None]  # fmt: skip


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_a_routes_file_with_a_bad_deployment_name_is_refused_in_one_line(s3, bad):
    uri = _put(s3, _doc(("m--v1-a", 50), (bad, 50)))
    with pytest.raises(InvalidRoutes) as err:
        read_routes(s3, "triton", "m")
    line = str(err.value)
    assert line.startswith(f"routes file {uri} of model 'm': ") and repr(bad) in line and "\n" not in line
    with pytest.raises(InvalidRoutes):  # nor can one be written
        write_routes(s3, "triton", Routes(model="n"), {bad: 100}, by="r")
    assert not s3.exists(routes_uri("triton", "n"))


@pytest.mark.parametrize("entries, message", [
    ((("m--v1-a", 60), ("m--v2-b", 30)), "weights must sum to 100, got 90"),
    ((("m--v1-a", 101),), "weights must be integers in 0..100"),
    ((("m--v1-a", -1), ("m--v2-b", 101)), "weights must be integers in 0..100"),
    ((("m--v1-a", True),), "weights must be integers in 0..100"),
    ((("m--v1-a", 50.0), ("m--v2-b", 50)), "weights must be integers in 0..100"),
    ((("m--v1-a", "100"),), "weights must be integers in 0..100"),
    ((("m--v1-a", 50), ("m--v1-a", 50)), "deployment 'm--v1-a' is listed twice"),
])  # fmt: skip
def test_a_routes_file_with_bad_weights_is_refused(s3, entries, message):
    uri = _put(s3, _doc(*entries))
    with pytest.raises(InvalidRoutes, match=f"^routes file {re.escape(uri)} of model 'm': {re.escape(message)}"):
        read_routes(s3, "triton", "m")


@pytest.mark.parametrize("data", [b"{broken", b"[]", b'{"model": "m", "revision": 1}',
                                  b'{"model": "m", "revision": 1, "routes": [{"weight": 100}]}',
                                  b'{"model": "m", "revision": "x", "routes": []}', b'{"model": "m", "routes": 5}'])
def test_a_file_that_is_no_routes_document_is_refused_in_one_line(s3, data):
    uri = _put(s3, data)
    with pytest.raises(InvalidRoutes, match=f"^routes file {re.escape(uri)} of model 'm' is not a routes document: "):
        read_routes(s3, "triton", "m")


def test_valid_and_empty_routes_files_are_read(s3):
    _put(s3, _doc(("m--v3-ort_fp32-abcdef01", 70), ("m--v2-ort_int8_dynamic", 30)))
    assert read_routes(s3, "triton", "m").weights() == {"m--v3-ort_fp32-abcdef01": 70, "m--v2-ort_int8_dynamic": 30}
    _put(s3, _doc())  # the model exists but serves nothing
    assert read_routes(s3, "triton", "m").weights() == {}


def test_the_gateway_keeps_the_last_good_table_when_a_file_names_a_bad_deployment(tmp_path, caplog):
    from modelops.serving.gateway.reload import RoutesSource, RoutesWatcher
    from modelops.serving.gateway.routing import RoutesFileError, parse_routes

    bad = json.dumps(_doc(("m--v1-a", 50), ("../v2/repository/models/x/load", 50))).encode()
    with pytest.raises(RoutesFileError, match=r"routes file of 'm': bad deployment name '\.\./v2/repository"):
        parse_routes("m", bad)

    async def scenario() -> None:
        watcher = RoutesWatcher(RoutesSource(str(tmp_path)))
        (tmp_path / "m.json").write_text(json.dumps(_doc(("m--v1-a", 100))))
        await watcher.poll_once()
        good = watcher.get("m")
        (tmp_path / "m.json").write_bytes(bad)
        await watcher.poll_once()
        assert watcher.get("m") is good and good.deployments == ("m--v1-a",)

    with caplog.at_level("WARNING", logger="modelops.gateway.routes"):
        asyncio.run(scenario())
    assert "bad deployment name '../v2/repository/models/x/load'" in caplog.text and "keeping the previous" in caplog.text


def test_reconcile_never_loads_a_bad_name_of_a_routes_file(s3):
    from modelops.serving.reconcile import INVALID, reconcile

    calls: list[tuple[str, str]] = []

    class Triton:
        def is_model_ready(self, name):
            calls.append(("ready", name))
            return True

        def load_model(self, name):
            calls.append(("load", name))

    bad = "../../v2/repository/models/x\nX-Admin: 1"
    _put(s3, _doc(("m--v1-a", 50), (bad, 50)))
    actions = {a.deployment: a for a in reconcile(Triton(), s3, "triton")}
    assert calls == [("ready", "m--v1-a")]  # the bad name never reaches Triton
    assert actions[repr(bad)].action == INVALID and "\n" not in actions[repr(bad)].line()
