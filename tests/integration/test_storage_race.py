"""Conditional writes on the real S3 (SeaweedFS): racing writers, boto3 retries whose first attempt landed,
and the one-line errors of S3 failures."""

from __future__ import annotations

import threading
import uuid

import pytest

from modelops.serving.routes import RoutesConflict, read_routes, write_routes
from modelops.storage import PreconditionFailed, S3Config, Storage, StorageError

pytestmark = pytest.mark.integration


def _fresh(storage: Storage) -> Storage:
    """A second writer: its own boto3 client, as another process would have."""
    return Storage(S3Config(**{k: getattr(storage.config, k) for k in ("endpoint_url", "access_key", "secret_key")}))


def test_two_writers_racing_on_one_routes_file_lose_no_update(storage, settings):
    bucket, model = settings.triton_bucket, f"race_{uuid.uuid4().hex[:6]}"
    writers = [_fresh(storage), _fresh(storage)]
    rounds, barrier = 12, threading.Barrier(2)
    landed: dict[int, list[int]] = {0: [], 1: []}  # revisions written
    conflicts: dict[int, list[int]] = {0: [], 1: []}  # rounds lost
    errors: list[BaseException] = []

    def lockstep(i: int) -> None:
        try:
            for rnd in range(rounds):
                current = read_routes(writers[i], bucket, model)
                barrier.wait(timeout=30)  # both read the same revision, then both write
                try:
                    new = write_routes(writers[i], bucket, current, {f"{model}--v{rnd}-w{i}": 100}, by=f"w{i}")
                    landed[i].append(new.revision)
                except RoutesConflict:
                    conflicts[i].append(rnd)
                barrier.wait(timeout=30)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=lockstep, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    # every round: exactly one write landed and the other got the conflict error
    assert len(landed[0]) + len(landed[1]) == rounds
    assert sorted(conflicts[0] + conflicts[1]) == list(range(rounds))
    assert sorted(landed[0] + landed[1]) == list(range(1, rounds + 1))
    final = read_routes(storage, bucket, model)
    assert final.revision == rounds

    # free running: each writer retries until its update lands; no update may be lost
    per_writer = 8
    done: dict[int, int] = {0: 0, 1: 0}
    seen_conflicts = [0]

    def free(i: int) -> None:
        try:
            while done[i] < per_writer:
                current = read_routes(writers[i], bucket, model)
                try:
                    write_routes(writers[i], bucket, current, {f"{model}--vfree{done[i]}-w{i}": 100}, by=f"w{i}")
                    done[i] += 1
                except RoutesConflict:
                    seen_conflicts[0] += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=free, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert read_routes(storage, bucket, model).revision == rounds + 2 * per_writer
    storage.delete(f"s3://{bucket}/routes/{model}.json")


def _lose_first_response(storage: Storage) -> list[int]:
    """Make the next PutObject land on the server but look lost to boto3 (connection closed), so it retries.

    Returns the HTTP status of every attempt, filled as they happen.
    """
    from botocore.exceptions import ConnectionClosedError

    client, statuses = storage.client, []

    def send(request, **_kw):
        response = client._endpoint.http_session.send(request)
        statuses.append(response.status_code)
        if len(statuses) == 1:
            raise ConnectionClosedError(endpoint_url=request.url)
        return response

    client.meta.events.register_first("before-send.s3.PutObject", send, unique_id="lose-first-response")
    return statuses


@pytest.mark.parametrize("first", ["create", "update"])
def test_a_retried_conditional_write_whose_first_attempt_landed_is_a_success(storage, settings, first):
    writer = _fresh(storage)
    uri = f"s3://{settings.triton_bucket}/tests/retry-{uuid.uuid4().hex[:8]}.json"
    etag = None
    if first == "update":
        etag = writer.write_bytes(uri, b'{"v": 1}', if_none_match=True)
    statuses = _lose_first_response(writer)
    new_etag = writer.write_bytes(uri, b'{"v": 2}', if_none_match=etag is None, if_match=etag)
    assert statuses == [200, 412]  # the retry really got a 412, for a write that was ours
    assert storage.read_bytes(uri) == b'{"v": 2}'
    assert new_etag == storage.read_with_etag(uri)[1]
    # someone else's write still is a conflict, even with the very same bytes
    with pytest.raises(PreconditionFailed):
        _fresh(storage).write_bytes(uri, b'{"v": 2}', if_match=etag or '"0"')
    storage.delete(uri)


def test_routes_update_retried_after_a_lost_response_is_not_a_false_conflict(storage, settings):
    bucket, model = settings.triton_bucket, f"retry_{uuid.uuid4().hex[:6]}"
    writer = _fresh(storage)
    a, b = f"{model}--v1-ort_fp32", f"{model}--v2-ort_fp32"
    one = write_routes(writer, bucket, read_routes(writer, bucket, model), {a: 100}, by="run1")
    statuses = _lose_first_response(writer)
    two = write_routes(writer, bucket, one, {a: 50, b: 50}, by="run1")
    assert statuses == [200, 412]
    assert two.revision == 2 and read_routes(storage, bucket, model).weights() == {a: 50, b: 50}
    storage.delete(f"s3://{bucket}/routes/{model}.json")


def test_s3_failures_are_one_line_errors(storage, settings, monkeypatch):
    monkeypatch.setenv("MODELOPS_S3_MAX_ATTEMPTS", "1")
    cfg = storage.config
    bad_key = Storage(S3Config(endpoint_url=cfg.endpoint_url, access_key=cfg.access_key, secret_key="x" * 40))
    with pytest.raises(StorageError) as err:
        bad_key.read_bytes(f"s3://{settings.triton_bucket}/routes/x.json")
    line = str(err.value)
    assert line.startswith(f"S3 read s3://{settings.triton_bucket}/routes/x.json failed: ") and "\n" not in line
    assert "x" * 40 not in line
    # (SeaweedFS creates a missing bucket on a write with admin keys; reads and listings say it is missing)
    with pytest.raises(StorageError, match=r"^S3 read s3://no-such-bucket-\w+/k failed: NoSuchBucket"):
        storage.read_bytes(f"s3://no-such-bucket-{uuid.uuid4().hex[:6]}/k")
    with pytest.raises(StorageError, match=r"^S3 list s3://no-such-bucket-\w+/p failed: NoSuchBucket"):
        storage.list(f"s3://no-such-bucket-{uuid.uuid4().hex[:6]}/p")


def test_gc_on_s3_removes_an_unrouted_partial_deployment_and_keeps_a_routed_one(storage, settings):
    import time

    from modelops.serving.gc import collect

    bucket, tag = settings.triton_bucket, uuid.uuid4().hex[:6]
    dead, routed = f"gc{tag}--v1-ort_fp32", f"gc{tag}--v2-ort_fp32"
    for name in (dead, routed):
        storage.write_bytes(f"s3://{bucket}/{name}/config.pbtxt", b"name: x")
        storage.write_bytes(f"s3://{bucket}/{name}/1/model.onnx", b"partial")
    write_routes(storage, bucket, read_routes(storage, bucket, f"gc{tag}"), {routed: 100}, by="test")
    later = time.time() + 120  # both were last written two minutes "ago"
    found = {p.deployment: p.action for p in collect(storage, f"s3://{bucket}", grace_s=60, dry_run=True, now=later)}
    assert found[dead] == "would remove" and found[routed] == "kept: routed"
    assert len(storage.list(f"s3://{bucket}/{dead}")) == 2
    young = {p.deployment: p.action for p in collect(storage, f"s3://{bucket}", grace_s=3600, now=later)}
    assert young[dead] == "kept: younger than the grace period"
    collect(storage, f"s3://{bucket}", grace_s=60, now=later)
    assert storage.list(f"s3://{bucket}/{dead}") == []
    assert len(storage.list(f"s3://{bucket}/{routed}")) == 2
    for uri in storage.list(f"s3://{bucket}/{routed}") + [f"s3://{bucket}/routes/gc{tag}.json"]:
        storage.delete(uri)
