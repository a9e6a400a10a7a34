"""The LLM path of the validate and benchmark steps.

validate (the LLM accuracy gate): every candidate and the source read the same held-out passages with teacher
forcing (one forward pass each, no sampling); per position the candidate's argmax is compared with the source's
(greedy next-token agreement) and both perplexities are computed against the real next tokens. A candidate is
accepted when agreement >= the recipe's ``min_agreement`` and its perplexity is at most ``max_perplexity_increase``
above the source's.

benchmark: the ``hf_eager`` baseline and every accepted candidate, each served as a decoupled LLM deployment in a
fresh Triton, are streamed the recipe's prompts (greedy, ``max_tokens``) at each concurrency of the spec:
time to first token, inter-token latency and output tokens/s (:mod:`modelops.evaluation.llm_perf`). Points carry
``throughput`` = output tokens/s and ``p99_ms`` = TTFT p99, so select picks the most tokens/s within the TTFT SLO.
"""

from __future__ import annotations

import csv
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from modelops.contracts.status import Status
from modelops.steps._common import StepError, first_line, load_result, upload_measurement, variant_prefix
from modelops.storage import Storage, join

log = logging.getLogger("modelops.steps.llm")

BASELINE = "baseline"
THREADS = 2


# -- validate ---------------------------------------------------------------------------------------
def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def source_logits(hf_dir: Path, token_ids: list[np.ndarray]) -> list[np.ndarray]:
    """Logits of the source model (transformers, fp32, eager) for each sequence ``[1, n]``: ``[n, vocab]`` each."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(THREADS)
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        return [model(torch.from_numpy(ids)).logits[0].float().numpy() for ids in token_ids]


def genai_logits(model_dir: Path, token_ids: list[np.ndarray]) -> list[np.ndarray]:
    """Logits of an ONNX Runtime GenAI decoder folder for each sequence, one prefill pass with an empty KV cache.

    The past key/value inputs get zero-length sequences; their head count and size come from genai_config.json.
    """
    import onnxruntime as ort

    decoder = json.loads((model_dir / "genai_config.json").read_text())["model"]["decoder"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    session = ort.InferenceSession(str(model_dir / decoder.get("filename", "model.onnx")), options,
                                   providers=["CPUExecutionProvider"])  # fmt: skip
    kv_heads, head_size = int(decoder["num_key_value_heads"]), int(decoder["head_size"])
    out = []
    for ids in token_ids:
        feed: dict[str, np.ndarray] = {}
        for spec in session.get_inputs():
            if spec.name == "input_ids":
                feed[spec.name] = ids
            elif spec.name == "attention_mask":
                feed[spec.name] = np.ones_like(ids)
            elif spec.name == "position_ids":
                feed[spec.name] = np.arange(ids.shape[1], dtype=np.int64)[None, :]
            elif spec.name.startswith("past_key_values"):
                dtype = np.float16 if "float16" in spec.type else np.float32
                feed[spec.name] = np.zeros((1, kv_heads, 0, head_size), dtype=dtype)
            else:
                raise StepError(f"{model_dir.name}: unexpected decoder input {spec.name!r}")
        out.append(session.run(["logits"], feed)[0][0].astype(np.float32))
    return out


def compare(source: list[np.ndarray], candidate: list[np.ndarray], token_ids: list[np.ndarray]) -> dict[str, float]:
    """Greedy next-token agreement and perplexities over every predicted position of every passage."""
    agree = positions = 0
    nll_src = nll_cand = 0.0
    for src, cand, ids in zip(source, candidate, token_ids, strict=True):
        if src.shape != cand.shape:
            raise StepError(f"candidate logits have shape {cand.shape}, the source's {src.shape}")
        target = ids[0, 1:]
        idx = np.arange(len(target))
        agree += int((src[:-1].argmax(-1) == cand[:-1].argmax(-1)).sum())
        positions += len(target)
        nll_src -= float(_log_softmax(src[:-1])[idx, target].sum())
        nll_cand -= float(_log_softmax(cand[:-1])[idx, target].sum())
    ppl_src, ppl_cand = float(np.exp(nll_src / positions)), float(np.exp(nll_cand / positions))
    return {"agreement": agree / positions, "perplexity": ppl_cand, "source_perplexity": ppl_src,
            "perplexity_increase": ppl_cand / ppl_src - 1.0, "positions": float(positions)}  # fmt: skip


def gate(stats: dict[str, float], min_agreement: float, max_increase: float) -> str | None:
    """None when the candidate passes, else the one-line reason."""
    reasons = []
    if not np.isfinite(stats["perplexity"]):
        return "perplexity is not finite"
    if stats["agreement"] < min_agreement:
        reasons.append(f"next-token agreement {stats['agreement']:.3f} < {min_agreement:g}")
    if stats["perplexity_increase"] > max_increase:
        reasons.append(f"perplexity {stats['perplexity']:.2f} is {100 * stats['perplexity_increase']:.1f}% above the "
                       f"source's {stats['source_perplexity']:.2f} (max {100 * max_increase:g}%)")  # fmt: skip
    return "; ".join(reasons) or None


def validate(spec: dict[str, Any], storage: Storage, recipe: Any) -> dict[str, Any]:
    """Validate step for an LLM: the gate above on every built candidate."""
    from transformers import AutoTokenizer

    export = load_result(storage, spec, "export")
    optimize = load_result(storage, spec, "optimize")
    verdicts: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="modelops-validate-llm-") as tmp:
        work = Path(tmp)
        hf = storage.download_dir(export["outputs"]["source_model"], work / "hf")
        texts = json.loads(storage.read_bytes(export["outputs"]["samples"]))["texts"]
        tokenizer = AutoTokenizer.from_pretrained(str(hf))
        token_ids = [np.asarray(tokenizer(t)["input_ids"], dtype=np.int64)[None, :] for t in texts]
        started = time.time()
        reference = source_logits(hf, token_ids)
        log.info("source logits on %d passages in %.1f s", len(texts), time.time() - started)
        for variant, cand in optimize["candidates"].items():
            if cand.get("status") != Status.DONE:
                verdicts[variant] = {"status": Status.FAILED, "reason": cand.get("reason") or "not built"}
                continue
            try:
                model_dir = storage.download_dir(cand["artifacts"]["model_dir"], work / variant)
                stats = compare(reference, genai_logits(model_dir, token_ids), token_ids)
            except Exception as exc:  # noqa: BLE001 - one broken candidate must not stop the others
                verdicts[variant] = {"status": Status.FAILED, "reason": first_line(exc)}
                continue
            reason = gate(stats, recipe.min_agreement, recipe.max_perplexity_increase)
            comparison = join(variant_prefix(spec, variant), "llm_gate.json")
            storage.write_json(comparison, stats)
            failed = [{"expectation": name, "column": None, "observed": stats[key], "bound": bound}
                      for name, key, bound, ok in (
                          ("min_next_token_agreement", "agreement", recipe.min_agreement,
                           stats["agreement"] >= recipe.min_agreement),
                          ("max_perplexity_increase", "perplexity_increase", recipe.max_perplexity_increase,
                           stats["perplexity_increase"] <= recipe.max_perplexity_increase)) if not ok]  # fmt: skip
            verdicts[variant] = {"status": Status.REJECTED if reason else Status.ACCEPTED, "reason": reason,
                                 "metric": stats["agreement"], "source_metric": 1.0, "comparison": comparison,
                                 "extra_metrics": stats, "expectations": {"success": not reason, "failed": failed}}  # fmt: skip
            log.info("%s: %s agreement %.3f, perplexity %.2f vs %.2f", variant, verdicts[variant]["status"],
                     stats["agreement"], stats["perplexity"], stats["source_perplexity"])  # fmt: skip
    return {"status": Status.DONE, "source_metric": 1.0, "metric_name": recipe.metric_name,
            "accuracy_tolerance": round(1.0 - recipe.min_agreement, 6), "candidates": verdicts,
            "max_perplexity_increase": recipe.max_perplexity_increase}  # fmt: skip


# -- benchmark --------------------------------------------------------------------------------------
def _write_csv(points: list[dict[str, Any]], path: Path) -> Path:
    keys = sorted({k for p in points for k in p})
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(points)
    return path


def benchmark_llm_target(variant: str, llm_variant: str, model_dir: Path, *, work: Path, prompts: list[str],
                         concurrencies: list[int], max_tokens: int) -> dict[str, Any]:  # fmt: skip
    """Serve one LLM deployment in a fresh Triton and stream the prompts at each concurrency; never raises."""
    from modelops.evaluation import llm_perf
    from modelops.serving.triton.llm_dir import build_llm_model_dir
    from modelops.serving.triton.local_server import TritonProcess, TritonStartError

    started, name = time.time(), f"llm_{variant}"
    vdir = work / variant
    triton_log = vdir / "triton.log"
    out: dict[str, Any] = {"status": Status.FAILED, "kind": f"llm/{llm_variant}", "points": [], "reason": None,
                           "log_paths": [triton_log], "csv_path": None}  # fmt: skip
    build_llm_model_dir(vdir / "repo" / name, name=name, model_dir=model_dir, variant=llm_variant)
    try:
        with TritonProcess(vdir / "repo", [name], log_path=triton_log, timeout_s=300.0) as triton:

            def stream(messages: list[dict[str, str]], params: dict[str, Any]) -> Any:
                return llm_perf.triton_stream(triton.http_url, name, messages, params)

            warm = llm_perf.measure_level(stream, prompts[:1], 1, 1, 8)  # load caches, first-call costs
            if warm["errors"]:
                raise RuntimeError(f"the warm-up request failed: {warm.get('first_error') or 'no answer'}")
            points = []
            for c in concurrencies:
                point = llm_perf.measure_level(stream, prompts, c, max(len(prompts), 2 * c), max_tokens)
                if point["errors"]:
                    raise RuntimeError(f"{point['errors']} of {point['requests']} requests failed at concurrency {c}")
                points.append(point)
            out["points"] = points
            out["csv_path"] = _write_csv(points, vdir / "perf.csv")
            out["status"] = Status.DONE
    except TritonStartError as exc:
        out["reason"] = f"Triton could not serve {variant}: {exc.reason}"
    except Exception as exc:  # noqa: BLE001 - reported on the candidate
        out["reason"] = first_line(exc)
    out["seconds"] = round(time.time() - started, 2)
    log.info("%s: %s %s", variant, out["status"], out["reason"] or
             [(p["concurrency"], round(p["throughput"], 1), round(p["p99_ms"] or 0)) for p in out["points"]])
    return out


def benchmark(spec: dict[str, Any], storage: Storage) -> dict[str, Any]:
    """Benchmark step for an LLM: the hf_eager baseline first (its failure fails the step), then accepted candidates."""
    export = load_result(storage, spec, "export")
    validate_result = load_result(storage, spec, "validate")
    optimize = load_result(storage, spec, "optimize")
    concurrencies = [int(c) for c in (spec.get("benchmark") or {}).get("concurrency") or [1, 4]]
    variants: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="modelops-benchmark-llm-") as tmp:
        work = Path(tmp)
        frozen = json.loads(storage.read_bytes(export["outputs"]["samples"]))
        prompts, max_tokens = list(frozen["prompts"]), int(frozen.get("max_tokens") or 64)
        targets = [(BASELINE, "hf_eager", export["outputs"]["source_model"])]
        for variant, verdict in validate_result["candidates"].items():
            if verdict.get("status") == Status.ACCEPTED:
                targets.append((variant, variant, optimize["candidates"][variant]["artifacts"]["model_dir"]))
        for variant, llm_variant, uri in targets:
            model_dir = storage.download_dir(uri, work / "models" / variant)
            res = benchmark_llm_target(variant, llm_variant, model_dir, work=work / "runs", prompts=prompts,
                                       concurrencies=concurrencies, max_tokens=max_tokens)  # fmt: skip
            variants[variant] = upload_measurement(storage, spec, variant, res)
            if variant == BASELINE and res["status"] != Status.DONE:
                raise StepError(f"baseline (hf_eager in Triton) failed: {res['reason']}")
    from modelops.serving.triton.llm_dir import DEFAULT_THREADS

    settings = {"concurrency": concurrencies, "prompts": len(prompts), "max_tokens": max_tokens, "greedy": True,
                "threads": dict(DEFAULT_THREADS), "metric": "output tokens/s; p50/p99 = time to first token (ms)"}  # fmt: skip
    return {"status": Status.DONE, "variants": variants, "settings": settings}
