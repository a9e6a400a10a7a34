"""Triton's generate extension in, OpenAI chat completions out.

An LLM deployment is a decoupled python-backend model (see the LLM serving contract in the README): the gateway
always calls ``POST /v2/models/<deployment>/generate_stream`` with ``{"messages_json", "params_json"}`` and reads
server-sent events ``data: {"text", "finish_reason", "prompt_tokens", "completion_tokens", ...}``, one per
generated chunk and a final one with ``finish_reason`` set (Triton answers ``/generate`` of a decoupled model only
when it sends exactly one response, so non-streaming calls aggregate the stream here). Closing a
:class:`GenerateStream` closes its connection to Triton, which cancels the generation.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from modelops.serving.gateway.errors import GatewayError
from modelops.serving.gateway.proxy import Upstream, call_upstream, triton_error

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True)
class GenerateEvent:
    """One response of the LLM contract."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class GenerateStream:
    """An open ``generate_stream`` request to ``deployment``; iterate :meth:`events`, always :meth:`close`."""

    def __init__(self, response: aiohttp.ClientResponse, deployment: str):
        self.response = response
        self.deployment = deployment
        self.finished = False

    @classmethod
    async def open(cls, session: aiohttp.ClientSession, deployment: str, body: bytes,
                   read_timeout_s: float) -> GenerateStream:
        """Send the request; Triton's refusal before any event is raised as the gateway's error.

        Raises:
            GatewayError: 503 (Triton unreachable, deployment not served), 504 (no answer in time), 400 (Triton
                refused the inputs), 502 (Triton failed).
        """
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5.0, sock_read=read_timeout_s)
        headers = {"content-type": "application/json", "accept": "text/event-stream"}
        response = await call_upstream(
            lambda: session.post(f"/v2/models/{deployment}/generate_stream", data=body, headers=headers,
                                 timeout=timeout),
            deployment,
        )
        if response.status != 200:
            try:
                content = await response.read()
            finally:
                response.release()
            raise triton_error(Upstream(response.status, response.headers, content, response.reason or ""),
                               deployment)
        return cls(response, deployment)

    async def events(self) -> AsyncIterator[GenerateEvent]:
        """The model's responses, until the one with ``finish_reason``.

        Raises:
            GatewayError: an error event (400 before any text, as Triton passes the model's refusal of its inputs;
                502 later), a stream cut before its final response (502), or no data in time (504).
        """
        seen = 0
        try:
            async for raw in self.response.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue  # blank separators, comments, other SSE fields
                doc = _event(line[5:].strip(), self.deployment)
                if "error" in doc:
                    status = 400 if seen == 0 else 502
                    raise GatewayError(status, f"{'' if status == 400 else 'the model failed: '}{doc['error']}",
                                       self.deployment)
                seen += 1
                event = GenerateEvent(
                    text=_str(doc.get("text")),
                    finish_reason=_str(doc.get("finish_reason")),
                    prompt_tokens=_int(doc.get("prompt_tokens")),
                    completion_tokens=_int(doc.get("completion_tokens")),
                )
                yield event
                if event.finish_reason:
                    self.finished = True
                    return
        except TimeoutError:
            raise GatewayError(504, f"deployment {self.deployment!r} sent nothing in time", self.deployment) from None
        except aiohttp.ClientError as exc:
            raise GatewayError(502, f"the stream of deployment {self.deployment!r} broke: {type(exc).__name__}",
                               self.deployment) from None
        raise GatewayError(502, f"the stream of deployment {self.deployment!r} ended without a final response",
                           self.deployment)

    def close(self) -> None:
        """Release the connection when the stream ended, else close it (Triton stops generating)."""
        if self.finished:
            self.response.release()
        else:
            self.response.close()


def _event(data: bytes, deployment: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError:
        raise GatewayError(502, f"deployment {deployment!r} sent an event that is not JSON", deployment) from None
    if not isinstance(doc, dict):
        raise GatewayError(502, f"deployment {deployment!r} sent an event that is not a JSON object", deployment)
    return doc


def _str(value: Any) -> str:
    if isinstance(value, list):  # Triton gives one-element tensors as scalars; a list is taken all the same
        return "".join(str(v) for v in value)
    return "" if value is None else str(value)


def _int(value: Any) -> int:
    if isinstance(value, list):
        value = value[0] if value else 0
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


class Completion:
    """One chat completion being answered: its id, time and the translation of events into OpenAI objects."""

    def __init__(self, model: str):
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.text: list[str] = []
        self.finish_reason: str | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def add(self, event: GenerateEvent) -> None:
        """Account for one event."""
        self.text.append(event.text)
        self.prompt_tokens = max(self.prompt_tokens, event.prompt_tokens)
        self.completion_tokens = max(self.completion_tokens, event.completion_tokens)
        if event.finish_reason:
            self.finish_reason = event.finish_reason

    @property
    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    def message(self) -> dict[str, Any]:
        """The ``chat.completion`` object of everything added."""
        return {
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(self.text)},
                         "logprobs": None, "finish_reason": self.finish_reason}],
            "usage": self.usage,
        }

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None, *, include_usage: bool = False,
              usage: bool = False) -> bytes:
        """One SSE ``chat.completion.chunk``; ``usage=True`` is the final usage chunk (no choices)."""
        doc: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                               "model": self.model}
        doc["choices"] = [] if usage else [{"index": 0, "delta": delta, "logprobs": None,
                                            "finish_reason": finish_reason}]
        if include_usage:
            doc["usage"] = self.usage if usage else None
        return sse(doc)


def sse(doc: dict[str, Any]) -> bytes:
    """``data: <json>`` and the blank line that ends an event."""
    return b"data: " + json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
