"""MiniLM served by this pipeline (Triton, python backend, as publish renders it) vs ``mlflow models serve``.

Run with the worker environment (about 4 minutes on 2 cores)::

    flock /tmp/modelops-bench.lock .venv-worker/bin/python bench/vs_mlflow_serve.py

The candidate is the demo MiniLM built by the real steps (``bench/minilm_profile.build_candidate``: export ->
optimize -> validate into ``--workdir``), deployed with publish's renderer (``build_model_dir`` with the
variant's runtime parameters and the defaults publish uses) in a tritonserver on free 127.0.0.1 ports. The
reference is ``mlflow models serve --env-manager local`` (one uvicorn worker, its default) of the same MLflow
model directory (what ``models:/<name>/<version>`` resolves to), bound to 127.0.0.1.

Both get the same client: ``concurrency`` threads, each with its own keep-alive HTTP connection, sending one
eval sentence per request as JSON (Triton: KServe v2 ``text`` BYTES; MLflow: ``{"inputs": [text]}`` on
``/invocations``). Rounds alternate the two servers (A/B then B/A) at each concurrency, so a load change on the
shared machine hits both. Writes ``bench/results/vs_mlflow_serve.json``: per server and concurrency the
sentences/s and p50/p99 of every round, per workload (short eval
sentences; 128-token texts), their medians and the Triton/MLflow ratio of median throughputs.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from minilm_profile import build_candidate, deployment_dir, git_head, load_avg
from results_io import RESULTS, host_info, write_results

REPO = Path(__file__).resolve().parent.parent
MLFLOW_PORT = 5700  # the brief's offset-700 range; Triton takes free ports


class Target:
    """One HTTP endpoint and how to put one text in a request body."""

    def __init__(self, name: str, host: str, port: int, path: str, body) -> None:
        self.name, self.host, self.port, self.path, self.body = name, host, port, path, body

    def post(self, conn: http.client.HTTPConnection, text: str) -> None:
        conn.request("POST", self.path, body=self.body(text), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{self.name}: HTTP {resp.status}: {data[:200]!r}")


def triton_body(text: str) -> bytes:
    return json.dumps({"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": [text]}]}).encode()


def mlflow_body(text: str) -> bytes:
    return json.dumps({"inputs": [text]}).encode()


def load(target: Target, texts: list[str], concurrency: int, seconds: float) -> dict[str, Any]:
    """``concurrency`` closed-loop clients for ``seconds``: sentences/s, p50/p99 ms."""
    stop = time.perf_counter() + seconds
    lat: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[str] = []

    def client(k: int) -> None:
        conn = http.client.HTTPConnection(target.host, target.port, timeout=60)
        i = k * 7
        try:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                target.post(conn, texts[i % len(texts)])
                lat[k].append((time.perf_counter() - t0) * 1e3)
                i += 1
        except Exception as exc:  # noqa: BLE001 - reported in the result
            errors.append(str(exc)[:200])
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    flat = [x for row in lat for x in row]
    if errors or not flat:
        raise RuntimeError(f"{target.name} at concurrency {concurrency}: {errors[:1] or 'no answers'}")
    return {"throughput": round(len(flat) / elapsed, 2), "p50_ms": round(float(np.percentile(flat, 50)), 2),
            "p99_ms": round(float(np.percentile(flat, 99)), 2), "requests": len(flat)}  # fmt: skip


def start_mlflow(model_dir: Path, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    cmd = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", str(model_dir), "-h", "127.0.0.1",
           "-p", str(port), "--env-manager", "local"]  # fmt: skip
    bindir = str(Path(sys.executable).parent)  # mlflow runs ``uvicorn`` from PATH
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{bindir}:{os.environ.get('PATH', '')}"}
    with log_path.open("ab") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow models serve exited {proc.returncode}; see {log_path}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/ping")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            pass
        time.sleep(1)
    stop_group(proc)
    raise RuntimeError("mlflow models serve did not answer /ping in 240 s")


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's own process group (its uvicorn workers with it), then wait."""
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def check_same_answers(targets: list[Target], texts: list[str]) -> float:
    """Cosine of the two servers' embeddings of the same texts (both must embed the same model)."""
    out = []
    for target in targets:
        conn = http.client.HTTPConnection(target.host, target.port, timeout=60)
        rows = []
        for text in texts:
            conn.request("POST", target.path, body=target.body(text), headers={"Content-Type": "application/json"})
            doc = json.loads(conn.getresponse().read())
            vec = doc["outputs"][0]["data"] if "outputs" in doc else doc["predictions"][0]
            rows.append(np.asarray(vec, dtype=np.float64))
        conn.close()
        out.append(np.stack(rows))
    a, b = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in out)
    return float((a * b).sum(axis=1).mean())


def main() -> None:
    from model_recipes.text_embedding import EVAL_SENTENCES, PERF_SEQ_LEN, RECIPE
    from modelops.serving.triton.local_server import TritonProcess

    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "modelops-minilm-bench"))
    parser.add_argument("--variant", default="ort_int8_dynamic")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--rounds", type=int, default=2, help="A/B rounds per concurrency (order alternates)")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--texts", default="short,tok128", help="workloads: short (eval sentences), tok128")
    parser.add_argument(
        "--triton-configs",
        default="2x1",
        help="more serving configurations measured beside the published one: <instances>x<threads>[d<queue delay us>]",
    )
    parser.add_argument("--label", default="current", help="key of this run in the JSON (e.g. before/after)")
    parser.add_argument("--mlflow-port", type=int, default=MLFLOW_PORT)
    args = parser.parse_args()
    work = Path(args.workdir).resolve()
    built = build_candidate(work, ["ort_fp32", args.variant])
    model_dir = deployment_dir(work, built, args.variant)  # as published
    extra = {}  # other serving configurations of the same candidate, in the same Triton: "<instances>x<threads>"
    for cfg in [c for c in args.triton_configs.split(",") if c]:
        shape, _, delay = cfg.partition("d")  # e.g. 2x1, or 1x2d500: 500 us dynamic-batching queue delay
        count, threads = (int(x) for x in shape.split("x"))
        extra[f"triton_{cfg}"] = deployment_dir(work, built, args.variant, name=f"minilm_{cfg}", instance_count=count,
                                                threads=threads, max_queue_delay_us=int(delay or 0))  # fmt: skip
    workloads = {
        "short": list(EVAL_SENTENCES),
        "tok128": [d["text"][0] for d in RECIPE.perf_input_data(n=64, tokens=PERF_SEQ_LEN)["data"]],
    }
    workloads = {k: v for k, v in workloads.items() if k in args.texts.split(",")}
    levels = [int(c) for c in args.concurrency.split(",")]
    names = ["triton", "mlflow", *extra]
    rounds: dict[str, dict[str, dict[int, list[dict[str, Any]]]]] = {
        w: {n: {c: [] for c in levels} for n in names} for w in workloads
    }
    mlflow = start_mlflow(work / "model", args.mlflow_port, work / "mlflow_serve.log")
    try:
        loaded = [model_dir.name, *(d.name for d in extra.values())]
        with TritonProcess(model_dir.parent, loaded, log_path=work / "triton_vs.log") as server:
            host, port = server.http_url.split(":")
            targets = [Target("triton", host, int(port), f"/v2/models/{model_dir.name}/infer", triton_body),
                       Target("mlflow", "127.0.0.1", args.mlflow_port, "/invocations", mlflow_body)]  # fmt: skip
            targets += [Target(n, host, int(port), f"/v2/models/{d.name}/infer", triton_body) for n, d in extra.items()]
            agreement = check_same_answers(targets[:2], list(EVAL_SENTENCES[:16]))
            for target in targets:
                load(target, list(EVAL_SENTENCES), 4, 2.0)  # warm-up
            for w, texts in workloads.items():
                for c in levels:
                    for r in range(args.rounds):
                        for target in targets if r % 2 == 0 else targets[::-1]:
                            point = {**load(target, texts, c, args.seconds), "load_avg": load_avg()}
                            rounds[w][target.name][c].append(point)
                            print(w, target.name, c, point, flush=True)
    finally:
        stop_group(mlflow)
    table: dict[str, dict[int, dict[str, float]]] = {}
    for w, per_target in rounds.items():
        table[w] = {}
        for c in levels:
            med = {n: statistics.median(p["throughput"] for p in per_target[n][c]) for n in per_target}
            table[w][c] = {"triton_throughput": med["triton"], "mlflow_throughput": med["mlflow"],
                           "triton_p50_ms": statistics.median(p["p50_ms"] for p in per_target["triton"][c]),
                           "mlflow_p50_ms": statistics.median(p["p50_ms"] for p in per_target["mlflow"][c]),
                           "speedup": round(med["triton"] / med["mlflow"], 2)}  # fmt: skip
            for n in extra:
                table[w][c][f"{n}_throughput"] = med[n]
                table[w][c][f"{n}_speedup"] = round(med[n] / med["mlflow"], 2)
    results = {
        "commit": git_head(), "variant": args.variant, "cosine_triton_vs_mlflow": round(agreement, 5),
        "validate_cosine": built["validate"]["candidates"][args.variant].get("metric"),
        "texts": {"short": "EVAL_SENTENCES, one per request (~12 tokens)",
                  "tok128": "64 perf_analyzer texts of exactly 128 tokens (the benchmark step's data)"},
        "seconds_per_round": args.seconds,
        "triton_config": (model_dir / "config.pbtxt").read_text(), "cpus": os.cpu_count(), "host": host_info(),
        "triton_extra_configs": {n: (d / "config.pbtxt").read_text() for n, d in extra.items()},
        "summary": table, "rounds": rounds,
    }  # fmt: skip
    print(json.dumps(table, indent=1))
    existing = RESULTS / "vs_mlflow_serve.json"
    everything = json.loads(existing.read_text()) if existing.exists() else {}
    everything[args.label] = results
    print(f"wrote {write_results('vs_mlflow_serve', everything)}")


if __name__ == "__main__":
    main()
