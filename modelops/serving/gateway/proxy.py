"""Request bodies in, Triton out: the size limit, decompression, the JSON check, and forwarding bytes to one deployment.

Bodies are bytes from end to end. A body sent with ``Content-Encoding: gzip`` (or ``x-gzip``, ``deflate``) is
inflated here, streaming and never past the size limit (a gzip bomb is stopped after ``limit + 1`` bytes of output),
and goes to Triton inflated, without ``Content-Encoding``; other encodings are refused with 415. The gateway parses
only the JSON inference header (the whole body for ``application/json``, the first ``Inference-Header-Content-Length``
bytes of the inflated body for the binary-tensor extension, as in Triton) to answer malformed or too deeply nested
JSON with 400 itself; binary tensors go to Triton untouched, and Triton's own refusal (a wrong shape or datatype) is
passed on as 400 with its message.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
from starlette.requests import ClientDisconnect, Request

from modelops.serving.gateway.errors import GatewayError

HEADER_LENGTH = "inference-header-content-length"
# Request headers Triton needs; nothing else goes upstream (never Authorization: the key stays here). Bodies go up
# inflated (never Content-Encoding) and answers come back uncompressed (the upstream client asks Triton for
# identity): the client's Accept-Encoding is not forwarded and no Content-Encoding is passed back.
FORWARDED_REQUEST = ("content-type", HEADER_LENGTH)
FORWARDED_RESPONSE = ("content-type", HEADER_LENGTH)
# What Triton answers when the deployment is not loaded (or not ready): a serving problem, not the client's.
_NOT_SERVED = re.compile(r"unknown model|is not ready|no available version|not loaded", re.IGNORECASE)
# Triton answers some malformed tensors with 500 (e.g. float data declared INT32): still the client's mistake.
_BAD_TENSOR = re.compile(r"^(\[request id: [^\]]*\] )?Unable to parse '")

# Content-Encoding -> zlib's wbits: gzip as Triton takes it, deflate as the zlib format (RFC 9110, and Triton)
_INFLATED = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
ACCEPTED_ENCODINGS = (*_INFLATED, "identity")
TOO_DEEP = "nested deeper than the gateway accepts"

T = TypeVar("T")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, inflated for ``Content-Encoding`` gzip, x-gzip or deflate; refused with 413 from
    ``Content-Length`` before reading, or while streaming (the bytes on the wire, and the inflated bytes).

    Raises:
        GatewayError: 413 over ``limit`` bytes (sent or inflated), 415 for another Content-Encoding, 400 for a
            ``Content-Length`` that is not a number or a corrupt compressed body, 499 when the client went away.
    """
    encoding = content_encoding(request)
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise GatewayError(400, f"invalid Content-Length {declared[:40]!r}") from None
        if size > limit:
            raise GatewayError(413, f"request body of {size} bytes is over the gateway's limit of {limit} bytes")
    inflater = Inflater(encoding, limit) if encoding != "identity" else None
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise GatewayError(413, f"request body is over the gateway's limit of {limit} bytes")
            if inflater is not None:
                inflater.feed(chunk)
            else:
                chunks.append(chunk)
    except ClientDisconnect:
        raise GatewayError(499, "client closed the request before its body was read") from None
    return inflater.finish() if inflater is not None else b"".join(chunks)


def content_encoding(request: Request) -> str:
    """The request's one Content-Encoding, lower-cased; ``identity`` when absent.

    Raises:
        GatewayError: 415 for an encoding the gateway does not inflate, or several of them.
    """
    value = ", ".join(v.strip() for v in request.headers.getlist("content-encoding") if v.strip()).lower()
    if not value:
        return "identity"
    if value not in ACCEPTED_ENCODINGS:
        raise GatewayError(415, f"Content-Encoding {value[:40]!r} is not supported: the gateway accepts one of "
                                f"{', '.join(ACCEPTED_ENCODINGS)}",
                           headers={"accept-encoding": ", ".join(ACCEPTED_ENCODINGS)})  # RFC 9110 15.5.16
    return value


class Inflater:
    """A gzip (concatenated members too) or zlib-format deflate body, inflated chunk by chunk, never producing more
    than ``limit + 1`` bytes: zlib's ``max_length`` caps each step's output, so a bomb is not inflated whole."""

    def __init__(self, encoding: str, limit: int):
        self.encoding, self.limit = encoding, limit
        self._wbits = _INFLATED[encoding]
        self._zlib = zlib.decompressobj(self._wbits)
        self._out: list[bytes] = []
        self._size = 0
        self._fed = False

    def feed(self, data: bytes) -> None:
        """Inflate the next compressed bytes.

        Raises:
            GatewayError: 413 once the output passes ``limit``, 400 for corrupt data.
        """
        while data:
            self._fed = True
            if self._zlib.eof:  # the next gzip member; deflate is one stream
                if self._wbits == zlib.MAX_WBITS:
                    raise GatewayError(400, f"corrupt {self.encoding} request body: data after the end of the stream")
                self._zlib = zlib.decompressobj(self._wbits)
            try:
                out = self._zlib.decompress(data, self.limit - self._size + 1)
            except zlib.error as exc:
                raise GatewayError(400, f"corrupt {self.encoding} request body: {exc}") from None
            self._size += len(out)
            if self._size > self.limit:  # also whenever input is left unconsumed: the output cap was hit
                raise GatewayError(413, f"request body is over the gateway's limit of {self.limit} bytes "
                                        "(after decompression)")
            self._out.append(out)
            data = self._zlib.unused_data if self._zlib.eof else b""

    def finish(self) -> bytes:
        """The inflated body (empty for an empty one).

        Raises:
            GatewayError: 400 for a compressed stream cut short.
        """
        if self._fed and not self._zlib.eof:
            raise GatewayError(400, f"corrupt {self.encoding} request body: the compressed stream ends early")
        return b"".join(self._out)


@dataclass(frozen=True)
class Upstream:
    """Triton's answer, read whole: status, headers and body bytes."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes
    reason_phrase: str = ""


def check_inference_header(body: bytes, headers: Mapping[str, str]) -> None:
    """400 unless the JSON part of an inference request (``body`` inflated by :func:`read_body`) is a JSON object;
    other bodies are Triton's to judge.

    Raises:
        GatewayError: 400 with the parser's message, or for JSON nested too deep to parse.
    """
    header_length = headers.get(HEADER_LENGTH)
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            raise GatewayError(400, f"invalid Inference-Header-Content-Length {header_length[:40]!r}") from None
        if not 0 < length <= len(body):
            raise GatewayError(400, f"Inference-Header-Content-Length {length} does not fit a body of {len(body)} "
                                    "bytes")
        head = body[:length]
    else:
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in ("", "application/json") and not media.endswith("+json"):
            return
        head = body
    try:
        doc = json.loads(head)
    except UnicodeDecodeError:
        raise GatewayError(400, "malformed JSON: the inference request is not UTF-8") from None
    except ValueError as exc:
        raise GatewayError(400, f"malformed JSON: {exc}") from None
    except RecursionError:
        raise GatewayError(400, f"malformed JSON: {TOO_DEEP}") from None
    if not isinstance(doc, dict):
        raise GatewayError(400, "malformed inference request: the JSON must be an object with 'inputs'")


def upstream_headers(request: Request) -> dict[str, str]:
    """The request headers Triton needs."""
    headers = request.headers
    return {name: headers[name] for name in FORWARDED_REQUEST if name in headers}


def response_headers(response: Upstream, deployment: str) -> dict[str, str]:
    """Triton's content headers plus ``X-ModelOps-Deployment``."""
    out = {name: response.headers[name] for name in FORWARDED_RESPONSE if name in response.headers}
    out["x-modelops-deployment"] = deployment
    return out


async def call_upstream(request: Callable[[], Awaitable[T]], deployment: str) -> T:
    """Await ``request()`` (one request to Triton for ``deployment``), mapping aiohttp's failures to the gateway's:
    a refused or lost connection is 503, a timeout 504.

    A pooled keep-alive connection that Triton closed meanwhile is retried once on a fresh one.

    Raises:
        GatewayError: 503 (Triton unreachable) or 504 (no answer in time).
    """
    for attempt in (1, 2):
        try:
            return await request()
        except aiohttp.ServerDisconnectedError:
            if attempt == 2:
                raise GatewayError(503, f"Triton closed the connection for deployment {deployment!r}",
                                   deployment) from None
        except aiohttp.ConnectionTimeoutError:
            raise GatewayError(503, "Triton is unreachable (connect timeout)", deployment) from None
        except TimeoutError:
            raise GatewayError(504, f"Triton did not answer in time for deployment {deployment!r}",
                               deployment) from None
        except aiohttp.ClientError as exc:
            raise GatewayError(503, f"Triton is unreachable: {type(exc).__name__}", deployment) from None
    raise AssertionError("unreachable")  # pragma: no cover


async def send(
    session: aiohttp.ClientSession, method: str, path: str, deployment: str, body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> Upstream:
    """One request to Triton on the pooled ``session`` (aiohttp: about 1 ms less per request than httpx here),
    read whole; failures as :func:`call_upstream` (503, 504, one retry of a closed keep-alive connection).

    Raises:
        GatewayError: 503 (Triton unreachable) or 504 (no answer in time).
    """

    async def request() -> Upstream:
        async with session.request(method, path, data=body or None, headers=headers) as response:
            content = await response.read()
            return Upstream(response.status, response.headers, content, response.reason or "")

    return await call_upstream(request, deployment)


def triton_error(response: Upstream, deployment: str) -> GatewayError:
    """The gateway's answer to a Triton error: 400 with Triton's message (also for a tensor Triton could not parse,
    which it answers with 500), 503 for a deployment not served, 502 for Triton's own failures."""
    try:
        message = str(json.loads(response.content).get("error", "")) or response.reason_phrase
    except (ValueError, AttributeError):
        message = response.content[:500].decode("utf-8", "replace") or response.reason_phrase
    if response.status_code in (400, 404) and _NOT_SERVED.search(message):
        return GatewayError(503, f"deployment {deployment!r} is not ready: {message}", deployment)
    if response.status_code < 500 or _BAD_TENSOR.match(message):
        return GatewayError(400 if response.status_code != 429 else 429, message, deployment)
    return GatewayError(502, f"Triton failed: {message}", deployment)
