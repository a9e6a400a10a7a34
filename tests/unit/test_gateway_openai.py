"""The gateway's OpenAI-compatible API driven by the official ``openai`` client over real HTTP.

The gateway runs on uvicorn on a free 127.0.0.1 port; Triton is the real-HTTP fake of :mod:`tests.unit.gateway_upstream`
(an embedder, and two chat deployments behind the generate extension), MLflow a real-HTTP fake of
``registered-models/get``. Routes files in a temp directory, keys in a temp SQLite store.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from starlette.applications import Starlette

from modelops.serving.gateway import GatewayConfig, create_app
from modelops.serving.gateway.keys import KeyStore
from tests.unit.gateway_upstream import FakeMlflow, FakeTriton, fake_embedding
from tests.unit.test_gateway_app import write_routes

LLM_A, LLM_B, EMB = "smollm2_chat--v1-baseline", "smollm2_chat--v1-ort_int4", "minilm_embedder--v1-ort_fp32"
DIM = 48
CHAT = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "hello there"}]


@pytest.fixture
def triton() -> Iterator[FakeTriton]:
    fake = FakeTriton({"m--v1"}, llms={LLM_A, LLM_B}, embedders={EMB: DIM}).start()
    yield fake
    fake.stop()


@pytest.fixture
def mlflow() -> Iterator[FakeMlflow]:
    fake = FakeMlflow({
        "smollm2_chat": ("SmolLM2-135M-Instruct, a small chat model.", {"modelops.task": "chat"}),
        "minilm_embedder": ("all-MiniLM-L6-v2 sentence embeddings.", {"modelops.task": "embedding"}),
    }).start()
    yield fake
    fake.stop()


@pytest.fixture
def config(tmp_path: Path, triton: FakeTriton, mlflow: FakeMlflow) -> GatewayConfig:
    routes = tmp_path / "routes"
    routes.mkdir()
    write_routes(routes, "smollm2_chat", {LLM_A: 100})
    write_routes(routes, "minilm_embedder", {EMB: 100})
    write_routes(routes, "m", {"m--v1": 100})  # routed, not in MLflow
    write_routes(routes, "empty", {})  # known, nothing to serve it: not listed
    return GatewayConfig(triton_url=triton.url, routes_uri=str(routes), keys_db=tmp_path / "keys.db",
                         max_body_bytes=64 * 1024, routes_poll_s=0.1, mlflow_url=mlflow.url)


@pytest.fixture
def keys(config: GatewayConfig) -> dict[str, str]:
    store = KeyStore(config.keys_db)
    return {name: store.create(name, models)[1] for name, models in
            (("all", "*"), ("chat", "smollm*,empty"), ("kserve", "m"))}


@contextmanager
def serve(config: GatewayConfig) -> Iterator[tuple[str, Starlette]]:
    """The gateway on uvicorn (httptools, as in production) in a thread; its base URL and app."""
    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, http="httptools", lifespan="on",
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the gateway did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def gateway(config: GatewayConfig) -> Iterator[tuple[str, Starlette]]:
    with serve(config) as running:
        yield running


def client(gateway: tuple[str, Starlette], key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway[0]}/v1", api_key=key, max_retries=0, timeout=10)


def metrics(gateway: tuple[str, Starlette]) -> str:
    return httpx.get(f"{gateway[0]}/metrics").text


def test_models_lists_the_routed_models_a_key_may_use_with_mlflow_info(
    gateway: tuple[str, Starlette], keys: dict[str, str], mlflow: FakeMlflow,
) -> None:
    listed = {m.id: m for m in client(gateway, keys["all"]).models.list()}
    assert sorted(listed) == ["m", "minilm_embedder", "smollm2_chat"]  # "empty" has nothing to serve it
    chat = listed["smollm2_chat"]
    assert (chat.object, chat.owned_by, chat.created) == ("model", "modelops", 1700000000)
    assert chat.model_extra == {"description": "SmolLM2-135M-Instruct, a small chat model.", "task": "chat"}
    assert listed["minilm_embedder"].model_extra["task"] == "embedding"
    assert listed["m"].model_extra == {} and listed["m"].created == 0  # not registered: no info, still listed
    assert [m.id for m in client(gateway, keys["chat"]).models.list()] == ["smollm2_chat"]
    assert [m.id for m in client(gateway, keys["kserve"]).models.list()] == ["m"]
    assert client(gateway, keys["chat"]).models.retrieve("smollm2_chat").model_extra["task"] == "chat"
    with pytest.raises(openai.NotFoundError):
        client(gateway, keys["chat"]).models.retrieve("minilm_embedder")
    assert mlflow.calls["smollm2_chat"] == 1  # cached: five lookups, one MLflow request


def test_embeddings_float_and_base64_batched_by_64(
    gateway: tuple[str, Starlette], keys: dict[str, str], triton: FakeTriton,
) -> None:
    api = client(gateway, keys["all"])
    raw = api.embeddings.with_raw_response.create(model="minilm_embedder", input=["a b c", "d"])  # base64 by default
    assert raw.headers["x-modelops-deployment"] == EMB
    result = raw.parse()
    assert [d.index for d in result.data] == [0, 1]
    for text, item in zip(["a b c", "d"], result.data, strict=True):
        assert item.embedding == pytest.approx(fake_embedding(text, DIM), abs=1e-6)
    assert (result.usage.prompt_tokens, result.usage.total_tokens) == (4, 4)  # whitespace words
    floats = api.embeddings.create(model="minilm_embedder", input="one text", encoding_format="float")
    assert floats.data[0].embedding == fake_embedding("one text", DIM)
    hits = triton.hits[EMB]
    many = api.embeddings.create(model="minilm_embedder", input=[f"text {i}" for i in range(70)])
    assert len(many.data) == 70 and many.data[69].embedding == pytest.approx(fake_embedding("text 69", DIM), abs=1e-6)
    assert triton.hits[EMB] - hits == 2  # 64 + 6
    with pytest.raises(openai.BadRequestError, match="is not a text embedder"):
        api.embeddings.create(model="smollm2_chat", input="x")
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        api.embeddings.create(model="minilm_embedder", input="x", dimensions=DIM + 1)
    assert f'modelops_gateway_requests_total{{code="200",deployment="{EMB}",model="minilm_embedder"}} 3.0' in metrics(
        gateway)


def test_chat_completion_aggregates_the_stream_and_forwards_params(
    gateway: tuple[str, Starlette], keys: dict[str, str], triton: FakeTriton,
) -> None:
    api = client(gateway, keys["chat"])
    answer = api.chat.completions.create(model="smollm2_chat", messages=CHAT, max_tokens=50, temperature=0,
                                         top_p=0.9, stop="zzz", seed=7)
    assert answer.object == "chat.completion" and answer.model == "smollm2_chat"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == "You said: hello there"
    assert answer.choices[0].finish_reason == "stop"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (5, 4, 9)
    sent = triton.generate_bodies[-1]
    assert json.loads(sent["messages_json"]) == CHAT
    assert json.loads(sent["params_json"]) == {"max_tokens": 50, "temperature": 0, "top_p": 0.9, "seed": 7,
                                               "stop": ["zzz"]}
    short = api.chat.completions.create(model="smollm2_chat", messages=CHAT, max_tokens=2)
    assert (short.choices[0].message.content, short.choices[0].finish_reason) == ("You said:", "length")
    stopped = api.chat.completions.create(
        model="smollm2_chat", stop=["there"],
        messages=[{"role": "user", "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "there"}]}])
    assert stopped.choices[0].message.content == "You said: hello "
    assert json.loads(triton.generate_bodies[-1]["params_json"]) == {"stop": ["there"]}  # only what the client set


def test_chat_streams_chunks_with_role_finish_reason_usage_and_done(
    gateway: tuple[str, Starlette], keys: dict[str, str], config: GatewayConfig,
) -> None:
    api = client(gateway, keys["all"])
    chunks = list(api.chat.completions.create(model="smollm2_chat", messages=CHAT, stream=True,
                                              stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "You said: hello there"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)
    body = {"model": "smollm2_chat", "messages": CHAT, "stream": True}
    with httpx.stream("POST", f"{gateway[0]}/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {keys['all']}"}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]" and '"usage"' not in events[0]
    # weighted routing as on the KServe side
    write_routes(Path(config.routes_uri), "smollm2_chat", {LLM_A: 50, LLM_B: 50}, revision=2)
    time.sleep(0.5)
    seen = Counter(api.chat.completions.with_raw_response.create(model="smollm2_chat", messages=CHAT).headers[
        "x-modelops-deployment"] for _ in range(10))
    assert seen == {LLM_A: 5, LLM_B: 5}


def test_errors_in_openai_shape(gateway: tuple[str, Starlette], keys: dict[str, str], triton: FakeTriton) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        client(gateway, "mo_0123456789ab_" + "s" * 43).models.list()
    assert info.value.code == "invalid_api_key" and info.value.body["type"] == "invalid_request_error"
    api = client(gateway, keys["all"])
    with pytest.raises(openai.NotFoundError) as found:
        api.chat.completions.create(model="nope", messages=CHAT)
    assert (found.value.code, found.value.param) == ("model_not_found", "model")
    with pytest.raises(openai.PermissionDeniedError):
        client(gateway, keys["chat"]).embeddings.create(model="minilm_embedder", input="x")
    bad: list[tuple[dict[str, Any], str]] = [
        ({"temperature": 5}, "temperature"), ({"messages": []}, "messages"), ({"n": 2}, "n"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         "messages[0].content"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ]
    for change, param in bad:
        with pytest.raises(openai.BadRequestError) as refused:
            api.chat.completions.create(**{"model": "smollm2_chat", "messages": CHAT, **change})
        assert refused.value.param == param, (change, refused.value.body)
    with pytest.raises(openai.BadRequestError, match="token arrays"):
        api.embeddings.create(model="minilm_embedder", input=[[1, 2, 3]])
    with pytest.raises(openai.APIStatusError) as large:
        api.embeddings.create(model="minilm_embedder", input="x" * 70_000)
    assert large.value.status_code == 413 and large.value.code == "request_too_large"
    with pytest.raises(openai.InternalServerError) as empty:
        client(gateway, keys["chat"]).chat.completions.create(model="empty", messages=CHAT)
    assert empty.value.status_code == 503
    with pytest.raises(openai.InternalServerError) as failed:  # the model failed after its first word
        api.chat.completions.create(model="smollm2_chat", messages=[{"role": "user", "content": "fail"}])
    assert failed.value.status_code == 502 and "out of memory" in failed.value.message
    with pytest.raises(openai.APIError, match="out of memory"):  # the same, streamed: the error is in the stream
        list(api.chat.completions.create(model="smollm2_chat", stream=True,
                                         messages=[{"role": "user", "content": "fail"}]))
    r = httpx.post(f"{gateway[0]}/v1/chat/completions", content=b"{not json",
                   headers={"Authorization": f"Bearer {keys['all']}"})
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.get(f"{gateway[0]}/v1/completions/unknown")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"
    assert triton.generate_bodies and all("fail" in b["messages_json"] for b in triton.generate_bodies)
    text = metrics(gateway)
    assert f'modelops_gateway_requests_total{{code="502",deployment="{LLM_A}",model="smollm2_chat"}} 2.0' in text
    assert 'modelops_gateway_requests_total{code="404",deployment="",model=""} 1.0' in text  # no probed names


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_disconnect_cancels_the_upstream_stream(
    gateway: tuple[str, Starlette], keys: dict[str, str], triton: FakeTriton, stream: bool,
) -> None:
    triton.chunk_delay_s = 0.1
    long = " ".join(f"w{i}" for i in range(100))  # 10 s of streaming
    body = {"model": "smollm2_chat", "messages": [{"role": "user", "content": long}], "stream": stream}
    started = time.monotonic()
    with httpx.Client(timeout=httpx.Timeout(10, read=0.5 if not stream else 10)) as http:
        if stream:
            with http.stream("POST", f"{gateway[0]}/v1/chat/completions", json=body,
                             headers={"Authorization": f"Bearer {keys['all']}"}) as r:
                lines = r.iter_lines()
                assert '"role":"assistant"' in next(line for line in lines if line)
        else:
            with pytest.raises(httpx.ReadTimeout):
                http.post(f"{gateway[0]}/v1/chat/completions", json=body,
                          headers={"Authorization": f"Bearer {keys['all']}"})
    assert triton.stream_aborted.wait(5), "the upstream stream was not closed"
    assert time.monotonic() - started < 5
    in_flight = gateway[1].state.gateway.in_flight
    deadline = time.monotonic() + 2
    while in_flight.count(LLM_A) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert in_flight.count(LLM_A) == 0
    assert f'modelops_gateway_requests_total{{code="499",deployment="{LLM_A}",model="smollm2_chat"}} 1.0' in metrics(
        gateway)


def test_a_key_revoked_during_a_stream_ends_it_with_a_401_event(
    gateway: tuple[str, Starlette], config: GatewayConfig, triton: FakeTriton,
) -> None:
    store = KeyStore(config.keys_db)
    _, key = store.create("streamer", "smollm*")
    triton.chunk_delay_s = 0.1
    long = " ".join(f"w{i}" for i in range(100))  # 10 s of streaming
    body = {"model": "smollm2_chat", "messages": [{"role": "user", "content": long}], "stream": True}
    started = time.monotonic()
    with httpx.Client(timeout=10) as http, http.stream(
            "POST", f"{gateway[0]}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        assert '"role":"assistant"' in next(line for line in lines if line)
        store.revoke("streamer")
        rest = [line for line in lines if line]
    assert time.monotonic() - started < 5, "the stream went on after the revocation"
    assert "[DONE]" not in rest[-1] and json.loads(rest[-1].removeprefix("data: "))["error"]["message"] == (
        "API key 'streamer' was revoked during the request")
    assert triton.stream_aborted.wait(5)
    assert gateway[1].state.gateway.auth.quotas.total_in_flight == 0


def test_caps_of_the_gateway_and_of_the_registered_model(
    config: GatewayConfig, triton: FakeTriton, mlflow: FakeMlflow,
) -> None:
    from dataclasses import replace

    from modelops.serving.gateway.caps import Caps

    mlflow.models["smollm2_chat"][1]["modelops.max_tokens"] = "64"  # the model's own cap, below the gateway's
    capped = replace(config, caps=Caps(max_tokens=1000, max_prompt_chars=200, max_input_chars=50))
    store = KeyStore(config.keys_db)
    _, key = store.create("capped", "*")
    with serve(capped) as running:
        api = client(running, key)
        with pytest.raises(openai.BadRequestError) as huge:
            api.chat.completions.create(model="smollm2_chat", messages=CHAT, max_tokens=10**9)
        assert huge.value.body["message"] == "invalid 'max_tokens': 1000000000 is over model 'smollm2_chat''s " \
                                             "cap of 64 tokens" and huge.value.body["param"] == "max_tokens"
        assert api.chat.completions.create(model="smollm2_chat", messages=CHAT, max_tokens=64).choices
        with pytest.raises(openai.BadRequestError, match="cap of 200"):
            api.chat.completions.create(model="smollm2_chat", messages=[{"role": "user", "content": "x" * 201}])
        with pytest.raises(openai.BadRequestError, match=r"invalid 'input\[1\]': 51 characters .* cap of 50"):
            api.embeddings.create(model="minilm_embedder", input=["short", "y" * 51])
        assert api.embeddings.create(model="minilm_embedder", input=["y" * 50]).data


def test_a_chat_answer_past_the_stream_deadline_ends_with_504(
    config: GatewayConfig, keys: dict[str, str], triton: FakeTriton,
) -> None:
    from dataclasses import replace

    from modelops.serving.gateway.caps import Caps

    triton.chunk_delay_s = 0.1
    long = " ".join(f"w{i}" for i in range(100))  # 10 s of streaming
    body = {"model": "smollm2_chat", "messages": [{"role": "user", "content": long}], "stream": True}
    with serve(replace(config, caps=Caps(stream_deadline_s=1.5))) as running, httpx.Client(timeout=10) as http:
        with http.stream("POST", f"{running[0]}/v1/chat/completions", json=body,
                         headers={"Authorization": f"Bearer {keys['all']}"}) as r:
            lines = [line for line in r.iter_lines() if line]
        error = json.loads(lines[-1].removeprefix("data: "))["error"]
        assert "1.5 s deadline" in error["message"] and "[DONE]" not in lines[-1]
        assert triton.stream_aborted.wait(5)
        aggregated = http.post(f"{running[0]}/v1/chat/completions", json={**body, "stream": False},
                               headers={"Authorization": f"Bearer {keys['all']}"})
        assert aggregated.status_code == 504 and "deadline" in aggregated.json()["error"]["message"]
