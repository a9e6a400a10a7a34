"""Request bodies in, Triton out: the size limit, the JSON check, and forwarding bytes to one deployment.

Bodies are bytes from end to end. The gateway parses only the JSON inference header (the whole body for
``application/json``, the first ``Inference-Header-Content-Length`` bytes for the binary-tensor
extension) to answer malformed JSON with 400 itself; binary tensors and compressed bodies go to Triton
untouched, and Triton's own refusal (a wrong shape or datatype) is passed on as 400 with its message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
from starlette.requests import Request

from modelops.serving.gateway.errors import GatewayError

HEADER_LENGTH = "inference-header-content-length"
# Request headers Triton needs; nothing else goes upstream (never Authorization: the key stays here).
# Answers come back uncompressed (the upstream client asks Triton for identity): the client's Accept-Encoding is
# not forwarded and no Content-Encoding is passed back.
FORWARDED_REQUEST = ("content-type", HEADER_LENGTH, "content-encoding")
FORWARDED_RESPONSE = ("content-type", HEADER_LENGTH)
# What Triton answers when the deployment is not loaded (or not ready): a serving problem, not the client's.
_NOT_SERVED = re.compile(r"unknown model|is not ready|no available version|not loaded", re.IGNORECASE)
# Triton answers some malformed tensors with 500 (e.g. float data declared INT32): still the client's mistake.
_BAD_TENSOR = re.compile(r"^(\[request id: [^\]]*\] )?Unable to parse '")

T = TypeVar("T")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 from ``Content-Length`` before reading, or while streaming.

    Raises:
        GatewayError: 413 over ``limit`` bytes, 400 for a ``Content-Length`` that is not a number.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise GatewayError(400, f"invalid Content-Length {declared[:40]!r}") from None
        if size > limit:
            raise GatewayError(413, f"request body of {size} bytes is over the gateway's limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise GatewayError(413, f"request body is over the gateway's limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass(frozen=True)
class Upstream:
    """Triton's answer, read whole: status, headers and body bytes."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes
    reason_phrase: str = ""


def check_inference_header(body: bytes, headers: Mapping[str, str]) -> None:
    """400 unless the JSON part of an inference request is a JSON object; other bodies are Triton's to judge.

    Raises:
        GatewayError: 400 with the parser's message.
    """
    if headers.get("content-encoding"):
        return  # compressed: Triton decompresses and judges
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
