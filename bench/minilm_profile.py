"""Where one MiniLM request's time goes in the served deployment (issue 12 item 2): a profile as JSON.

Run with the worker environment (about 2 minutes on 2 cores)::

    flock /tmp/modelops-bench.lock .venv-worker/bin/python bench/minilm_profile.py --label after

It builds the demo MiniLM candidate with the real step code (export -> optimize -> validate, in process, into
``--workdir``; reused when already there), then measures, for the variant (default ``ort_int8_dynamic``):

- **in process**, with the deployment's own code (``triton_repo_templates/python/modelops_serving.py``: its
  tokenizer loader, ``tokenize`` and ``ort_session`` with the published parameters): tokenization and the ORT
  call per request, for one short sentence (the eval sentences, ~12 tokens) and one 128-token text (what the
  benchmark step's perf_analyzer sends); ORT's own profiler splits the graph time by operator type and into
  INT8 GEMMs, fp32 GEMMs/attention, activation quantization and the rest (fp32 glue);
- **padding**: tokens computed / tokens that carry text when a dynamic batch of 4 random eval sentences is padded
  to its longest (the template's rule) and when padded to 128 (the eval data's rule);
- **in Triton** (the deployment as publish renders it, one client, one text per request): client latency and
  Triton's own statistics (queue, compute input/infer/output); the python backend's cost is Triton's compute
  time minus the in-process tokenize + ORT time of the same texts, the HTTP/client cost the rest.

Writes ``bench/results/minilm_profile.json`` (one entry per ``--label``, earlier labels kept).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
from results_io import RESULTS, write_results

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# operator types by what they do (ORT CPU kernels, incl. the fusions ORT applies at session load)
INT8_GEMM = {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention", "QGemm", "QLinearMatMul"}
FP32_GEMM = {"MatMul", "Gemm", "FusedMatMul", "Attention", "MultiHeadAttention", "FusedGemm"}
QUANTIZE = {"DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLSTM"}


def git_head() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False)
    return out.stdout.strip()


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# -- candidate ------------------------------------------------------------------------------------------------
def build_candidate(work: Path, variants: list[str]) -> dict[str, Any]:
    """export -> optimize -> validate of the demo MiniLM into ``work`` (skipped when its results are there and hold
    every variant asked for)."""
    import yaml

    from model_recipes.text_embedding import save_local
    from modelops.recipes import select_recipe
    from modelops.steps import export, optimize, validate
    from modelops.steps._common import run_step

    results = {s: work / f"{s}.result.json" for s in ("export", "optimize", "validate")}
    if all(p.exists() for p in results.values()):
        built = {s: json.loads(p.read_text()) for s, p in results.items()}
        if set(variants) <= set(built["optimize"].get("candidates") or {}):
            return built
    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / "model"
    if not model_dir.exists():
        save_local(model_dir)
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    spec = {
        "model_name": "minilm", "model_version": "1", "alias": None, "model_uri": f"file://{model_dir}",
        "source_uri": str(model_dir), "flavor": "sentence_transformers", "recipe": select_recipe(mlmodel),
        "mlmodel": mlmodel, "variants": variants, "latency_slo_ms": 1e9, "accuracy_tolerance": 0.01,
        "run_id": "bench", "run_prefix": str(work / "run"),
    }  # fmt: skip
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec))
    for name, fn in (("export", export.run), ("optimize", optimize.run), ("validate", validate.run)):
        rc = run_step(name, fn, ["--spec", str(spec_path), "--result", str(results[name])])
        if rc != 0:
            raise SystemExit(f"{name} failed (rc={rc}); see the log above")
    return {s: json.loads(p.read_text()) for s, p in results.items()}


def serving_helpers() -> types.ModuleType:
    """The deployment's ``modelops_serving`` module, importable outside Triton (a stub ``pb_utils``)."""
    sys.modules.setdefault("triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    sys.path.insert(0, str(REPO / "triton_repo_templates" / "python"))
    import modelops_serving

    return modelops_serving


def deployment_dir(work: Path, built: dict[str, Any], variant: str, name: str = "minilm", **config: Any) -> Path:
    """The Triton model directory publish would render for ``variant`` (same kind, io, parameters, defaults).

    ``config``: other ``build_model_dir`` settings (``instance_count``, ``threads``) than publish's defaults.
    """
    from modelops.serving.triton.model_dir import build_model_dir, runtime_parameters

    ex, cand = built["export"], built["optimize"]["candidates"][variant]
    return build_model_dir(
        work / "repo" / name, name=name, kind=ex["serving_kind"], model_path=Path(cand["onnx"]),
        io=ex["serving_io"], max_batch_size=int(ex["max_batch_size"]), assets=Path(ex["outputs"]["serving_assets"]),
        parameters=runtime_parameters(variant), **config,
    )  # fmt: skip


def deployment_params(model_dir: Path) -> dict[str, str]:
    """The string parameters of a rendered config.pbtxt (what ``parse_args`` hands the template)."""
    from modelops.serving.triton.config_proto import parse

    config = parse((model_dir / "config.pbtxt").read_text())
    return {k: v.string_value for k, v in config.parameters.items()}


# -- workloads ------------------------------------------------------------------------------------------------
def workloads() -> dict[str, list[str]]:
    from model_recipes.text_embedding import EVAL_SENTENCES, PERF_SEQ_LEN, RECIPE

    return {"short": list(EVAL_SENTENCES[:64]), "tok128": RECIPE.perf_input_data(n=16, tokens=PERF_SEQ_LEN)["data"]}


def texts_of(workload: list[Any]) -> list[str]:
    return [w if isinstance(w, str) else w["text"][0] for w in workload]


def timed(fn, items: list[Any], seconds: float) -> tuple[float, int]:
    """Mean ms of ``fn(item)`` cycling over ``items`` for about ``seconds``; (ms, calls)."""
    for item in items[:3]:
        fn(item)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn(items[n % len(items)])
        n += 1
    return (time.perf_counter() - t0) / n * 1e3, n


def op_profile(model_path: Path, params: dict[str, str], feeds: list[dict[str, np.ndarray]], runs: int) -> dict:
    """ORT's profiler over ``runs`` calls: ms per call by operator type, and by category."""
    import onnxruntime as ort

    helpers = serving_helpers()
    original = ort.SessionOptions

    def profiled() -> Any:
        so = original()
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tempfile.gettempdir()) / "minilm_profile")
        return so

    ort.SessionOptions = profiled  # the template's ort_session builds its own options: profile those
    try:
        sess = helpers.ort_session(str(model_path), params)
    finally:
        ort.SessionOptions = original
    names = [i.name for i in sess.get_inputs()]
    for f in feeds[:3]:
        sess.run(None, _feed(names, f))
    trace_runs = 0
    for k in range(runs):
        sess.run(None, _feed(names, feeds[k % len(feeds)]))
        trace_runs += 1
    trace = json.loads(Path(sess.end_profiling()).read_text())
    by_op: dict[str, float] = {}
    model_run = []
    for ev in trace:
        if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
            op = ev.get("args", {}).get("op_name", "?")
            by_op[op] = by_op.get(op, 0.0) + ev["dur"]
        elif ev.get("cat") == "Session" and ev["name"] == "model_run":
            model_run.append(ev["dur"])
    warm = len(feeds[:3])
    total_runs = warm + trace_runs
    per_call = {op: us / total_runs / 1e3 for op, us in sorted(by_op.items(), key=lambda kv: -kv[1])}
    kernels = sum(per_call.values())
    categories = {"int8_gemm": 0.0, "fp32_gemm_attention": 0.0, "quantize": 0.0, "glue": 0.0}
    for op, ms in per_call.items():
        key = ("int8_gemm" if op in INT8_GEMM else "fp32_gemm_attention" if op in FP32_GEMM
               else "quantize" if op in QUANTIZE else "glue")  # fmt: skip
        categories[key] += ms
    run_ms = float(np.mean(model_run[warm:] or model_run)) / 1e3
    return {
        "model_run_ms": round(run_ms, 3),
        "kernels_ms": round(kernels, 3),
        "framework_overhead_ms": round(run_ms - kernels, 3),
        "categories_ms": {k: round(v, 3) for k, v in categories.items()},
        "categories_share": {k: round(v / kernels, 3) for k, v in categories.items()} if kernels else {},
        "ops_ms": {op: round(ms, 4) for op, ms in per_call.items()},
    }


def _feed(names: list[str], tokens: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {n: tokens[n] if n in tokens else np.zeros_like(tokens["input_ids"]) for n in names}


def in_process(model_dir: Path, seconds: float) -> dict[str, Any]:
    """Tokenize + ORT per request (one text) with the deployment's code and parameters, per workload."""
    helpers = serving_helpers()
    params = deployment_params(model_dir)
    tokenizer, pad_id, _ = helpers.load_tokenizer(str(model_dir / "1" / "tokenizer"))
    sess = helpers.ort_session(str(model_dir / "1" / "model.onnx"), params)
    names = [i.name for i in sess.get_inputs()]
    out: dict[str, Any] = {"params": params}
    for key, work in workloads().items():
        texts = texts_of(work)
        feeds = [helpers.tokenize(tokenizer, pad_id, [t]) for t in texts]
        tok_ms, _ = timed(lambda t: helpers.tokenize(tokenizer, pad_id, [t]), texts, seconds / 4)
        ort_ms, calls = timed(lambda f: sess.run(None, _feed(names, f)), feeds, seconds)
        out[key] = {
            "texts": len(texts),
            "mean_tokens": round(float(np.mean([f["input_ids"].shape[1] for f in feeds])), 1),
            "tokenize_ms": round(tok_ms, 4),
            "ort_run_ms": round(ort_ms, 3),
            "ort_calls": calls,
            "ort_profile": op_profile(model_dir / "1" / "model.onnx", params, feeds, max(20, min(calls, 200))),
        }
    return out


def padding(batch: int = 4, trials: int = 500) -> dict[str, Any]:
    """Tokens computed per text token for random batches of eval sentences: padded to the longest, or to 128."""
    from model_recipes.text_embedding import EVAL_SENTENCES, RECIPE
    from model_recipes.text_tokens import tokenize

    lengths = tokenize(RECIPE.tokenizer(), EVAL_SENTENCES, 256)["attention_mask"].sum(axis=1)
    rng = random.Random(0)
    longest, real = 0, 0
    for _ in range(trials):
        rows = [int(lengths[rng.randrange(len(lengths))]) for _ in range(batch)]
        longest += max(rows) * batch
        real += sum(rows)
    return {"batch": batch, "mean_tokens": round(float(lengths.mean()), 1), "max_tokens": int(lengths.max()),
            "computed_per_real_token_longest": round(longest / real, 3),
            "computed_per_real_token_pad128": round(128 * batch * trials / real, 3)}  # fmt: skip


def in_triton(work: Path, model_dir: Path, local: dict[str, Any], requests: int) -> dict[str, Any]:
    """Sequential one-text requests to the deployment in Triton: client latency and Triton's statistics."""
    import tritonclient.http as httpclient

    from modelops.serving.triton.local_server import TritonProcess

    out: dict[str, Any] = {}
    with TritonProcess(model_dir.parent, [model_dir.name], log_path=work / "triton.log") as server:
        client = httpclient.InferenceServerClient(url=server.http_url, network_timeout=60.0)
        for key, items in workloads().items():
            texts = texts_of(items)

            def one(text: str) -> None:
                inp = httpclient.InferInput("text", [1, 1], "BYTES")
                inp.set_data_from_numpy(np.array([[text.encode()]], dtype=object), binary_data=True)
                client.infer(model_dir.name, [inp])

            for t in texts[:5]:
                one(t)
            before = client.get_inference_statistics(model_dir.name)["model_stats"][0]
            lat = []
            for k in range(requests):
                t0 = time.perf_counter()
                one(texts[k % len(texts)])
                lat.append((time.perf_counter() - t0) * 1e3)
            after = client.get_inference_statistics(model_dir.name)["model_stats"][0]
            stats = _stats_delta(before, after)
            server_ms = stats.pop("success_ms")
            inproc = local[key]["tokenize_ms"] + local[key]["ort_run_ms"]
            out[key] = {
                "requests": requests,
                "client_p50_ms": round(float(np.percentile(lat, 50)), 3),
                "client_mean_ms": round(float(np.mean(lat)), 3),
                "triton_request_ms": round(server_ms, 3),
                **{f"triton_{k}_ms": round(v, 3) for k, v in stats.items()},
                "tokenize_plus_ort_ms": round(inproc, 3),
                "python_backend_overhead_ms": round(stats["compute_infer"] - inproc, 3),
                "http_client_overhead_ms": round(float(np.mean(lat)) - server_ms, 3),
            }
        client.close()
    return out


def _stats_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    b, a = before["inference_stats"], after["inference_stats"]
    count = max(int(a["success"]["count"]) - int(b["success"]["count"]), 1)
    keys = ("success", "queue", "compute_input", "compute_infer", "compute_output")
    return {(f"{k}_ms" if k == "success" else k): (int(a[k]["ns"]) - int(b[k]["ns"])) / count / 1e6 for k in keys}


def breakdown(local: dict[str, Any], served: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per workload, one request's client latency split into parts (ms): HTTP/client, Triton core, python backend,
    tokenization and the ORT call, the latter split by the profiler's shares (the profiler itself slows kernels,
    so its shares, not its milliseconds, are applied to the unprofiled ORT time)."""
    out: dict[str, dict[str, float]] = {}
    for key, triton in served.items():
        prof = local[key]["ort_profile"]
        ort_ms = local[key]["ort_run_ms"]
        parts = {
            "http_client": triton["http_client_overhead_ms"],
            "triton_core": triton["triton_queue_ms"]
            + triton["triton_compute_input_ms"]
            + triton["triton_compute_output_ms"],
            "python_backend": triton["python_backend_overhead_ms"],
            "tokenize": local[key]["tokenize_ms"],
            "ort_framework": ort_ms * prof["framework_overhead_ms"] / prof["model_run_ms"],
        }
        kernels = ort_ms * prof["kernels_ms"] / prof["model_run_ms"]
        for cat, share in prof["categories_share"].items():
            parts[f"ort_{cat}"] = kernels * share
        total = sum(parts.values())
        out[key] = {"total_ms": round(total, 3), **{k: round(v, 3) for k, v in parts.items()},
                    "share": {k: round(v / total, 3) for k, v in parts.items()}}  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--label", default="current", help="key of this profile in the JSON (e.g. before/after)")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "modelops-minilm-bench"))
    parser.add_argument("--variant", default="ort_int8_dynamic")
    parser.add_argument("--seconds", type=float, default=4.0, help="timing window per in-process measurement")
    parser.add_argument("--requests", type=int, default=300, help="sequential Triton requests per workload")
    args = parser.parse_args()
    work = Path(args.workdir).resolve()
    built = build_candidate(work, ["ort_fp32", args.variant])
    verdict = built["validate"]["candidates"][args.variant]
    model_dir = deployment_dir(work, built, args.variant)
    local = in_process(model_dir, args.seconds)
    profile = {
        "commit": git_head(), "variant": args.variant, "load_avg_start": load_avg(), "cpus": os.cpu_count(),
        "cosine": verdict.get("metric"), "min_cosine": (verdict.get("extra_metrics") or {}).get("min_cosine"),
        "in_process": local, "padding": padding(),
        "triton_c1": in_triton(work, model_dir, local, args.requests), "load_avg_end": load_avg(),
    }  # fmt: skip
    profile["breakdown"] = breakdown(local, profile["triton_c1"])
    existing = RESULTS / "minilm_profile.json"
    results = json.loads(existing.read_text()) if existing.exists() else {}
    results[args.label] = profile
    print(json.dumps(profile, indent=1)[:6000])
    print(f"wrote {write_results('minilm_profile', results)}")


if __name__ == "__main__":
    main()
