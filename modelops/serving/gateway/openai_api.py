"""The gateway's OpenAI-compatible API: ``/v1/models``, ``/v1/chat/completions``, ``/v1/embeddings``.

Same keys, grants, weighted routing, in-flight counters and metrics as the KServe v2 side (the ``model`` label is
the public model name), errors in OpenAI's shape (:mod:`.openai_schema`). Chat completions go to the routed LLM
deployment's ``generate_stream`` (:mod:`.llm_stream`) and come back as SSE chunks ending in ``data: [DONE]`` or as
one aggregated ``chat.completion``; a client that disconnects closes the upstream stream, which stops the
generation (counted as code 499, not a server error). Embeddings go to the routed embedder's KServe infer with the
BYTES input and FP32 output named by the deployment's metadata (read once per deployment: deployments are
immutable); ``usage`` counts whitespace-separated words, not model tokens.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from modelops.serving.gateway.caps import Caps
from modelops.serving.gateway.errors import GatewayError
from modelops.serving.gateway.keys import ApiKey
from modelops.serving.gateway.llm_stream import DONE, SSE_HEADERS, Completion, GenerateEvent, GenerateStream
from modelops.serving.gateway.openai_schema import (
    ChatCompletionRequest,
    EmbeddingRequest,
    OpenAIError,
    error_body,
    error_response,
    parse_body,
)
from modelops.serving.gateway.proxy import read_body, send, triton_error
from modelops.serving.gateway.routing import RouteTable

if TYPE_CHECKING:
    from modelops.serving.gateway.app import Gateway

T = TypeVar("T")
B = TypeVar("B", bound=BaseModel)
EMBED_BATCH = 64  # texts per infer request (the text-embedding recipe serves batches of up to 64)
CLIENT_CLOSED = 499  # nginx's code for a client that went away; not a 5xx, so rollouts do not count it


@dataclass(frozen=True)
class EmbedderIO:
    """Names of a text embedder deployment's BYTES input and FP32 output; ``batched`` when dims lead with -1."""

    input: str
    output: str
    batched: bool


KEY_RECHECK_S = 1.0  # how often a stream checks that its key was not revoked meanwhile


class _ClosingStream(StreamingResponse):
    """A streaming response that runs ``on_close`` however it ends (done, client gone, cancelled)."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None], headers: dict[str, str]):
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


class OpenAIApi:
    """The ``/v1`` endpoints on a :class:`~modelops.serving.gateway.app.Gateway`."""

    def __init__(self, gateway: Gateway):
        self.gw = gateway
        self._embedders: dict[str, EmbedderIO] = {}

    def routes(self) -> list[Route]:
        """The routes to add to the app (the catch-all last)."""
        return [
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/v1/models/{model:path}", self.get_model, methods=["GET"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/embeddings", self.embeddings, methods=["POST"]),
            Route("/v1/{path:path}", self.not_found, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
        ]

    # -- shared steps ---------------------------------------------------------------------------
    def _fail(self, err: GatewayError, model: str, deployment: str, started: float | None = None) -> Response:
        forwarded = time.perf_counter() - started if deployment and started is not None else None
        self.gw.metrics.observe(model, deployment, err.status, forwarded)
        return error_response(err, {"x-modelops-deployment": deployment} if deployment else None)

    async def _key(self, request: Request) -> ApiKey:
        return await self.gw.auth.authenticate(request.headers.get("authorization"), request)

    async def _body(self, request: Request, schema: type[B]) -> tuple[ApiKey, B]:
        """Authenticate first (no body is read for a bad key), then read and validate the body."""
        key = await self._key(request)
        body = await read_body(request, self.gw.config.max_body_bytes)
        return key, parse_body(schema, body)

    def _routed(self, key: ApiKey, model: str) -> RouteTable:
        table = self.gw.watcher.get(model)
        self.gw.auth.authorize(key, model, table is not None)
        assert table is not None
        return table

    async def _caps(self, model: str) -> Caps:
        """The model's caps: the gateway's, with the registered model's own tags (cached lookups)."""
        info = await self.gw.registry.get(model)
        return self.gw.config.caps.for_model(info.caps if info else None)

    def _visible(self, key: ApiKey) -> list[str]:
        """Public models the key may use that have a deployment to serve them."""
        return sorted(m for m, t in self.gw.watcher.tables.items() if t.deployments and key.grants(m))

    async def _model_object(self, model: str) -> dict[str, Any]:
        info = await self.gw.registry.get(model)
        doc: dict[str, Any] = {"id": model, "object": "model", "created": (info.created if info else None) or 0,
                               "owned_by": "modelops"}
        if info is not None:
            if info.description:
                doc["description"] = info.description
            if info.task:
                doc["task"] = info.task
        return doc

    # -- models ---------------------------------------------------------------------------------
    async def list_models(self, request: Request) -> Response:
        """``GET /v1/models``: the routed models the key is granted, with MLflow descriptions when known."""
        try:
            key = await self._key(request)
        except GatewayError as err:
            return self._fail(err, "", "")
        models = self._visible(key)
        data = await asyncio.gather(*(self._model_object(m) for m in models))
        self.gw.metrics.observe("", "", 200)
        return JSONResponse({"object": "list", "data": list(data)})

    async def get_model(self, request: Request) -> Response:
        """``GET /v1/models/{model}``: one model (404 unless the key may use it and it is routed)."""
        model = request.path_params["model"]
        try:
            key = await self._key(request)
            if model not in self._visible(key):
                raise OpenAIError(404, f"The model '{model}' does not exist or you do not have access to it.")
        except GatewayError as err:
            return self._fail(err, "", "")
        self.gw.metrics.observe(model, "", 200)
        return JSONResponse(await self._model_object(model))

    async def not_found(self, request: Request) -> Response:
        """Any other ``/v1`` path: 404 in OpenAI's shape."""
        return error_response(OpenAIError(404, f"unknown endpoint {request.method} {request.url.path}",
                                          code="unknown_url"))

    # -- embeddings -----------------------------------------------------------------------------
    async def embeddings(self, request: Request) -> Response:
        """``POST /v1/embeddings``."""
        started = time.perf_counter()
        known, deployment = "", ""
        try:
            key, body = await self._body(request, EmbeddingRequest)
            table = self._routed(key, body.model)
            known = body.model
            (await self._caps(body.model)).check_embeddings(body)
            deployment = self.gw._pick(table, request)
            with self._tracked(known, deployment):
                io = await self._embedder_io(deployment, body.model)
                vectors = await self._embed(io, deployment, body.texts)
            if body.dimensions is not None and body.dimensions != len(vectors[0]):
                raise OpenAIError(400, f"model {body.model!r} gives {len(vectors[0])} dimensions, not "
                                       f"{body.dimensions}", param="dimensions", deployment=deployment)
        except GatewayError as err:
            return self._fail(err, known, deployment, started)
        words = sum(len(t.split()) for t in body.texts)
        data = [{"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
                for i, v in enumerate(vectors)]
        self.gw.metrics.observe(known, deployment, 200, time.perf_counter() - started)
        return JSONResponse({"object": "list", "data": data, "model": body.model,
                             "usage": {"prompt_tokens": words, "total_tokens": words}},
                            headers={"x-modelops-deployment": deployment})

    def _tracked(self, model: str, deployment: str) -> ExitStack:
        """In-flight accounting (counter for rollouts and the gauge) for the duration of a ``with``."""
        stack = ExitStack()
        stack.enter_context(self.gw.in_flight.track(deployment))
        gauge = self.gw.metrics.in_flight.labels(model, deployment)
        gauge.inc()
        stack.callback(gauge.dec)
        return stack

    async def _embedder_io(self, deployment: str, model: str) -> EmbedderIO:
        io = self._embedders.get(deployment)
        if io is not None:
            return io
        response = await send(self.gw.client, "GET", f"/v2/models/{deployment}", deployment)
        if response.status_code != 200:
            raise triton_error(response, deployment)
        meta = json.loads(response.content)
        text_in = next((t for t in meta.get("inputs", []) if t.get("datatype") == "BYTES"), None)
        vector_out = next((t for t in meta.get("outputs", []) if t.get("datatype") == "FP32"), None)
        if text_in is None or vector_out is None:
            raise OpenAIError(400, f"model {model!r} is not a text embedder (no BYTES input and FP32 output)",
                              param="model", code="model_not_supported", deployment=deployment)
        shape = text_in.get("shape") or []
        io = EmbedderIO(text_in["name"], vector_out["name"], batched=len(shape) >= 2 and shape[0] == -1)
        self._embedders[deployment] = io
        return io

    async def _embed(self, io: EmbedderIO, deployment: str, texts: list[str]) -> list[list[float]]:
        groups = ([texts[i:i + EMBED_BATCH] for i in range(0, len(texts), EMBED_BATCH)] if io.batched
                  else [[t] for t in texts])
        limit = asyncio.Semaphore(self.gw.config.embed_parallel)  # one request never floods Triton's pool

        async def infer(group: list[str]) -> list[list[float]]:
            async with limit:
                return await self._infer(io, deployment, group)

        parts = await asyncio.gather(*(infer(group) for group in groups))
        return [row for part in parts for row in part]

    async def _infer(self, io: EmbedderIO, deployment: str, texts: list[str]) -> list[list[float]]:
        shape = [len(texts), 1] if io.batched else [1]
        body = json.dumps({"inputs": [{"name": io.input, "shape": shape, "datatype": "BYTES", "data": texts}],
                           "outputs": [{"name": io.output}]}).encode()
        response = await send(self.gw.client, "POST", f"/v2/models/{deployment}/infer", deployment, body,
                              {"content-type": "application/json"})
        if response.status_code != 200:
            raise triton_error(response, deployment)
        try:
            out = next(o for o in json.loads(response.content)["outputs"] if o["name"] == io.output)
            data = [float(x) for x in out["data"]]
            dim, rest = divmod(len(data), len(texts))
            if rest or not dim:
                raise ValueError(f"{len(data)} values for {len(texts)} texts")
            return [data[i * dim:(i + 1) * dim] for i in range(len(texts))]
        except (ValueError, KeyError, StopIteration, TypeError) as exc:
            raise GatewayError(502, f"deployment {deployment!r} answered an unexpected embedding: {exc}",
                               deployment) from None

    # -- chat completions -----------------------------------------------------------------------
    async def chat_completions(self, request: Request) -> Response:
        """``POST /v1/chat/completions``: streamed as SSE or aggregated into one ``chat.completion``."""
        started = time.perf_counter()
        known, deployment = "", ""
        tracking = ExitStack()
        stream: GenerateStream | None = None
        streaming = False  # True once the SSE response owns the upstream stream and the in-flight count
        try:
            key, body = await self._body(request, ChatCompletionRequest)
            table = self._routed(key, body.model)
            known = body.model
            caps = await self._caps(body.model)
            caps.check_chat(body)
            deployment = self.gw._pick(table, request)
            payload = json.dumps({"messages_json": body.messages_json(), "params_json": body.params_json()})
            tracking.enter_context(self._tracked(known, deployment))
            stream = await _until_disconnect(request, GenerateStream.open(
                self.gw.client, deployment, payload.encode(), self.gw.config.upstream_timeout_s))
            completion = Completion(body.model)
            events = stream.events()
            # the first event is awaited here, so an error before any text still gets its HTTP status
            completion.add(await _until_disconnect(request, anext(events)))
            if body.stream:
                streaming = True
                return self._sse(key, body, completion, stream, events, tracking, known, deployment, started,
                                 caps.stream_deadline_s)
            try:
                await _until_disconnect(request, asyncio.wait_for(_drain(events, completion), caps.stream_deadline_s))
            except TimeoutError:
                raise OpenAIError(504, f"the answer took longer than the gateway's {caps.stream_deadline_s:g} s "
                                       "deadline", deployment=deployment) from None
        except ClientGone:
            self.gw.metrics.observe(known, deployment, CLIENT_CLOSED, time.perf_counter() - started)
            return Response(status_code=CLIENT_CLOSED)
        except GatewayError as err:
            tracking.close()
            return self._fail(err, known, deployment, started)
        finally:
            if not streaming:
                if stream is not None:
                    stream.close()
                tracking.close()
        self.gw.metrics.observe(known, deployment, 200, time.perf_counter() - started)
        return JSONResponse(completion.message(), headers={"x-modelops-deployment": deployment})

    def _sse(self, key: ApiKey, body: ChatCompletionRequest, completion: Completion, stream: GenerateStream,
             events: AsyncIterator[GenerateEvent], tracking: ExitStack, model: str, deployment: str,
             started: float, deadline_s: float) -> Response:
        """The SSE answer; closing it (done, client gone) closes the upstream stream and counts the request. The
        key is checked again every second: revoked or expired, the stream ends with a 401 error event."""
        outcome = {"code": CLIENT_CLOSED}

        def on_close() -> None:
            stream.close()
            tracking.close()
            self.gw.metrics.observe(model, deployment, outcome["code"], time.perf_counter() - started)

        async def chunks() -> AsyncIterator[bytes]:
            usage = body.include_usage
            yield completion.chunk({"role": "assistant", "content": ""}, include_usage=usage)
            if completion.text[0]:
                yield completion.chunk({"content": completion.text[0]}, include_usage=usage)
            try:
                if not completion.finish_reason:
                    checked = time.monotonic()
                    async for event in events:
                        if time.monotonic() - checked >= KEY_RECHECK_S:
                            await self.gw.auth.check_active(key)
                            checked = time.monotonic()
                            if time.perf_counter() - started > deadline_s:
                                raise OpenAIError(504, f"the answer took longer than the gateway's {deadline_s:g} "
                                                       "s deadline", deployment=deployment)
                        completion.add(event)
                        if event.text:
                            yield completion.chunk({"content": event.text}, include_usage=usage)
            except GatewayError as err:  # the answer has begun: the error goes into the stream
                outcome["code"] = err.status
                yield b"data: " + json.dumps(error_body(err)).encode() + b"\n\n"
                return
            yield completion.chunk({}, completion.finish_reason, include_usage=usage)
            if usage:
                yield completion.chunk({}, include_usage=True, usage=True)
            yield DONE
            outcome["code"] = 200

        return _ClosingStream(chunks(), on_close, {**SSE_HEADERS, "x-modelops-deployment": deployment})


class ClientGone(Exception):
    """The client disconnected while a non-streaming answer was being generated."""


async def _drain(events: AsyncIterator[Any], completion: Completion) -> None:
    if completion.finish_reason:
        return
    async for event in events:
        completion.add(event)


async def _until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """The result of ``work``; if the client disconnects first, ``work`` is cancelled and :class:`ClientGone` raised."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task not in done:
        task.cancel()
        raise ClientGone()
    return task.result()


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":  # what the openai client asks for by default: little-endian float32 bytes
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector
