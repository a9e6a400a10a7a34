"""Streamed LLM benchmarks: time to first token, inter-token latency and output tokens/s per concurrency.

Two streaming clients yield :class:`StreamEvent` s, one per streamed chunk:

- :func:`triton_stream`: Triton's generate extension (``POST /v2/models/<deployment>/generate_stream``) on a
  decoupled LLM deployment (the LLM serving contract: ``messages_json`` + ``params_json`` in; ``text``,
  ``finish_reason``, ``completion_tokens`` out);
- :func:`openai_stream`: any OpenAI-compatible ``POST /v1/chat/completions`` with ``stream: true`` (the gateway,
  llama.cpp's server), usage requested with ``stream_options.include_usage``.

:func:`measure_level` runs ``requests`` requests over ``concurrency`` threads and reduces them to one point:

- TTFT: from sending the request to the first chunk with non-empty text;
- ITL: the gaps between later non-empty chunks; when the stream reports running ``completion_tokens`` and a chunk
  holds several tokens, its gap is divided by its tokens (one sample per token);
- output tokens: the last ``completion_tokens`` reported (Triton's running count, OpenAI's ``usage``), else the
  number of non-empty chunks;
- throughput: output tokens of all successful requests over the level's wall time.

A failed request (refused, an error event, a stream cut before its ``finish_reason``) is counted in ``errors``, never raised. ``throughput``,
``p50_ms`` and ``p99_ms`` (TTFT) make a point a benchmark PerfPoint, so selection picks the most tokens/s under a
TTFT bound. Only the standard library is used (``http.client``, no proxies): importable in every venv.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

Messages = list[dict[str, Any]]
StreamFn = Callable[[Messages, dict[str, Any]], Iterable["StreamEvent"]]
ERROR_BODY_CHARS = 300


@dataclass(frozen=True)
class StreamEvent:
    """One streamed chunk: its new text, ``finish_reason`` ("" or None until the end) and the running output count."""

    text: str
    finish_reason: str | None = None
    completion_tokens: int | None = None


class StreamError(RuntimeError):
    """The server refused the request or sent an error in the stream; the message is one line."""


def _post_sse(url: str, body: dict[str, Any], headers: dict[str, str], timeout_s: float) -> Iterator[dict[str, Any]]:
    """POST ``body`` as JSON and yield each server-sent event's JSON ``data`` as it arrives (until ``[DONE]``).

    Raises:
        StreamError: a non-200 answer, an ``error`` event, or data that is not JSON.
    """
    parts = urlsplit(url if "://" in url else f"http://{url}")
    conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(parts.hostname or "127.0.0.1", parts.port, timeout=timeout_s)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request(
            "POST",
            path,
            body=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Accept": "text/event-stream", **headers},
        )
        response = conn.getresponse()
        if response.status != 200:
            text = response.read(ERROR_BODY_CHARS).decode(errors="replace").replace("\n", " ")
            raise StreamError(f"{parts.path}: HTTP {response.status}: {text}")
        while True:
            line = response.readline()
            if not line:
                return
            line = line.strip()
            if not line.startswith(b"data:"):
                continue  # blank separators, comments, event:/id: fields
            data = line[5:].strip()
            if data == b"[DONE]":
                return
            try:
                event = json.loads(data)
            except json.JSONDecodeError:
                raise StreamError(f"{parts.path}: event data is not JSON: {data[:ERROR_BODY_CHARS]!r}") from None
            if isinstance(event, dict) and event.get("error"):
                error = event["error"]
                message = error.get("message", error) if isinstance(error, dict) else error
                raise StreamError(f"{parts.path}: error in stream: {str(message)[:ERROR_BODY_CHARS]}")
            yield event
    finally:
        conn.close()


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def triton_stream(
    base_url: str, deployment: str, messages: Messages, params: dict[str, Any], timeout_s: float = 300
) -> Iterator[StreamEvent]:
    """Stream a chat completion from a decoupled Triton LLM deployment through ``generate_stream``.

    Args:
        base_url: Triton's HTTP address (``http://127.0.0.1:8000`` or ``127.0.0.1:8000``).
        deployment: the model (deployment) name.
        messages: the OpenAI ``messages`` list.
        params: ``params_json`` (``max_tokens``, ``temperature``, ...).
        timeout_s: socket timeout for connecting and for each read.

    Yields:
        One :class:`StreamEvent` per Triton response.

    Raises:
        StreamError: Triton refused the request or streamed an error.
    """
    url = f"{base_url.rstrip('/')}/v2/models/{deployment}/generate_stream"
    body = {"messages_json": json.dumps(messages), "params_json": json.dumps(params)}
    for event in _post_sse(url, body, {}, timeout_s):
        yield StreamEvent(
            text=str(event.get("text") or ""),
            finish_reason=event.get("finish_reason") or None,
            completion_tokens=_int_or_none(event.get("completion_tokens")),
        )


def openai_stream(
    base_url: str,
    model: str,
    messages: Messages,
    params: dict[str, Any],
    api_key: str | None = None,
    timeout_s: float = 300,
) -> Iterator[StreamEvent]:
    """Stream ``POST {base_url}/v1/chat/completions`` (``stream: true``, usage included in the last chunk).

    Args:
        base_url: the server's root (without ``/v1``).
        model: the ``model`` field.
        messages: the OpenAI ``messages`` list.
        params: more request fields (``max_tokens``, ``temperature``, ``seed``, ...).
        api_key: sent as ``Authorization: Bearer``; never logged.
        timeout_s: socket timeout for connecting and for each read.

    Yields:
        One :class:`StreamEvent` per chunk; the usage chunk carries ``completion_tokens``.

    Raises:
        StreamError: the server refused the request or streamed an error.
    """
    url = f"{base_url.rstrip('/')}/v1/chat/completions"
    body = {**params, "model": model, "messages": messages, "stream": True, "stream_options": {"include_usage": True}}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    for event in _post_sse(url, body, headers, timeout_s):
        choice = (event.get("choices") or [{}])[0]
        usage = event.get("usage") or {}
        yield StreamEvent(
            text=str((choice.get("delta") or {}).get("content") or ""),
            finish_reason=choice.get("finish_reason") or None,
            completion_tokens=_int_or_none(usage.get("completion_tokens")),
        )


@dataclass
class _Run:
    """One request's measurements (seconds)."""

    ttft: float | None = None
    itl: list[float] = field(default_factory=list)
    tokens: int = 0
    e2e: float = 0.0


def _one(stream_fn: StreamFn, messages: Messages, params: dict[str, Any]) -> _Run:
    """Consume one stream, timing each non-empty chunk."""
    run = _Run()
    started = time.perf_counter()
    last_stamp: float | None = None
    last_count: int | None = None  # completion_tokens at the previous non-empty chunk
    count: int | None = None
    chunks = 0
    finished = False
    for event in stream_fn(messages, params):
        now = time.perf_counter()
        finished = finished or bool(event.finish_reason)
        if event.completion_tokens is not None:
            count = event.completion_tokens
        if not event.text:
            continue
        chunks += 1
        if last_stamp is None:
            run.ttft = now - started
        else:
            tokens = count - last_count if count is not None and last_count is not None else 1
            tokens = max(tokens, 1)
            run.itl.extend([(now - last_stamp) / tokens] * tokens)
        last_stamp, last_count = now, count
    run.e2e = time.perf_counter() - started
    if not finished:
        raise StreamError(f"the stream ended without a finish_reason after {chunks} text chunks (cut short)")
    run.tokens = count if count is not None else chunks
    return run


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) with linear interpolation between ranks; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _ms(value: float | None) -> float | None:
    return round(value * 1000.0, 2) if value is not None else None


def _as_messages(prompt: str | Messages) -> Messages:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def measure_level(
    stream_fn: StreamFn, prompts: Sequence[str | Messages], concurrency: int, requests: int, max_tokens: int
) -> dict[str, Any]:
    """Run ``requests`` greedy requests over ``concurrency`` threads (prompts taken in turn); one point.

    Args:
        stream_fn: ``stream_fn(messages, params)`` yields :class:`StreamEvent` s (e.g. a bound
            :func:`triton_stream`).
        prompts: user prompts (str) or whole ``messages`` lists.
        concurrency: client threads, each sending its next request when the previous one ends.
        requests: requests in this level.
        max_tokens: ``max_tokens`` of every request (``temperature`` 0).

    Returns:
        ``{"concurrency", "requests", "errors", "throughput" (output tokens/s), "p50_ms", "p99_ms" (TTFT),
        "ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p90_ms", "e2e_p50_ms", "output_tokens",
        "wall_s"}`` (+ ``"first_error"`` when a request failed); latencies in ms, None without samples.
    """
    if concurrency < 1 or requests < 1 or max_tokens < 1 or not prompts:
        raise ValueError("concurrency, requests and max_tokens must be >= 1, and prompts non-empty")
    params = {"max_tokens": int(max_tokens), "temperature": 0}
    errors: list[str] = []
    lock = threading.Lock()

    def task(i: int) -> _Run | None:
        try:
            return _one(stream_fn, _as_messages(prompts[i % len(prompts)]), params)
        except Exception as exc:  # noqa: BLE001 - a failed request is counted, the level goes on
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}"[:ERROR_BODY_CHARS])
            return None

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="llm-perf") as pool:
        runs = [r for r in pool.map(task, range(requests)) if r is not None]
    wall = time.perf_counter() - started
    ttft = [r.ttft for r in runs if r.ttft is not None]
    itl = [gap for r in runs for gap in r.itl]
    e2e = [r.e2e for r in runs]
    output_tokens = sum(r.tokens for r in runs)
    point: dict[str, Any] = {
        "concurrency": concurrency,
        "requests": requests,
        "errors": len(errors),
        "throughput": round(output_tokens / wall, 3) if wall > 0 else 0.0,
        "p50_ms": _ms(percentile(ttft, 50)),
        "p99_ms": _ms(percentile(ttft, 99)),
        "ttft_p50_ms": _ms(percentile(ttft, 50)),
        "ttft_p90_ms": _ms(percentile(ttft, 90)),
        "ttft_p99_ms": _ms(percentile(ttft, 99)),
        "itl_p50_ms": _ms(percentile(itl, 50)),
        "itl_p90_ms": _ms(percentile(itl, 90)),
        "e2e_p50_ms": _ms(percentile(e2e, 50)),
        "output_tokens": output_tokens,
        "wall_s": round(wall, 3),
    }
    if errors:
        point["first_error"] = errors[0]
    return point


def measure(
    stream_fn: StreamFn,
    prompts: Sequence[str | Messages],
    concurrencies: Iterable[int],
    requests_per_level: int,
    max_tokens: int,
) -> list[dict[str, Any]]:
    """:func:`measure_level` at each concurrency, in order; one point per level."""
    return [measure_level(stream_fn, prompts, c, requests_per_level, max_tokens) for c in concurrencies]
