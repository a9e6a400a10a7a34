"""Weighted picks and routes files of the gateway (pure: no server)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import pytest

from modelops.serving.gateway.reload import RoutesSource, RoutesWatcher
from modelops.serving.gateway.routing import RoutesFileError, parse_routes

A, B = "m--v1-a", "m--v2-b"  # deployment names (the routes contract refuses any other)


def _doc(weights: dict[str, int], revision: int = 1) -> bytes:
    return json.dumps({"model": "m", "revision": revision,
                       "routes": [{"deployment": d, "weight": w} for d, w in weights.items()]}).encode()


def test_round_robin_gives_each_deployment_exactly_its_weight() -> None:
    table = parse_routes("m", _doc({A: 70, B: 30}))
    picks = Counter(table.pick() for _ in range(1000))
    assert picks == {A: 700, B: 300}
    window = [table.pick() for _ in range(10)]
    assert window.count(B) == 3  # interleaved, not 70 a's then 30 b's


def test_session_is_sticky_and_sessions_spread_by_weight() -> None:
    table = parse_routes("m", _doc({A: 70, B: 30}))
    assert len({table.pick("user-42") for _ in range(50)}) == 1
    spread = Counter(table.pick(f"session-{i}") for i in range(4000))
    assert abs(spread[A] / 4000 - 0.70) < 0.04


def test_zero_weights_are_dropped_and_empty_routes_pick_nothing() -> None:
    table = parse_routes("m", _doc({A: 100, B: 0}))
    assert table.deployments == (A,)
    assert parse_routes("m", _doc({})).pick() is None


@pytest.mark.parametrize("data", [b"{not json", b"[]", json.dumps({"routes": [{"deployment": A}]}).encode(),
                                  _doc({A: 60, B: 30})])
def test_bad_routes_files_are_refused_with_one_line(data: bytes) -> None:
    with pytest.raises(RoutesFileError, match="routes file of 'm'") as err:
        parse_routes("m", data)
    assert "\n" not in str(err.value)


def test_watcher_sees_new_changed_broken_and_deleted_files(tmp_path: Path) -> None:
    async def scenario() -> None:
        watcher = RoutesWatcher(RoutesSource(str(tmp_path)), poll_s=0.05)
        await watcher.poll_once()
        assert watcher.loaded and watcher.tables == {}
        (tmp_path / "m.json").write_bytes(_doc({A: 100}))
        assert await watcher.poll_once()
        first = watcher.get("m")
        assert first is not None and first.deployments == (A,)
        assert not await watcher.poll_once()  # unchanged file: not re-read, same table object
        assert watcher.get("m") is first
        (tmp_path / "m.json").write_bytes(b"{broken")
        await watcher.poll_once()
        assert watcher.get("m") is first  # a broken file keeps the last good routes
        (tmp_path / "m.json").write_bytes(_doc({A: 50, B: 50}, revision=2))
        await watcher.poll_once()
        assert watcher.get("m").weights == (50, 50)
        (tmp_path / "m.json").unlink()
        await watcher.poll_once()
        assert watcher.get("m") is None

    asyncio.run(scenario())


def test_failed_poll_keeps_serving_the_last_routes(tmp_path: Path) -> None:
    class Flaky(RoutesSource):
        fail = False

        def scan(self) -> dict[str, str]:
            if self.fail:
                raise ConnectionError("S3 down")
            return super().scan()

    async def scenario() -> None:
        (tmp_path / "m.json").write_bytes(_doc({A: 100}))
        source = Flaky(str(tmp_path))
        watcher = RoutesWatcher(source)
        await watcher.poll_once()
        source.fail = True
        assert not await watcher.poll_once()
        assert watcher.get("m") is not None and watcher.last_error == "ConnectionError: S3 down"

    asyncio.run(scenario())


def test_a_deployment_listed_twice_is_refused_like_the_pipeline_refuses_it() -> None:
    doc = json.dumps({"model": "m", "revision": 1, "routes": [{"deployment": A, "weight": 50},
                                                              {"deployment": A, "weight": 50}]}).encode()
    with pytest.raises(RoutesFileError, match=rf"^routes file of 'm': deployment '{A}' is listed twice$"):
        parse_routes("m", doc)
