"""llm_perf against a real local HTTP server that streams server-sent events with known delays."""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from modelops.evaluation import llm_perf
from modelops.evaluation.llm_perf import StreamEvent, measure, measure_level, openai_stream, percentile, triton_stream

FIRST_S = 0.3  # delay before the first text chunk
TOKEN_S = 0.1  # delay per token after it
API_KEY = "sk-test-key"

# Triton generate_stream: (delay, text, finish_reason, completion_tokens); the third chunk holds 3 tokens
TRITON_SCRIPT = [
    (FIRST_S, "Hel", "", 1),
    (TOKEN_S, "lo", "", 2),
    (3 * TOKEN_S, " wor ld !", "", 5),
    (0.0, "", "length", 5),
]
# OpenAI chat chunks, one token each, no running count; usage in a last chunk without choices
OPENAI_TEXTS = ["Par", "is", " is", " nice", "."]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def _start(self, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _event(self, payload: object) -> None:
        self._chunk(b"data: " + (payload if isinstance(payload, bytes) else json.dumps(payload).encode()) + b"\n\n")

    def _end(self) -> None:
        self._chunk(b"")

    def _reject(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.bodies.append((self.path, body))  # type: ignore[attr-defined]
        if self.path == "/v2/models/good/generate_stream":
            self._start()
            for delay, text, finish, count in TRITON_SCRIPT:
                time.sleep(delay)
                self._event(
                    {
                        "model_name": "good",
                        "text": text,
                        "finish_reason": finish,
                        "prompt_tokens": 7,
                        "completion_tokens": count,
                    }
                )
            self._end()
        elif self.path == "/v2/models/midfail/generate_stream":
            self._start()
            self._event({"text": "a", "finish_reason": "", "completion_tokens": 1})
            self._event({"error": "model crashed"})
            self._end()
        elif self.path == "/v2/models/cut/generate_stream":
            self._start()
            self._event({"text": "a", "finish_reason": "", "completion_tokens": 1})
            self._end()
        elif self.path == "/v1/chat/completions":
            if self.headers.get("Authorization") != f"Bearer {API_KEY}":
                self._reject(401, {"error": {"message": "invalid API key", "type": "invalid_request_error"}})
                return
            self._start()
            self._event({"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
            time.sleep(FIRST_S)
            for i, text in enumerate(OPENAI_TEXTS):
                if i:
                    time.sleep(TOKEN_S)
                self._event({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})
            self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
            self._event({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": len(OPENAI_TEXTS)}})
            self._event(b"[DONE]")
            self._end()
        else:
            self._reject(400, {"error": "Request for unknown model: 'missing' is not found"})


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.bodies = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def base(httpd: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}"


MESSAGES = [{"role": "user", "content": "hi"}]
POINT_KEYS = {
    "concurrency",
    "requests",
    "errors",
    "throughput",
    "p50_ms",
    "p99_ms",
    "ttft_p50_ms",
    "ttft_p90_ms",
    "ttft_p99_ms",
    "itl_p50_ms",
    "itl_p90_ms",
    "e2e_p50_ms",
    "output_tokens",
    "wall_s",
}


def test_triton_stream_parses_events_and_sends_contract_inputs(server: ThreadingHTTPServer) -> None:
    events = list(triton_stream(base(server), "good", MESSAGES, {"max_tokens": 4, "temperature": 0}))
    assert [e.text for e in events] == ["Hel", "lo", " wor ld !", ""]
    assert [e.completion_tokens for e in events] == [1, 2, 5, 5]
    assert events[-1].finish_reason == "length" and events[0].finish_reason is None
    path, body = server.bodies[-1]  # type: ignore[attr-defined]
    assert path == "/v2/models/good/generate_stream"
    assert json.loads(body["messages_json"]) == MESSAGES
    assert json.loads(body["params_json"]) == {"max_tokens": 4, "temperature": 0}


def test_triton_level_measures_the_servers_delays(server: ThreadingHTTPServer) -> None:
    fn = functools.partial(triton_stream, base(server), "good")
    point = measure_level(fn, ["a", "b"], concurrency=2, requests=4, max_tokens=4)
    assert POINT_KEYS <= set(point) and "first_error" not in point
    assert point["errors"] == 0 and point["requests"] == 4 and point["concurrency"] == 2
    assert point["output_tokens"] == 20  # the last completion_tokens of each stream, not the chunk count
    assert 250 <= point["ttft_p50_ms"] <= 700 and point["p50_ms"] == point["ttft_p50_ms"]
    assert point["p99_ms"] == point["ttft_p99_ms"] >= point["ttft_p50_ms"]
    # the 3-token chunk's 300 ms gap counts as three 100 ms tokens: every ITL sample is about 100 ms
    assert 70 <= point["itl_p50_ms"] <= 240 and point["itl_p90_ms"] <= 240
    per_request = FIRST_S + 4 * TOKEN_S
    assert per_request * 1000 <= point["e2e_p50_ms"] <= per_request * 2000
    # two clients in parallel: 4 requests take about 2 request times, not 4
    assert 2 * per_request <= point["wall_s"] <= 3.3 * per_request
    assert point["throughput"] == pytest.approx(20 / point["wall_s"], rel=0.01)


def test_openai_stream_counts_usage_tokens_and_sends_the_key(server: ThreadingHTTPServer) -> None:
    fn = functools.partial(openai_stream, base(server), "smollm2_chat", api_key=API_KEY)
    events = list(fn(MESSAGES, {"max_tokens": 5, "temperature": 0}))
    assert "".join(e.text for e in events) == "".join(OPENAI_TEXTS)
    assert events[-1].completion_tokens == len(OPENAI_TEXTS)
    path, body = server.bodies[-1]  # type: ignore[attr-defined]
    assert path == "/v1/chat/completions" and body["stream"] is True and body["model"] == "smollm2_chat"
    assert body["stream_options"] == {"include_usage": True} and body["max_tokens"] == 5

    [point] = measure(fn, [MESSAGES], [1], requests_per_level=2, max_tokens=5)
    assert point["errors"] == 0 and point["output_tokens"] == 2 * len(OPENAI_TEXTS)
    # the role-only first chunk is not the first token: TTFT is the delay before the first content
    assert 250 <= point["ttft_p50_ms"] <= 700
    assert 70 <= point["itl_p50_ms"] <= 240


def test_errors_are_counted_not_raised(server: ThreadingHTTPServer) -> None:
    missing = measure_level(functools.partial(triton_stream, base(server), "missing"), ["a"], 2, 3, 8)
    assert missing["errors"] == 3 and missing["output_tokens"] == 0 and missing["throughput"] == 0
    assert missing["ttft_p50_ms"] is None and missing["itl_p50_ms"] is None
    assert "HTTP 400" in missing["first_error"] and "unknown model" in missing["first_error"]

    midfail = measure_level(functools.partial(triton_stream, base(server), "midfail"), ["a"], 1, 2, 8)
    assert midfail["errors"] == 2 and "model crashed" in midfail["first_error"]

    cut = measure_level(functools.partial(triton_stream, base(server), "cut"), ["a"], 1, 1, 8)
    assert cut["errors"] == 1 and "without a finish_reason" in cut["first_error"] and cut["output_tokens"] == 0

    bad_key = functools.partial(openai_stream, base(server), "m", api_key="wrong")
    point = measure_level(bad_key, ["a"], 1, 1, 8)
    assert point["errors"] == 1 and "HTTP 401" in point["first_error"] and "invalid API key" in point["first_error"]
    assert "wrong" not in point["first_error"]

    refused = measure_level(functools.partial(triton_stream, "http://127.0.0.1:9", "good"), ["a"], 1, 1, 8)
    assert refused["errors"] == 1 and "ConnectionRefusedError" in refused["first_error"]


def test_some_failures_leave_the_rest_measured() -> None:
    calls = iter(range(100))

    def flaky(messages: list[dict[str, object]], params: dict[str, object]) -> Iterator[StreamEvent]:
        if next(calls) % 2:
            raise llm_perf.StreamError("HTTP 503: overloaded")
        yield StreamEvent("x", None, 1)
        yield StreamEvent("y", "stop", 2)

    point = measure_level(flaky, ["a"], 1, 4, 2)
    assert point["errors"] == 2 and point["output_tokens"] == 4 and point["ttft_p50_ms"] is not None


def test_token_count_falls_back_to_text_chunks() -> None:
    def uncounted(messages: list[dict[str, object]], params: dict[str, object]) -> Iterator[StreamEvent]:
        assert params == {"max_tokens": 3, "temperature": 0} and messages == [{"role": "user", "content": "q"}]
        yield from (StreamEvent("a"), StreamEvent(""), StreamEvent("b"), StreamEvent("c", "stop"))

    assert measure_level(uncounted, ["q"], 1, 1, 3)["output_tokens"] == 3


def test_percentile_and_bad_arguments() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([0.0, 10.0], 90) == pytest.approx(9.0)
    assert percentile([5.0], 99) == 5.0
    with pytest.raises(ValueError, match="concurrency"):
        measure_level(lambda m, p: iter(()), ["a"], 0, 1, 1)
    with pytest.raises(ValueError, match="prompts"):
        measure_level(lambda m, p: iter(()), [], 1, 1, 1)
