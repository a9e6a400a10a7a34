"""Gateway overhead (issue 9): the same load against Triton directly and through the gateway (SKELETON).

For each model (default digits_cnn, minilm_embedder) and concurrency 1/4/16, a closed-loop async client
sends the same KServe v2 JSON request for a fixed time to ``<triton>/v2/models/<deployment>/infer`` and to
``<gateway>/v2/models/<model>/infer`` (with a key), and writes bench/results/gateway.json: throughput,
p50/p99 and the gateway's share of direct throughput and added p50. Targets: >= 90% of direct
throughput for MiniLM, >= 70% for digits_cnn, <= 1 ms added to p50.

Run against the running stack (``modelops stack up`` after ``make demo``): ``.venv/bin/python bench/gateway.py``.
The URLs come from ``modelops stack status``; without ``--key`` a temporary key granted ``*`` is created and
revoked at the end. Client, gateway and Triton share this machine's cores, so the client's own CPU is part of
every number (the same client runs both sides).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
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
    """Closed loop: ``concurrency`` clients send ``body`` to ``url`` for ``seconds``; throughput and latency.

    aiohttp, not httpx: its per-request cost here is about half of httpx's, so less of the client's own time
    lands in both sides' numbers.
    """
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        for _ in range(concurrency):  # warm the connections and the model
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    ok = response.status == 200
                if ok:
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
    """The running stack's status; its S3 credentials go into this process's environment."""
    from modelops.local import stack

    status = stack.status()
    os.environ.update(stack.client_env(status))
    return status


def _keys(*args: str) -> str:
    out = subprocess.run([str(REPO / ".venv" / "bin" / "modelops"), "keys", *args],
                         check=True, capture_output=True, text=True)
    return out.stdout


def _deployment(model: str) -> str:
    from modelops.serving.routes import read_routes
    from modelops.settings import Settings
    from modelops.storage import Storage

    routes = read_routes(Storage(), Settings.from_env().triton_bucket, model)
    if not routes.routes:
        raise SystemExit(f"bench/gateway.py: error: {model} has no routes; run `make demo` first")
    return max(routes.routes, key=lambda r: r["weight"])["deployment"]


def _cpu_s(pid: int | None) -> float:
    """CPU seconds used so far by ``pid`` and its children (Triton's python-backend stubs are children)."""
    if not pid:
        return 0.0
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            times = p.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


async def measured(pids: dict[str, int | None], url: str, body: bytes, headers: dict[str, str], concurrency: int,
                   seconds: float) -> dict[str, Any]:
    """:func:`load`, plus the CPU milliseconds per answered request of each process in ``pids``."""
    before = {name: _cpu_s(pid) for name, pid in pids.items()}
    result = await load(url, body, headers, concurrency, seconds)
    n = max(result["requests"], 1)
    result["cpu_ms_per_request"] = {name: round((_cpu_s(pid) - before[name]) * 1000 / n, 3)
                                    for name, pid in pids.items()}
    return result


async def bench(triton: str, gateway: str, key: str, models: list[str], seconds: float,
                pids: dict[str, int | None] | None = None) -> dict[str, Any]:
    """Direct vs gateway per model and concurrency."""
    pids = pids or {}
    results: dict[str, Any] = {"seconds_per_point": seconds, "models": {}}
    for model in models:
        deployment = _deployment(model)
        async with httpx.AsyncClient(timeout=10) as client:
            metadata = (await client.get(f"{triton}/v2/models/{deployment}")).json()
        body = request_body(metadata)
        auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        points = {}
        for c in CONCURRENCY:
            direct = await measured(pids, f"{triton}/v2/models/{deployment}/infer", body,
                                    {"Content-Type": "application/json"}, c, seconds)
            through = await measured(pids, f"{gateway}/v2/models/{model}/infer", body, auth, c, seconds)
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
    parser.add_argument("--key", help="an API key granted the models (default: a temporary key, revoked after)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each measurement")
    args = parser.parse_args(argv)
    status = _stack_status()
    gateway = args.gateway or status.get("gateway", {}).get("url")
    if not gateway:
        print("bench/gateway.py: error: the stack has no gateway yet; pass --gateway URL", file=sys.stderr)
        return 2
    temp = None if args.key else f"bench-gateway-{int(time.time())}"
    key = args.key or json.loads(_keys("create", "--name", temp, "--models", "*", "--json"))["key"]
    try:
        pids = {"gateway": status["gateway"].get("pid"), "triton": status["triton"].get("pid")}
        results = asyncio.run(bench(status["triton"]["http"], gateway.rstrip("/"), key,
                                    args.models.split(","), args.seconds, pids))
        results["cores"] = os.cpu_count()
    finally:
        if temp:
            _keys("revoke", temp)
    write_results("gateway", results)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
