"""Request bodies at the gateway's entrance: Content-Encoding, JSON nesting depth and a client that goes away.

The gateway app in-process (ASGI) against the real-HTTP fake Triton of :mod:`tests.unit.gateway_upstream`, as in
:mod:`tests.unit.test_gateway_app`; :func:`read_body` also directly over a hand-built Starlette request.
"""

from __future__ import annotations

import gzip
import json
import tracemalloc
import zlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request
from starlette.types import Message

from modelops.serving.gateway import GatewayConfig
from modelops.serving.gateway.errors import GatewayError
from modelops.serving.gateway.keys import KeyStore
from modelops.serving.gateway.proxy import read_body
from tests.unit.gateway_upstream import FakeTriton, fake_embedding
from tests.unit.test_gateway_app import INFER, bearer, gateway, run, write_routes

EMB, DIM = "emb--v1", 8
PLAIN = json.dumps(INFER).encode()
DEEP = b"[" * 10_000 + b"]" * 10_000


def deflate(data: bytes) -> bytes:
    return zlib.compress(data)  # the zlib format, as HTTP's deflate (and tritonclient) has it


def bomb(zeros: int, level: int = 9) -> bytes:
    """``zeros`` zero bytes gzip-compressed, made 1 MiB at a time."""
    packer = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1 << 20)
    out = [packer.compress(block[: min(len(block), zeros - done)]) for done in range(0, zeros, len(block))]
    return b"".join([*out, packer.flush()])


@pytest.fixture
def triton() -> Iterator[FakeTriton]:
    fake = FakeTriton({"m--v1"}, llms={"chat--v1"}, embedders={EMB: DIM}).start()
    yield fake
    fake.stop()


@pytest.fixture
def config(tmp_path: Path, triton: FakeTriton) -> GatewayConfig:
    routes = tmp_path / "routes"
    routes.mkdir()
    write_routes(routes, "m", {"m--v1": 100})
    write_routes(routes, "emb", {EMB: 100})
    write_routes(routes, "chat", {"chat--v1": 100})
    return GatewayConfig(triton_url=triton.url, routes_uri=str(routes), keys_db=tmp_path / "keys.db",
                         max_body_bytes=4096, routes_poll_s=0.1)


@pytest.fixture
def key(config: GatewayConfig) -> dict[str, str]:
    return bearer(KeyStore(config.keys_db).create("all", "*")[1])


def post_all(config: GatewayConfig, calls: list[tuple[str, bytes, dict[str, str]]]) -> list[Any]:
    """POST each ``(path, body, headers)`` to a fresh in-process gateway; the responses."""

    async def scenario() -> list[Any]:
        async with gateway(config) as gw:
            return [await gw.post(path, content=body, headers=headers) for path, body, headers in calls]

    return run(scenario())


@pytest.mark.parametrize(("encoding", "pack"), [
    ("gzip", gzip.compress), ("x-gzip", gzip.compress), ("GZip", gzip.compress), ("deflate", deflate),
    ("gzip", lambda b: gzip.compress(b[:10]) + gzip.compress(b[10:])),  # two gzip members, one body
])
def test_compressed_bodies_are_inflated_and_go_upstream_plain(
    config: GatewayConfig, key: dict[str, str], triton: FakeTriton, encoding: str, pack: Any,
) -> None:
    head = json.dumps({"inputs": [{"name": "x", "shape": [4], "datatype": "UINT8",
                                   "parameters": {"binary_data_size": 4}}]}).encode()
    binary = head + b"\x00\xff\x01\x02"
    json_headers = {**key, "Content-Encoding": encoding, "Content-Type": "application/json"}
    r_json, r_binary = post_all(config, [
        ("/v2/models/m/infer", pack(PLAIN), json_headers),
        ("/v2/models/m/infer", pack(binary), {**key, "Content-Encoding": encoding,  # header length: uncompressed
                                              "Content-Type": "application/octet-stream",
                                              "Inference-Header-Content-Length": str(len(head))}),
    ])
    # the fake parses what it got as JSON and echoes the inputs: it was given the plain body
    assert r_json.status_code == 200, r_json.text
    assert r_json.json() == {"model_name": "m--v1", "outputs": INFER["inputs"]}
    assert r_binary.status_code == 200, r_binary.text
    assert r_binary.content[int(r_binary.headers["inference-header-content-length"]):] == b"\x00\xff\x01\x02"
    plain_json, plain_binary = triton.headers_seen
    assert "content-encoding" not in plain_json and "content-encoding" not in plain_binary
    assert plain_json["content-length"] == str(len(PLAIN))
    assert plain_binary["content-length"] == str(len(binary))
    assert plain_binary["inference-header-content-length"] == str(len(head))
    assert triton.hits["m--v1"] == 2


def test_identity_and_embeddings_bodies_are_inflated_too(
    config: GatewayConfig, key: dict[str, str], triton: FakeTriton,
) -> None:
    embed = json.dumps({"model": "emb", "input": ["one", "two"]}).encode()
    r_identity, r_embed = post_all(config, [
        ("/v2/models/m/infer", PLAIN, {**key, "Content-Encoding": "identity"}),
        ("/v1/embeddings", gzip.compress(embed), {**key, "Content-Encoding": "gzip"}),
    ])
    assert r_identity.status_code == 200 and r_identity.json()["outputs"] == INFER["inputs"]
    assert r_embed.status_code == 200, r_embed.text
    assert [d["embedding"] for d in r_embed.json()["data"]] == [fake_embedding(t, DIM) for t in ("one", "two")]


def test_compressed_json_is_checked_after_inflating(
    config: GatewayConfig, key: dict[str, str], triton: FakeTriton,
) -> None:
    headers = {**key, "Content-Encoding": "gzip"}
    responses = post_all(config, [
        ("/v2/models/m/infer", gzip.compress(b'{"inputs": ['), headers),
        ("/v2/models/m/infer", gzip.compress(b"[1]"), headers),
        ("/v2/models/m/infer", gzip.compress(b"{}"), {**headers, "Inference-Header-Content-Length": "99"}),
    ])
    assert [r.status_code for r in responses] == [400, 400, 400]
    assert responses[0].json()["error"].startswith("malformed JSON")
    assert "does not fit a body of 2 bytes" in responses[2].json()["error"]  # the inflated size
    assert triton.headers_seen == [] and sum(triton.hits.values()) == 0  # Triton is not asked to judge


def test_a_gzip_bomb_is_413_and_never_reaches_triton(
    config: GatewayConfig, key: dict[str, str], triton: FakeTriton,
) -> None:
    payload = bomb(3 * 1024 * 1024)
    assert len(payload) < config.max_body_bytes  # the bytes sent are within the limit; inflated they are not
    headers = {**key, "Content-Encoding": "gzip", "Content-Type": "application/json"}
    r_infer, r_embed, r_deflate = post_all(config, [
        ("/v2/models/m/infer", payload, headers),
        ("/v1/embeddings", payload, headers),
        ("/v2/models/m/infer", deflate(bytes(3 * 1024 * 1024)), {**headers, "Content-Encoding": "deflate"}),
    ])
    assert r_infer.status_code == 413 and r_deflate.status_code == 413
    assert r_infer.json() == {"error": "request body is over the gateway's limit of 4096 bytes (after decompression)"}
    assert r_embed.status_code == 413 and "(after decompression)" in r_embed.json()["error"]["message"]
    assert r_embed.json()["error"]["code"] == "request_too_large"
    assert triton.headers_seen == [] and sum(triton.hits.values()) == 0


def test_read_body_stops_inflating_a_bomb_at_the_limit() -> None:
    payload = bomb(256 * 1024 * 1024)  # 256 MiB of zeros in about 250 KB
    limit = 512 * 1024
    assert len(payload) < limit
    tracemalloc.start()
    try:
        with pytest.raises(GatewayError) as caught:
            run(read_body(request_over(chunked(payload, 16 * 1024), {"content-encoding": "gzip"}), limit))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.status == 413 and "after decompression" in caught.value.message
    assert peak < 8 * 1024 * 1024  # inflating it all would have taken 256 MiB


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, br", "gzip, gzip", "gzip;q=1"])
def test_other_content_encodings_are_415_naming_them(
    config: GatewayConfig, key: dict[str, str], triton: FakeTriton, encoding: str,
) -> None:
    r_infer, r_embed = post_all(config, [
        ("/v2/models/m/infer", PLAIN, {**key, "Content-Encoding": encoding}),
        ("/v1/embeddings", b'{"model": "emb", "input": "x"}', {**key, "Content-Encoding": encoding}),
    ])
    assert r_infer.status_code == 415 and r_embed.status_code == 415
    message = r_infer.json()["error"]
    assert repr(encoding) in message and "gzip, x-gzip, deflate, identity" in message and "\n" not in message
    assert repr(encoding) in r_embed.json()["error"]["message"]
    assert r_embed.json()["error"]["code"] == "unsupported_media_type"
    assert r_infer.headers["accept-encoding"] == r_embed.headers["accept-encoding"] == "gzip, x-gzip, deflate, identity"
    assert triton.headers_seen == [] and sum(triton.hits.values()) == 0


def test_two_content_encoding_headers_are_415(config: GatewayConfig, key: dict[str, str], triton: FakeTriton) -> None:
    async def scenario() -> Any:
        async with gateway(config) as gw:
            return await gw.post("/v2/models/m/infer", content=gzip.compress(gzip.compress(PLAIN)),
                                 headers=[*key.items(), ("Content-Encoding", "gzip"), ("Content-Encoding", "gzip")])

    r = run(scenario())
    assert r.status_code == 415 and "'gzip, gzip'" in r.json()["error"]
    assert sum(triton.hits.values()) == 0


@pytest.mark.parametrize(("encoding", "body", "why"), [
    ("gzip", b"this is not gzip at all", "incorrect header check"),
    ("gzip", gzip.compress(PLAIN)[:-12], "ends early"),  # cut short
    ("gzip", gzip.compress(PLAIN)[:-4] + b"\x00\x00\x00\x00", "incorrect length check"),  # wrong ISIZE trailer
    ("x-gzip", gzip.compress(PLAIN) + b"garbage", "incorrect header check"),
    ("deflate", b"\x78\x9c not deflate", ""),
    ("deflate", deflate(PLAIN) + b"tail", "data after the end of the stream"),
])
def test_corrupt_compressed_bodies_are_400_naming_the_encoding(
    config: GatewayConfig, key: dict[str, str], triton: FakeTriton, encoding: str, body: bytes, why: str,
) -> None:
    (r,) = post_all(config, [("/v2/models/m/infer", body, {**key, "Content-Encoding": encoding})])
    assert r.status_code == 400
    message = r.json()["error"]
    assert message.startswith(f"corrupt {encoding} request body") and why in message
    assert triton.headers_seen == [] and sum(triton.hits.values()) == 0


def test_deeply_nested_json_is_400_not_500(config: GatewayConfig, key: dict[str, str], triton: FakeTriton) -> None:
    roomy = replace(config, max_body_bytes=64 * 1024)  # room for 10,000 nested lists
    deep_inputs = b'{"inputs": ' + DEEP + b"}"
    head = b'{"inputs": [' + DEEP + b"]}"
    responses = post_all(roomy, [
        ("/v2/models/m/infer", DEEP, {**key, "Content-Type": "application/json"}),
        ("/v2/models/m/infer", deep_inputs, key),
        ("/v2/models/m/infer", head + b"\x00\x01", {**key, "Inference-Header-Content-Length": str(len(head))}),
        ("/v2/models/m/infer", gzip.compress(deep_inputs), {**key, "Content-Encoding": "gzip"}),
        ("/v1/embeddings", DEEP, key),
        ("/v1/embeddings", b'{"model": "emb", "input": ' + DEEP + b"}", key),
        ("/v1/chat/completions", DEEP, key),
        ("/v1/chat/completions", b'{"model": "chat", "messages": ' + DEEP + b"}", key),
    ])
    assert [r.status_code for r in responses] == [400] * 8, [r.text[:200] for r in responses]
    for r in responses[:4]:
        assert r.json() == {"error": "malformed JSON: nested deeper than the gateway accepts"}
    for r in responses[4:]:
        error = r.json()["error"]
        assert "nested deeper than the gateway accepts" in error["message"]
        assert error["type"] == "invalid_request_error"
    assert triton.headers_seen == [] and sum(triton.hits.values()) == 0


# -- read_body over a hand-built request -------------------------------------------------------
def chunked(body: bytes, size: int) -> list[Message]:
    parts = [body[i:i + size] for i in range(0, len(body), size)] or [b""]
    return [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]


def request_over(messages: list[Message], headers: dict[str, str] | None = None) -> Request:
    """A POST whose ``receive()`` yields ``messages``, then (as a server would) ``http.disconnect``."""
    pending = list(messages)

    async def receive() -> Message:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "path": "/v2/models/m/infer", "query_string": b"",
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}
    return Request(scope, receive)


@pytest.mark.parametrize("headers", [{}, {"content-encoding": "gzip"}])
def test_a_client_gone_mid_body_is_499(headers: dict[str, str]) -> None:
    body = gzip.compress(PLAIN) if headers else PLAIN
    first = {"type": "http.request", "body": body[:20], "more_body": True}
    with pytest.raises(GatewayError) as caught:
        run(read_body(request_over([first, {"type": "http.disconnect"}], headers), 4096))
    assert caught.value.status == 499
    assert caught.value.message == "client closed the request before its body was read"


@pytest.mark.parametrize("encoding", ["identity", "gzip", "deflate"])
def test_read_body_returns_the_plain_body_whole_across_chunks(encoding: str) -> None:
    headers = {"content-encoding": encoding}
    packed = {"identity": PLAIN, "gzip": gzip.compress(PLAIN), "deflate": deflate(PLAIN)}[encoding]
    assert run(read_body(request_over(chunked(packed, 3), headers), 4096)) == PLAIN
    assert run(read_body(request_over(chunked(b"", 1), headers), 4096)) == b""  # nothing sent: nothing to inflate
    exact = max(len(PLAIN), len(packed))  # the limit met exactly (by the plain or by the sent bytes)
    assert run(read_body(request_over(chunked(packed, 3), headers), exact)) == PLAIN
    with pytest.raises(GatewayError) as caught:
        run(read_body(request_over(chunked(packed, 3), headers), len(PLAIN) - 1))
    assert caught.value.status == 413


@pytest.mark.parametrize(("encoding", "stored"), [("gzip", gzip.compress(PLAIN, compresslevel=0)),
                                                  ("deflate", zlib.compress(PLAIN, 0))])
def test_the_wire_limit_holds_for_compressed_bytes_too(encoding: str, stored: bytes) -> None:
    assert len(stored) > len(PLAIN)  # not compressed: larger than the plain body
    with pytest.raises(GatewayError) as caught:  # within the limit once inflated, over it on the wire
        run(read_body(request_over(chunked(stored, 7), {"content-encoding": encoding}), len(PLAIN)))
    assert caught.value.status == 413 and "after decompression" not in caught.value.message
    with pytest.raises(GatewayError) as caught:  # refused from Content-Length before reading
        run(read_body(request_over([], {"content-encoding": encoding, "content-length": str(len(stored))}),
                      len(PLAIN)))
    assert caught.value.message == f"request body of {len(stored)} bytes is over the gateway's limit of {len(PLAIN)} bytes"
