"""Keys with limits at the gateway (in-process app, real HTTP to a fake Triton): rate, concurrency, expiry, usage,
failed lookups per client address, and a cache random ids cannot empty."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest

from modelops.serving.gateway import GatewayConfig
from modelops.serving.gateway.keys import ApiKey, KeyCache, KeyStore, StoredKey
from modelops.serving.gateway.keys_cli import parse_duration, parse_rate
from modelops.serving.gateway.quotas import Quotas
from tests.unit.gateway_upstream import FakeTriton
from tests.unit.test_gateway_app import INFER, bearer, gateway, run, write_routes


@pytest.fixture
def triton():
    fake = FakeTriton({"m--v1"}).start()
    yield fake
    fake.stop()


@pytest.fixture
def config(tmp_path, triton) -> GatewayConfig:
    routes = tmp_path / "routes"
    routes.mkdir()
    write_routes(routes, "m", {"m--v1": 100})
    return GatewayConfig(triton_url=triton.url, routes_uri=str(routes), keys_db=tmp_path / "keys.db",
                         routes_poll_s=0.1)


def _store(config) -> KeyStore:
    return KeyStore(config.keys_db)


def test_a_key_over_its_rate_gets_429_with_retry_after_then_passes_again(config):
    _, key = _store(config).create("slow", "m", rate_limit=2.0)

    async def scenario() -> None:
        async with gateway(config) as gw:
            codes = [(await gw.post("/v2/models/m/infer", json=INFER, headers=bearer(key))) for _ in range(3)]
            assert [r.status_code for r in codes[:2]] == [200, 200]  # a second's worth of burst
            refused = codes[2]
            assert refused.status_code == 429 and "rate limit of 2 request(s)/s" in refused.json()["error"]
            wait = int(refused.headers["retry-after"])
            assert wait >= 1
            await asyncio.sleep(wait)
            assert (await gw.post("/v2/models/m/infer", json=INFER, headers=bearer(key))).status_code == 200
            answers = [await gw.post("/v1/embeddings", json={"model": "m", "input": "x"}, headers=bearer(key))
                        for _ in range(3)]
            openai = answers[-1]
            assert openai.status_code == 429 and openai.headers["retry-after"]  # the OpenAI API too, in its shape
            assert openai.json()["error"]["type"]

    run(scenario())


def test_a_key_at_its_concurrency_gets_429_until_its_request_ends(config, triton):
    _, key = _store(config).create("one-at-a-time", "m", max_concurrency=1)
    _, other = _store(config).create("other", "m")
    triton.delay_s = 1.0

    async def scenario() -> None:
        async with gateway(config) as gw:
            first = asyncio.create_task(gw.post("/v2/models/m/infer", json=INFER, headers=bearer(key)))
            await asyncio.sleep(0.3)
            second = await gw.post("/v2/models/m/infer", json=INFER, headers=bearer(key))
            assert second.status_code == 429 and second.headers["retry-after"] == "1"
            assert "1 request(s) in flight" in second.json()["error"]
            # another key is not held up by it
            assert (await gw.post("/v2/models/m/infer", json=INFER, headers=bearer(other))).status_code == 200
            assert (await first).status_code == 200
            triton.delay_s = 0.0
            assert (await gw.post("/v2/models/m/infer", json=INFER, headers=bearer(key))).status_code == 200
            assert gw.app.state.gateway.auth.quotas.total_in_flight == 0  # every lease given back

    run(scenario())


def test_an_expired_key_is_refused_naming_its_expiry(config):
    store = _store(config)
    expires = datetime.now(UTC) + timedelta(seconds=3)  # room for the gateway to start on a loaded machine
    record, key = store.create("short", "m", expires_at=expires)
    with pytest.raises(ValueError, match="--expires must be in the future"):
        store.create("past", "m", expires_at=datetime.now(UTC) - timedelta(seconds=1))

    async def scenario() -> None:
        async with gateway(config) as gw:
            assert (await gw.post("/v2/models/m/infer", json=INFER, headers=bearer(key))).status_code == 200
            await asyncio.sleep((expires - datetime.now(UTC)).total_seconds() + 1.2)
            r = await gw.post("/v2/models/m/infer", json=INFER, headers=bearer(key))
            assert r.status_code == 401 and r.json()["error"] == f"API key 'short' expired at {record.expires_at}"

    run(scenario())


def test_usage_reaches_the_key_store(config):
    from dataclasses import replace

    fast = replace(config, usage_flush_s=0.2)
    _, key = _store(config).create("counted", "m")

    async def scenario() -> None:
        async with gateway(fast) as gw:
            for _ in range(3):
                assert (await gw.post("/v2/models/m/infer", json=INFER, headers=bearer(key))).status_code == 200
            await asyncio.sleep(0.5)
        # and the last batch is written at shutdown
        async with gateway(fast) as gw:
            assert (await gw.get("/v2/models/m", headers=bearer(key))).status_code == 200

    run(scenario())
    (listed,) = [k for k in _store(config).list() if k.name == "counted"]
    assert listed.requests == 4 and listed.last_used_at is not None


def test_random_keys_from_one_address_get_429_and_a_valid_cached_key_still_passes(config):
    _, key = _store(config).create("valid", "m")

    async def scenario() -> None:
        async with gateway(config) as gw:
            assert (await gw.post("/v2/models/m/infer", json=INFER, headers=bearer(key))).status_code == 200
            codes = []
            for i in range(60):
                fake = f"mo_{i:012x}_{'x' * 43}"
                codes.append((await gw.get("/v2/models/m", headers=bearer(fake))).status_code)
            assert codes[0] == 401 and 429 in codes  # after the burst, refused before the key store is asked
            lookups = len(gw.app.state.gateway.auth.cache)
            assert lookups < 60  # the refused ones cost no lookup
            assert (await gw.post("/v2/models/m/infer", json=INFER, headers=bearer(key))).status_code == 200

    run(scenario())


def test_a_valid_key_past_its_cache_ttl_is_not_held_up_by_its_addresss_spray(config):
    """The spray outlasts the key's cache entry (TTL 1 s): the known id is looked up again, not refused with 429,
    and once revoked it is refused as revoked."""
    _, key = _store(config).create("valid", "m")

    async def scenario() -> None:
        async with gateway(config) as gw:
            assert (await gw.post("/v2/models/m/infer", json=INFER, headers=bearer(key))).status_code == 200
            await asyncio.sleep(gw.app.state.gateway.auth.cache.ttl_s + 0.2)  # the valid key's entry is stale now
            for i in range(40):
                await gw.get("/v2/models/m", headers=bearer(f"mo_{i:012x}_{'x' * 43}"))
            assert (await gw.get("/v2/models/m", headers=bearer(f"mo_{99:012x}_{'x' * 43}"))).status_code == 429
            assert (await gw.post("/v2/models/m/infer", json=INFER, headers=bearer(key))).status_code == 200
            _store(config).revoke("valid")
            await asyncio.sleep(gw.app.state.gateway.auth.cache.ttl_s + 0.2)
            assert (await gw.post("/v2/models/m/infer", json=INFER, headers=bearer(key))).status_code == 401

    run(scenario())


def test_the_key_cache_keeps_valid_keys_when_probed_with_random_ids():
    cache = KeyCache(ttl_s=60, max_entries=100)
    valid = StoredKey(ApiKey("a" * 12, "valid", ("m",), "2026-01-01T00:00:00+00:00"), b"s", b"d")
    cache.put(valid.key.id, valid)
    for i in range(10_000):
        cache.put(f"{i:012x}", None)
    assert cache.get(valid.key.id) == (True, valid)
    assert len(cache) == 101  # bounded: 100 misses and the key


def test_quotas_refuse_over_the_gateway_wide_limit():
    quotas = Quotas(max_in_flight=2)
    key = ApiKey("b" * 12, "k", ("*",), "2026-01-01T00:00:00+00:00")
    leases = [quotas.admit(key), quotas.admit(key)]
    with pytest.raises(Exception, match="limit of 2 requests in flight") as info:
        quotas.admit(key)
    assert info.value.status == 429 and info.value.headers == {"retry-after": "1"}
    leases[0].release()
    leases[0].release()  # idempotent
    quotas.admit(key)
    assert quotas.total_in_flight == 2


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("15m", 900), ("12h", 43200), ("30d", 2592000),
                                               ("2w", 1209600)])
def test_durations(text, seconds):
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize(("text", "per_s"), [("10/s", 10), ("600/m", 10), ("5", 5), ("3600/h", 1)])
def test_rates(text, per_s):
    assert parse_rate(text) == per_s


@pytest.mark.parametrize("bad", ["0/s", "ten", "5/d", "-1"])
def test_bad_rates_are_one_line(bad):
    with pytest.raises(ValueError, match="--rate-limit must be a positive rate"):
        parse_rate(bad)


def test_keys_cli_creates_limited_keys_and_lists_usage(tmp_path, capsys):
    from modelops.local.cli import main

    db = str(tmp_path / "keys.db")
    assert main(["keys", "--db", db, "create", "--name", "svc", "--models", "m", "--expires", "30d",
                 "--rate-limit", "600/m", "--max-concurrency", "4", "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert (created["rate_limit"], created["max_concurrency"]) == (10.0, 4) and created["key"].startswith("mo_")
    assert datetime.fromisoformat(created["expires_at"]) > datetime.now(UTC) + timedelta(days=29)
    KeyStore(tmp_path / "keys.db").record_usage({created["id"]: (7, "2026-12-07T10:00:00+00:00")})
    assert main(["keys", "--db", db, "list", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert (listed["requests"], listed["last_used"]) == (7, "2026-12-07T10:00:00+00:00")
    assert "key" not in listed
    assert main(["keys", "--db", db, "create", "--name", "bad", "--models", "m", "--expires", "soon"]) == 1
    assert "--expires must be a positive duration" in capsys.readouterr().err


def test_a_store_made_before_the_limits_gets_their_columns(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript("CREATE TABLE api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, models TEXT NOT NULL, "
                           "salt BLOB NOT NULL, digest BLOB NOT NULL, created_at TEXT NOT NULL, revoked_at TEXT);")
        conn.execute("INSERT INTO api_keys VALUES ('cccccccccccc', 'old', 'm', x'00', x'00', '2026-01-01', NULL)")
    (old,) = KeyStore(path).list()
    assert (old.name, old.rate_limit, old.requests, old.expires_at) == ("old", None, 0, None)
