"""Gateway overhead (issue 9): the same load against Triton directly and through the gateway (SKELETON).

For each model (default digits_cnn, minilm_embedder) and concurrency 1/4/16, a closed-loop async client
sends the same KServe v2 JSON request for a fixed time to ``<triton>/v2/models/<deployment>/infer`` and to
``<gateway>/v2/models/<model>/infer`` (with a key), and writes bench/results/gateway.json: throughput,
p50/p99 and the gateway's share of direct throughput and added p50. Targets: >= 90% of direct
throughput for MiniLM, >= 70% for digits_cnn, <= 1 ms added to p50.

Status: the load generator works; reading the gateway's URL from ``modelops stack status --json``
(``gateway.url``) waits for the stack wiring, so for now pass ``--gateway URL --key KEY``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from results_io import write_results

REPO = Path(__file__).resolve().parent.parent
MODELS = ("digits_cnn", "minilm_embedder")
CONCURRENCY = (1, 4, 16)


def request_body(metadata: dict[str, Any]) -> bytes:
    """One JSON inference request for a model's metadata: zeros for numbers, a sentence for BYTES, batch 1."""
    inputs = []
    for spec in metadata["inputs"]:
        shape = [1 if d == -1 else int(d) for d in spec["shape"]]
        size = 1
        for d in shape:
            size *= d
        data: list[Any] = ["the gateway adds little"] * size if spec["datatype"] == "BYTES" else [0] * size
        inputs.append({"name": spec["name"], "shape": shape, "datatype": spec["datatype"], "data": data})
    return json.dumps({"inputs": inputs}).encode()


async def load(url: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float) -> dict[str, float]:
    """Closed loop: ``concurrency`` clients send ``body`` to ``url`` for ``seconds``; throughput and latency."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        await client.post(url, content=body, headers=headers)  # warm the connection and the model
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                response = await client.post(url, content=body, headers=headers)
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "throughput_rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 3) if latencies else float("nan"),
        "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 3) if latencies else float("nan"),
    }


def _stack_status() -> dict[str, Any]:
    out = subprocess.run([str(REPO / ".venv" / "bin" / "modelops"), "stack", "status", "--json"],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def _deployment(model: str) -> str:
    from modelops.serving.routes import read_routes
    from modelops.settings import Settings
    from modelops.storage import Storage

    routes = read_routes(Storage(), Settings.from_env().triton_bucket, model)
    if not routes.routes:
        raise SystemExit(f"bench/gateway.py: error: {model} has no routes; run `make demo` first")
    return max(routes.routes, key=lambda r: r["weight"])["deployment"]


async def bench(triton: str, gateway: str, key: str, models: list[str], seconds: float) -> dict[str, Any]:
    """Direct vs gateway per model and concurrency."""
    results: dict[str, Any] = {"seconds_per_point": seconds, "models": {}}
    for model in models:
        deployment = _deployment(model)
        async with httpx.AsyncClient(timeout=10) as client:
            metadata = (await client.get(f"{triton}/v2/models/{deployment}")).json()
        body = request_body(metadata)
        auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        points = {}
        for c in CONCURRENCY:
            direct = await load(f"{triton}/v2/models/{deployment}/infer", body,
                                {"Content-Type": "application/json"}, c, seconds)
            through = await load(f"{gateway}/v2/models/{model}/infer", body, auth, c, seconds)
            points[str(c)] = {
                "direct": direct, "gateway": through,
                "throughput_share": round(through["throughput_rps"] / max(direct["throughput_rps"], 1e-9), 3),
                "added_p50_ms": round(through["p50_ms"] - direct["p50_ms"], 3),
            }
        results["models"][model] = {"deployment": deployment, "concurrency": points}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", help="gateway URL (default: gateway.url of `modelops stack status --json`)")
    parser.add_argument("--key", required=True, help="an API key granted the models (modelops keys create)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each measurement")
    args = parser.parse_args(argv)
    status = _stack_status()
    gateway = args.gateway or status.get("gateway", {}).get("url")
    if not gateway:
        print("bench/gateway.py: error: the stack has no gateway yet; pass --gateway URL", file=sys.stderr)
        return 2
    results = asyncio.run(bench(status["triton"]["http"], gateway.rstrip("/"), args.key,
                                args.models.split(","), args.seconds))
    write_results("gateway", results)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
