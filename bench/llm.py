"""LLM serving (issue 11): time to first token, inter-token latency and output tokens/s through the gateway.

On the running stack with ``smollm2_chat`` routed (``make demo`` does it), the official ``openai`` client
streams ``/v1/chat/completions`` through the gateway with the same prompts at concurrency 1, 2 and 4 and writes
``bench/results/llm.json``: per concurrency, TTFT and ITL p50/p90 (ms), output tokens/s over all clients, and
the deployment that answered. Greedy decoding and a fixed ``max_tokens`` keep runs comparable.

Not measured yet (issue 11): an optimized variant, and llama.cpp serving the same GGUF (``llama-cpp-python``
has only a source distribution here; building it takes a while on 2 cores).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from results_io import write_results

REPO = Path(__file__).resolve().parent.parent
PROMPTS = (
    "What is the capital of France?",
    "Name three primary colors.",
    "Explain what a GPU is in one sentence.",
    "Write a haiku about the sea.",
)


def one(client: Any, model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    """One streamed greedy completion: TTFT, the gaps between content chunks, and the completion tokens."""
    started = time.perf_counter()
    stamps: list[float] = []
    usage = None
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                            max_tokens=max_tokens, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            stamps.append(time.perf_counter())
        if chunk.usage:
            usage = chunk.usage
    tokens = usage.completion_tokens if usage else len(stamps)
    return {"ttft_s": stamps[0] - started if stamps else None, "gaps_s": [b - a for a, b in itertools.pairwise(stamps)],
            "tokens": tokens, "seconds": time.perf_counter() - started}


def point(client: Any, model: str, concurrency: int, rounds: int, max_tokens: int) -> dict[str, Any]:
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(concurrency * rounds)]
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        runs = list(pool.map(lambda p: one(client, model, p, max_tokens), prompts))
    wall = time.perf_counter() - started
    ttft = sorted(r["ttft_s"] * 1000 for r in runs if r["ttft_s"] is not None)
    gaps = sorted(g * 1000 for r in runs for g in r["gaps_s"])

    def q(values: list[float], share: float) -> float | None:
        return round(values[min(len(values) - 1, int(share * len(values)))], 1) if values else None

    return {"requests": len(runs), "output_tokens": sum(r["tokens"] for r in runs),
            "output_tokens_per_s": round(sum(r["tokens"] for r in runs) / wall, 2),
            "ttft_ms_p50": round(statistics.median(ttft), 1) if ttft else None, "ttft_ms_p90": q(ttft, 0.9),
            "itl_ms_p50": round(statistics.median(gaps), 1) if gaps else None, "itl_ms_p90": q(gaps, 0.9)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2_chat")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2, help="requests per client at each concurrency")
    args = parser.parse_args(argv)

    from openai import OpenAI

    from modelops.local import stack

    status = stack.status()
    name = f"bench-llm-{int(time.time())}"
    keys = [str(REPO / ".venv" / "bin" / "modelops"), "keys"]
    key = json.loads(subprocess.run([*keys, "create", "--name", name, "--models", args.model, "--json"],
                                    check=True, capture_output=True, text=True).stdout)["key"]
    try:
        client = OpenAI(base_url=f"{status['gateway']['url']}/v1", api_key=key, timeout=600)
        one(client, args.model, PROMPTS[0], 8)  # warm up
        results = {"model": args.model, "max_tokens": args.max_tokens, "decoding": "greedy",
                   "concurrency": {str(c): point(client, args.model, c, args.rounds, args.max_tokens)
                                   for c in (1, 2, 4)}}
    finally:
        subprocess.run([*keys, "revoke", name], check=False, capture_output=True)
    write_results("llm", results)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
