"""A fake ``perf_analyzer`` (faked at the process boundary): perf_analyzer's command line in, its ``-f`` CSV out.

It asks the server whether the model is ready (``GET /v2/models/<m>/ready``; perf_analyzer fails the same way on a
model that is not loaded), sends one real inference with zeros of the shapes in ``FAKE_PA_SHAPES`` when given, and
writes one CSV row per concurrency level of ``--concurrency-range`` with the columns perf_analyzer writes with
``--verbose-csv``. Throughput per model comes from ``FAKE_PA_THROUGHPUT`` (JSON ``{model: inferences/s}``, default
100); latency is concurrency / throughput. The command line is appended to ``FAKE_PA_LOG`` when set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request

COLUMNS = ["Concurrency", "Inferences/Second", "Client Send", "Network+Server Send/Recv", "Server Queue",
           "Server Compute Input", "Server Compute Infer", "Server Compute Output", "Client Recv", "p50 latency",
           "p90 latency", "p95 latency", "p99 latency", "Avg latency", "request/response", "response wait"]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("-m", required=True)
    parser.add_argument("-u", required=True)
    parser.add_argument("--concurrency-range", required=True)
    parser.add_argument("-f", required=True)
    args, _ = parser.parse_known_args()
    if os.environ.get("FAKE_PA_LOG"):
        with open(os.environ["FAKE_PA_LOG"], "a") as fh:
            fh.write(" ".join(sys.argv[1:]) + "\n")
    try:
        urllib.request.urlopen(f"http://{args.u}/v2/models/{args.m}/ready", timeout=5).read()
    except Exception as exc:  # noqa: BLE001
        print(f"error: failed to get model metadata: {args.m} not ready ({exc})")
        return 1
    start, end, step = (int(x) for x in args.concurrency_range.split(":"))
    throughput = float(json.loads(os.environ.get("FAKE_PA_THROUGHPUT") or "{}").get(args.m, 100.0))
    rows = [",".join(COLUMNS)]
    for level in range(start, end + 1, step):
        usec = 1e6 * level / throughput
        rows.append(",".join(str(v) for v in [level, throughput, 10, 20, 5, 5, usec - 60, 5, 15,
                                               usec, usec * 1.1, usec * 1.2, usec * 1.3, usec, 0, 0]))  # fmt: skip
    with open(args.f, "w") as fh:
        fh.write("\n".join(rows) + "\n")
    print(f"  Concurrency: {end}, throughput: {throughput} infer/sec")
    return 0


if __name__ == "__main__":
    sys.exit(main())
