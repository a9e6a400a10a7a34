from __future__ import annotations

import json
import threading
import time

import pytest

from modelops.serving.locks import LockHeld, LockLost, acquire, holder, lock_uri, release

URI = lock_uri("triton", "optimize", "digits_cnn--v3")


def test_lock_uri_layout_and_bad_names():
    assert URI == "s3://triton/locks/optimize/digits_cnn--v3.json"
    assert lock_uri("triton", "rollout", "digits_cnn") == "s3://triton/locks/rollout/digits_cnn.json"
    for kind, name in (("", "m"), ("rollout", ""), ("rollout", "a/b")):
        with pytest.raises(ValueError):
            lock_uri("triton", kind, name)


def test_a_held_lease_refuses_another_owner_with_one_line(s3):
    lease = acquire(s3, URI, owner="run-a", ttl_s=600, what="the optimization of digits_cnn v3")
    with pytest.raises(LockHeld) as err:
        acquire(s3, URI, owner="run-b", ttl_s=600, what="the optimization of digits_cnn v3")
    line = str(err.value)
    assert "\n" not in line
    assert line.startswith("the optimization of digits_cnn v3 is already held by run-a since ")
    assert "(expires " in line and line.endswith(")")
    assert holder(s3, URI)["owner"] == "run-a"
    assert "run-a" in repr(lease) and "etag" not in repr(lease)


def test_same_owner_takes_its_lease_again_keeping_the_first_acquisition(s3):
    first = acquire(s3, URI, owner="run-a", ttl_s=600, what="w")
    again = acquire(s3, URI, owner="run-a", ttl_s=600, what="w")  # a retried task of the same run
    assert again.acquired_at == first.acquired_at
    assert first.release() is False  # the retry's write replaced the first attempt's ETag
    assert again.release() is True
    assert holder(s3, URI) is None


def test_an_expired_lease_is_taken_over_and_the_old_holder_cannot_renew_or_release_it(s3):
    old = acquire(s3, URI, owner="run-a", ttl_s=0.2, what="w")
    time.sleep(0.3)
    assert holder(s3, URI) is None
    new = acquire(s3, URI, owner="run-b", ttl_s=600, what="w")
    with pytest.raises(LockLost):
        old.renew()
    assert old.release() is False
    assert holder(s3, URI)["owner"] == "run-b"
    assert new.release() is True


def test_renew_pushes_expiry_and_release_frees_it(s3):
    lease = acquire(s3, URI, owner="run-a", ttl_s=0.3, what="w")
    time.sleep(0.2)
    lease.renew(600)
    time.sleep(0.2)
    with pytest.raises(LockHeld):  # would have expired without the renewal
        acquire(s3, URI, owner="run-b", ttl_s=600, what="w")
    assert json.loads(s3.read_bytes(URI))["expires_at_epoch"] > time.time() + 500
    assert lease.release() is True
    with pytest.raises(LockLost):
        lease.renew()
    assert acquire(s3, URI, owner="run-b", ttl_s=600, what="w").owner == "run-b"


def test_release_by_owner_only(s3):
    acquire(s3, URI, owner="run-a", ttl_s=600, what="w")
    assert release(s3, URI, owner="run-b") is False
    assert holder(s3, URI)["owner"] == "run-a"
    assert release(s3, URI, owner="run-a") is True
    assert release(s3, URI, owner="run-a") is False  # already released
    assert release(s3, lock_uri("triton", "optimize", "absent"), owner="run-a") is False


def test_unreadable_lease_counts_as_free(s3):
    s3.write_bytes(URI, b"not json")
    assert acquire(s3, URI, owner="run-a", ttl_s=60, what="w").owner == "run-a"


def test_bad_arguments_are_refused(s3):
    with pytest.raises(ValueError):
        acquire(s3, URI, owner="run-a", ttl_s=0, what="w")
    with pytest.raises(ValueError):
        acquire(s3, URI, owner="", ttl_s=10, what="w")


def test_racing_takers_get_exactly_one_lease(s3):
    winners, losers = [], []
    barrier = threading.Barrier(8)

    def take(i: int) -> None:
        barrier.wait()
        try:
            winners.append(acquire(s3, URI, owner=f"run-{i}", ttl_s=600, what="w"))
        except LockHeld as exc:
            losers.append(str(exc))

    threads = [threading.Thread(target=take, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(losers) == 7
    assert holder(s3, URI)["owner"] == winners[0].owner
    assert all(f"held by {winners[0].owner}" in line for line in losers)


def test_the_pipeline_fails_a_second_run_of_a_version_and_releases_only_its_own_lease(s3):
    from airflow.sdk.exceptions import AirflowFailException

    from modelops_airflow.operators.pipeline_tasks import _lock_optimization, _unlock_optimization

    _lock_optimization(s3, "triton", "digits_cnn", "3", "manual__1")
    with pytest.raises(AirflowFailException, match=r"^the optimization of digits_cnn v3 is already held by manual__1 "):
        _lock_optimization(s3, "triton", "digits_cnn", "3", "nightly__2")
    _lock_optimization(s3, "triton", "digits_cnn", "4", "nightly__2")  # another version is independent
    _unlock_optimization(s3, "triton", "digits_cnn", "3", "nightly__2")  # not ours: left alone
    assert holder(s3, URI)["owner"] == "manual__1"
    _unlock_optimization(s3, "triton", "digits_cnn", "3", "manual__1")
    assert holder(s3, URI) is None


def test_a_run_that_lost_its_lease_cannot_publish_or_deploy(s3, monkeypatch):
    """The fence before select, publish and deploy: an expired lease taken over by another run fails the task in
    one line, and the other run's lease is untouched; a lease still held is renewed by it."""
    from airflow.sdk.exceptions import AirflowFailException

    from modelops_airflow.operators import pipeline_tasks

    spec = {"triton_bucket": "triton", "model_name": "digits_cnn", "model_version": "3"}
    monkeypatch.setattr(pipeline_tasks, "_airflow_run_id", lambda context=None: "manual__1")
    first = acquire(s3, URI, owner="manual__1", ttl_s=0.2, what="the optimization of digits_cnn v3")
    pipeline_tasks._fence(s3, spec)  # held: renewed with the full TTL
    renewed = holder(s3, URI)
    assert renewed["owner"] == "manual__1" and renewed["expires_at_epoch"] > first.expires_at + 3600
    # the lease expires mid-run and a second run of the version takes it
    s3.write_bytes(URI, json.dumps({**renewed, "expires_at_epoch": time.time() - 1}).encode())
    acquire(s3, URI, owner="nightly__2", ttl_s=600, what="the optimization of digits_cnn v3")
    with pytest.raises(AirflowFailException) as err:
        pipeline_tasks._fence(s3, spec)
    assert str(err.value).startswith("the optimization of digits_cnn v3: the lease was lost to nightly__2")
    assert "\n" not in str(err.value) and holder(s3, URI)["owner"] == "nightly__2"


def test_renew_held_names_an_expired_or_released_lease(s3):
    from modelops.serving.locks import renew_held

    lease = acquire(s3, URI, owner="run-a", ttl_s=0.05, what="w")
    time.sleep(0.1)
    with pytest.raises(LockLost, match="^w: the lease expired at "):
        renew_held(s3, URI, owner="run-a", ttl_s=600, what="w")
    lease = acquire(s3, URI, owner="run-a", ttl_s=600, what="w")
    lease.release()
    with pytest.raises(LockLost, match="^w: the lease was released at "):
        renew_held(s3, URI, owner="run-a", ttl_s=600, what="w")
    with pytest.raises(LockLost, match="no lease at"):
        renew_held(s3, lock_uri("triton", "optimize", "other--v1"), owner="run-a", ttl_s=600, what="w")
