"""One key's flood must not starve another's (issue 26): p99 of a quiet key, alone and beside 50 embedding floods.

A "victim" key sends one small request at a time to ``--victim-model`` (default digits_cnn) for ``--seconds``:
its p50/p99 alone. Then a "flood" key (``--flood-concurrency``, default 2, its ``--max-concurrency``) fires
``--flood-clients`` (50) parallel ``/v1/embeddings`` requests of ``--inputs`` (2048) sentences each at
``--embed-model`` (default minilm_embedder), over and over, while the victim measures again. Target: the victim's
p99 under the flood stays below 2x its quiet p99 (the flood key's concurrency cap and the gateway's bounded
embeddings fan-out, ``MODELOPS_GATEWAY_EMBED_PARALLEL``, are what keep it there). Writes
``bench/results/gateway_isolation.json`` with this host's CPU; the flood's answers are counted by status (429 is
the cap working).

Run against the stack of ``make demo`` (``modelops stack up``): ``.venv/bin/python bench/gateway_isolation.py``;
other stacks by ``MODELOPS_STACK_DIR``/``MODELOPS_PORT_OFFSET``. Both keys are created here and revoked at the end.
Client, gateway and Triton share this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from results_io import host_info, write_results

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def _victim(client: httpx.AsyncClient, model: str, body: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Closed loop, one request at a time: latencies in ms of the 200s, and the other statuses."""
    latencies, codes = [], Counter()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        response = await client.post(f"/v2/models/{model}/infer", json=body)
        codes[response.status_code] += 1
        if response.status_code == 200:
            latencies.append((time.perf_counter() - started) * 1000)
    return {"requests": sum(codes.values()), "codes": dict(codes), "p50_ms": round(_percentile(latencies, 0.5), 2),
            "p99_ms": round(_percentile(latencies, 0.99), 2), "mean_ms": round(statistics.fmean(latencies), 2)
            if latencies else None}  # fmt: skip


async def _flood(client: httpx.AsyncClient, model: str, inputs: int, clients: int, stop: asyncio.Event) -> Counter:
    body = {"model": model, "input": [f"sentence number {i} of a large embeddings request" for i in range(inputs)]}
    codes: Counter[int] = Counter()

    async def one() -> None:
        while not stop.is_set():
            try:
                response = await client.post("/v1/embeddings", json=body)
                codes[response.status_code] += 1
                if response.status_code == 429:
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))
            except httpx.HTTPError as exc:
                codes[type(exc).__name__] += 1

    await asyncio.gather(*(one() for _ in range(clients)))
    return codes


async def measure(args: argparse.Namespace, gateway: str, victim_key: str, flood_key: str,
                  victim_body: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    limits = httpx.Limits(max_connections=args.flood_clients + 4)
    async with httpx.AsyncClient(base_url=gateway, trust_env=False, timeout=300, limits=limits,
                                 headers={"Authorization": f"Bearer {victim_key}"}) as victim, \
            httpx.AsyncClient(base_url=gateway, trust_env=False, timeout=300, limits=limits,
                              headers={"Authorization": f"Bearer {flood_key}"}) as flooder:  # fmt: skip
        await _victim(victim, args.victim_model, victim_body, 2.0)  # warm-up
        quiet = await _victim(victim, args.victim_model, victim_body, args.seconds)
        stop = asyncio.Event()
        flood = asyncio.create_task(_flood(flooder, args.embed_model, args.inputs, args.flood_clients, stop))
        await asyncio.sleep(2.0)  # the flood is on
        loaded = await _victim(victim, args.victim_model, victim_body, args.seconds)
        stop.set()
        flood_codes = await flood
    ratio = loaded["p99_ms"] / quiet["p99_ms"] if quiet["p99_ms"] else None
    return {"quiet": quiet, "under_flood": loaded, "flood_codes": {str(k): v for k, v in flood_codes.items()},
            "p99_ratio": round(ratio, 2) if ratio else None, "target_p99_ratio": 2.0,
            "met": bool(ratio and ratio < 2.0)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--victim-model", default="digits_cnn")
    parser.add_argument("--embed-model", default="minilm_embedder")
    parser.add_argument("--flood-clients", type=int, default=50)
    parser.add_argument("--flood-concurrency", type=int, default=2, help="the flood key's --max-concurrency")
    parser.add_argument("--inputs", type=int, default=2048, help="sentences per embeddings request")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of each measurement")
    args = parser.parse_args(argv)

    from gateway import request_body  # bench/ is this script's folder, first on sys.path
    from modelops.local import stack
    from modelops.serving.gateway.keys import KeyStore

    status = stack.status()
    gateway, keys = status["gateway"]["url"], KeyStore(status["gateway"]["keys_db"])
    tag = uuid.uuid4().hex[:6]
    names = (f"bench-victim-{tag}", f"bench-flood-{tag}")
    _, victim_key = keys.create(names[0], args.victim_model)
    _, flood_key = keys.create(names[1], args.embed_model, max_concurrency=args.flood_concurrency)
    try:
        metadata = httpx.get(f"{gateway}/v2/models/{args.victim_model}", trust_env=False, timeout=30,
                             headers={"Authorization": f"Bearer {victim_key}"})  # fmt: skip
        metadata.raise_for_status()
        victim_body = json.loads(request_body(metadata.json()))
        result = asyncio.run(measure(args, gateway, victim_key, flood_key, victim_body))
    finally:
        for name in names:
            keys.revoke(name)
    out = write_results("gateway_isolation", {"host": host_info(), "params": vars(args), **result})
    print(json.dumps({k: result[k] for k in ("p99_ratio", "met")} | {"quiet_p99_ms": result["quiet"]["p99_ms"],
          "flood_p99_ms": result["under_flood"]["p99_ms"], "flood_codes": result["flood_codes"]}))  # fmt: skip
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
