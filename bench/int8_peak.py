"""INT8 GEMM peak of this CPU through ONNX Runtime, and how close the chosen MiniLM deployment gets to it.

Run with the worker environment (about 1 minute)::

    flock /tmp/modelops-bench.lock .venv-worker/bin/python bench/int8_peak.py

- **Peak**: one-node ONNX graphs timed in ONNX Runtime on the CPU provider (MLAS; AVX512-VNNI ``vpdpbusd`` where
  the CPU has it): ``MatMulInteger`` (uint8 activations x int8 weights, int32 out) at a large square size and at
  MiniLM's shapes (128 tokens x 384 -> 384/1536 and back), ``DynamicQuantizeMatMul`` (fp32 in, activations
  quantized on the fly, fp32 out: what dynamic INT8 models run) and fp32 ``MatMul`` for reference; GOP/s with
  one op = one multiply or one add (2 per MAC), for 1 thread and all threads.
- **MiniLM**: the GOP of one 128-token sentence counted from the model's own MatMul shapes (weight GEMMs from the
  initializers, attention QK^T and AV from the heads/hidden metadata), then each INT8 variant's sentences/s in
  process (ONNX Runtime or OpenVINO, as the template serves it) with the deployment's session settings (batch 1
  and 8 of 128-token texts) as effective GOP/s and as a fraction of the ``MatMulInteger`` peak.

Writes ``bench/results/int8_peak.json``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from minilm_profile import build_candidate, deployment_dir, deployment_params, git_head, load_avg, serving_helpers
from results_io import cpuinfo, host_info, write_results


def gemm_model(op: str, m: int, k: int, n: int) -> bytes:
    """A one-node graph ``Y = op(A[m,k], W[k,n])`` with W an initializer (int8 for the integer ops)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if op == "MatMul":
        a_type, inputs, inits = TensorProto.FLOAT, ["A", "W"], [rng.standard_normal((k, n), dtype=np.float32)]
        node, out_type, domain = helper.make_node("MatMul", ["A", "W"], ["Y"]), TensorProto.FLOAT, ""
    elif op == "MatMulInteger":
        a_type, inputs = TensorProto.UINT8, ["A", "W", "a_zp", "w_zp"]
        inits = [rng.integers(-127, 127, (k, n), dtype=np.int8), np.array(128, np.uint8), np.array(0, np.int8)]
        node, out_type, domain = helper.make_node("MatMulInteger", inputs, ["Y"]), TensorProto.INT32, ""
    elif op == "DynamicQuantizeMatMul":
        a_type, inputs = TensorProto.FLOAT, ["A", "W", "w_scale", "w_zp"]
        inits = [rng.integers(-127, 127, (k, n), dtype=np.int8), np.full(n, 0.01, np.float32), np.zeros(n, np.int8)]
        node = helper.make_node("DynamicQuantizeMatMul", inputs, ["Y"], domain="com.microsoft")
        out_type, domain = TensorProto.FLOAT, "com.microsoft"
    else:
        raise ValueError(op)
    tensors = [numpy_helper.from_array(v, name) for name, v in zip(inputs[1:], inits)]
    graph = helper.make_graph([node], op, [helper.make_tensor_value_info("A", a_type, [m, k])],
                              [helper.make_tensor_value_info("Y", out_type, [m, n])], tensors)  # fmt: skip
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def gops(op: str, m: int, k: int, n: int, threads: int, seconds: float) -> tuple[float, float]:
    """(GOP/s of wall time, GOP per CPU-second) of ``op`` at ``[m,k] x [k,n]`` with ``threads`` intra-op threads.

    The CPU-time rate is what a shared machine's load disturbs least (other processes take wall time, not this
    process's CPU time); with one thread it is the per-core rate.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(gemm_model(op, m, k, n), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    a = (
        rng.integers(0, 255, (m, k), dtype=np.uint8)
        if op == "MatMulInteger"
        else rng.standard_normal((m, k), np.float32)
    )
    for _ in range(3):
        sess.run(None, {"A": a})
    calls, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        sess.run(None, {"A": a})
        calls += 1
    ops = 2.0 * m * k * n * calls / 1e9
    return ops / (time.perf_counter() - t0), ops / (time.process_time() - c0)


def minilm_gop(model_path: Path, tokens: int) -> dict[str, Any]:
    """GOP per sentence of ``tokens`` tokens from the exported graph: weight MatMuls + attention."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    inits = {i.name: numpy_helper.to_array(i).shape for i in model.graph.initializer}
    props = {p.key: p.value for p in model.metadata_props}
    hidden = int(props.get("modelops.hidden_size") or 0)
    weight_macs, activation_matmuls = 0, 0
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            shape = inits.get(node.input[1])
            if shape is not None and len(shape) == 2:
                weight_macs += tokens * shape[0] * shape[1]
            else:
                activation_matmuls += 1  # QK^T and AV: tokens x tokens x hidden MACs each (all heads)
    attention_macs = activation_matmuls * tokens * tokens * hidden
    return {"tokens": tokens, "weight_gemm_gop": round(2 * weight_macs / 1e9, 3),
            "attention_gop": round(2 * attention_macs / 1e9, 3), "gop": round(2 * (weight_macs + attention_macs) / 1e9, 3),
            "activation_matmuls": activation_matmuls, "hidden": hidden}  # fmt: skip


def deployment_rate(model_dir: Path, texts: list[str], batch: int, seconds: float) -> tuple[float, float]:
    """(sentences/s, sentences per CPU-second) of the deployment's tokenize + ORT session (its own code and
    parameters) at ``batch``; the second is what the host's load disturbs least."""
    helpers = serving_helpers()
    params = deployment_params(model_dir)
    tokenizer, pad_id, _ = helpers.load_tokenizer(str(model_dir / "1" / "tokenizer"))
    sess = helpers.model_session(str(model_dir / "1" / "model.onnx"), params)  # ORT or OpenVINO, as served
    names = [i.name for i in sess.get_inputs()]
    batches = [texts[i : i + batch] for i in range(0, len(texts) - batch + 1, batch)]

    def one(chunk: list[str]) -> None:
        tokens = helpers.tokenize(tokenizer, pad_id, chunk)
        sess.run(None, {n: tokens[n] if n in tokens else np.zeros_like(tokens["input_ids"]) for n in names})

    one(batches[0])
    calls, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        one(batches[calls % len(batches)])
        calls += 1
    return calls * batch / (time.perf_counter() - t0), calls * batch / (time.process_time() - c0)


def main() -> None:
    from model_recipes.text_embedding import PERF_SEQ_LEN, RECIPE

    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "modelops-minilm-bench"))
    parser.add_argument("--variants", default="ort_int8_dynamic,openvino_int8",
                        help="comma-separated variants measured in process (default: both INT8 runtimes)")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    start = load_avg()
    shapes = {
        "square_2048": (2048, 2048, 2048),
        "minilm_qkv_128x384x384": (128, 384, 384),
        "minilm_ffn_up_128x384x1536": (128, 384, 1536),
        "minilm_ffn_down_128x1536x384": (128, 1536, 384),
    }
    peak: dict[str, Any] = {}
    for op in ("MatMulInteger", "DynamicQuantizeMatMul", "MatMul"):
        for label, (m, k, n) in shapes.items():
            for threads in sorted({1, cpus}):
                wall, cpu = gops(op, m, k, n, threads, args.seconds)
                peak[f"{op}/{label}/threads={threads}"] = {"gop_s": round(wall, 1), "gop_per_cpu_s": round(cpu, 1)}
                print(f"{op:22s} {label:30s} threads={threads}: {wall:.1f} GOP/s, {cpu:.1f} GOP/CPU-s", flush=True)
    # the machine's INT8 peak: the best per-core rate of MatMulInteger times the cores
    per_core = max(v["gop_per_cpu_s"] for k, v in peak.items() if k.startswith("MatMulInteger/"))
    best = per_core * cpus
    work = Path(args.workdir).resolve()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    built = build_candidate(work, ["ort_fp32", *variants])
    cost = minilm_gop(Path(built["export"]["outputs"]["onnx"]), PERF_SEQ_LEN)
    texts = [d["text"][0] for d in RECIPE.perf_input_data(n=32, tokens=PERF_SEQ_LEN)["data"]]
    deployments: dict[str, Any] = {}
    for variant in variants:
        cand = built["optimize"]["candidates"].get(variant) or {}
        if not cand.get("onnx"):
            print(f"{variant}: not built ({cand.get('status')}: {cand.get('reason')})", flush=True)
            continue
        model_dir = deployment_dir(work, built, variant, name=variant)
        deployments[variant] = {"params": deployment_params(model_dir)}
        for batch in (1, 8):
            rate, per_cpu_s = deployment_rate(model_dir, texts, batch, args.seconds * 2)
            deployments[variant][f"batch={batch}"] = point = {
                "sentences_per_s": round(rate, 1),
                "effective_gop_s": round(rate * cost["gop"], 1),
                "fraction_of_matmulinteger_peak": round(rate * cost["gop"] / best, 3),
                "sentences_per_cpu_s": round(per_cpu_s, 1),
                "gop_per_cpu_s": round(per_cpu_s * cost["gop"], 1),
                "fraction_of_matmulinteger_per_core_peak": round(per_cpu_s * cost["gop"] / per_core, 3),
            }
            print(variant, batch, point, flush=True)
    if not deployments:
        raise SystemExit(f"none of {variants} was built: nothing to measure against the peak")
    fastest = max(deployments, key=lambda v: deployments[v]["batch=8"]["sentences_per_cpu_s"])
    results = {
        "commit": git_head(), "cpus": cpus, "host": host_info(), "load_avg": {"start": start, "end": load_avg()},
        "cpu_flags": sorted(f for f in cpuinfo()[1] if f.startswith(("avx512", "amx", "avx_vnni"))),
        "gemms": peak, "matmulinteger_peak_gop_per_core_s": round(per_core, 1),
        "matmulinteger_peak_gop_s": round(best, 1), "minilm_cost": cost, "deployments": deployments,
        "fastest_variant": fastest,
    }  # fmt: skip
    print(f"wrote {write_results('int8_peak', results)}")


if __name__ == "__main__":
    main()
