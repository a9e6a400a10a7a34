"""LLM serving (issue 11): TTFT, inter-token latency and output tokens/s of SmolLM2 served three ways.

Targets, each measured with :mod:`modelops.evaluation.llm_perf` (same prompts, greedy, fixed ``max_tokens``,
concurrency 1, 2 and 4, after one warm-up request per prompt):

- ``hf_eager`` / ``ort_genai_int8`` / ``ort_genai_int4``: each LLM variant in its own private Triton (``TritonProcess`` on a local
  repository built with ``build_llm_model_dir(..., variant=...)``), streamed through ``generate_stream``;
  the HF directory is SmolLM2 dequantized from its GGUF (``load_smollm2``), the ORT GenAI folder is built from it
  with ``python -m onnxruntime_genai.models.builder -p int4 -e cpu`` (the optimize step's command);
- ``llamacpp``: llama.cpp's OpenAI server (``llama_cpp.server``, ``make llamacpp`` builds its venv) on the GGUF
  the registered model came from (``smollm2_gguf()``), 2 threads, through ``/v1/chat/completions``;
- ``gateway`` (``--gateway``): the running stack's gateway ``/v1/chat/completions`` for ``--model`` with a
  temporary API key (``make demo`` routes ``smollm2_chat``).

Every server gets 2 threads (the machine has 2 cores). It runs in the worker venv (torch, transformers,
onnxruntime-genai, the GGUF package, and the Triton model's site-packages)::

    .venv-worker/bin/python bench/llm.py                         # hf_eager, ort_genai_int8, ort_genai_int4, llamacpp
    .venv-worker/bin/python bench/llm.py --targets llamacpp --gateway
    .venv-worker/bin/python bench/llm.py --requests 2 --note "verification run, noisy shared machine"

It writes ``bench/results/llm.json`` (per target: server, what it served, one point per concurrency with
``ttft_p50_ms``/``ttft_p90_ms``/``itl_p50_ms``/``throughput`` (output tokens/s) ...) and prints a table. A
target that cannot start is recorded with its error and the others still run.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from results_io import write_results

from modelops.evaluation import llm_perf

REPO = Path(__file__).resolve().parent.parent

PROMPTS = (
    "What is the capital of France?",
    "Name three primary colors.",
    "Explain what a GPU is in one sentence.",
    "Write a haiku about the sea.",
)
TRITON_TARGETS = ("hf_eager", "ort_genai_int8", "ort_genai_int4")
ALL_TARGETS = (*TRITON_TARGETS, "llamacpp")
LLAMACPP_PYTHON = REPO / ".venv-llamacpp" / "bin" / "python"
THREADS = 2
START_TIMEOUT_S = 300.0


def run_target(stream_fn: llm_perf.StreamFn, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Warm up with each prompt once (llama.cpp's first pass over the prompts was several times slower), then
    every concurrency level."""
    llm_perf.measure_level(stream_fn, PROMPTS, 1, len(PROMPTS), args.max_tokens)
    return llm_perf.measure(stream_fn, PROMPTS, args.concurrency, args.requests, args.max_tokens)


def hf_dir(work: Path, given: Path | None) -> Path:
    """The HF SmolLM2 directory: ``given``, or SmolLM2 dequantized from its GGUF and saved under ``work``."""
    if given:
        return given
    out = work / "smollm2_hf"
    if not (out / "config.json").is_file():
        from model_recipes.demo_models import load_smollm2

        model, tokenizer = load_smollm2()
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    return out


def genai_dir(work: Path, hf: Path, variant: str, given: Path | None) -> Path:
    """The ORT GenAI folder of ``variant``: ``given``, or built from ``hf`` the way the optimize step builds it
    (:func:`modelops.steps.llm_build.build_variant`: precision and options from the variant registry)."""
    from modelops.steps.llm_build import build_variant

    if given:
        return given
    out = work / f"smollm2_{variant}"
    if not (out / "genai_config.json").is_file():
        build_variant(variant, hf, out, work / f"builder-{variant}.log")
    return out


def triton_target(variant: str, model_dir: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Serve ``variant`` alone in a private Triton and measure it through ``generate_stream``."""
    from modelops.serving.triton.llm_dir import build_llm_model_dir
    from modelops.serving.triton.local_server import TritonProcess

    name = f"smollm2_chat--bench-{variant}"
    repo = work / f"repo-{variant}"
    # each runtime's serving defaults (llm_dir.DEFAULT_THREADS: 2 for transformers, 1 for onnxruntime-genai)
    build_llm_model_dir(repo / name, name=name, model_dir=model_dir, variant=variant)
    log_path = work / f"triton-{variant}.log"
    with TritonProcess(repo, [name], log_path=log_path, timeout_s=START_TIMEOUT_S) as triton:
        fn = functools.partial(llm_perf.triton_stream, f"http://{triton.http_url}", name)
        points = run_target(fn, args)
    return {"server": "triton generate_stream", "deployment": name, "model_dir": str(model_dir), "points": points}


def answers(port: int, path: str) -> bool:
    """``GET http://127.0.0.1:<port><path>`` answers 200 (no proxy is consulted)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


@contextlib.contextmanager
def llamacpp_server(gguf: Path, work: Path) -> Iterator[str]:
    """llama.cpp's OpenAI server on a free loopback port; yields its base URL, stops it afterwards."""
    from modelops.serving.triton.local_server import free_port

    if not LLAMACPP_PYTHON.exists():
        raise RuntimeError(f"{LLAMACPP_PYTHON} is missing: run `make llamacpp` (builds llama-cpp-python)")
    port = free_port()
    # by default a new request interrupts the one being generated: queue them instead, as Triton does
    cmd = [str(LLAMACPP_PYTHON), "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
           "--port", str(port), "--n_threads", str(THREADS), "--n_ctx", "2048",
           "--interrupt_requests", "false"]  # fmt: skip
    log_path = work / "llamacpp.log"
    with log_path.open("ab") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
                raise RuntimeError(f"llama_cpp.server exited with {proc.returncode}: {' | '.join(tail)}")
            if answers(port, "/v1/models"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama_cpp.server not ready after {START_TIMEOUT_S:.0f} s (log {log_path})")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def llamacpp_target(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The registered model's GGUF in llama.cpp's OpenAI server, measured through /v1/chat/completions."""
    from model_recipes.demo_models import smollm2_gguf

    gguf = smollm2_gguf()
    with llamacpp_server(gguf, work) as url:
        fn = functools.partial(llm_perf.openai_stream, url, gguf.stem)
        points = run_target(fn, args)
        token_check = chunk_count_check(url, gguf.stem, args.max_tokens)
    version = subprocess.run([str(LLAMACPP_PYTHON), "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                             capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
    return {"server": f"llama-cpp-python {version} /v1/chat/completions", "gguf": gguf.name, "points": points,
            "token_count": token_check}  # fmt: skip


def chunk_count_check(url: str, model: str, max_tokens: int) -> dict[str, Any]:
    """llama-cpp-python streams no usage, so its output tokens are counted as content chunks: compare that count
    with the ``usage.completion_tokens`` of the same greedy request answered without streaming."""
    messages = [{"role": "user", "content": PROMPTS[0]}]
    params = {"max_tokens": max_tokens, "temperature": 0}
    chunks = sum(1 for e in llm_perf.openai_stream(url, model, messages, params) if e.text)
    parts = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(parts[0], int(parts[1]), timeout=300)
    try:
        body = json.dumps({"model": model, "messages": messages, **params})
        conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        usage = json.loads(conn.getresponse().read()).get("usage") or {}
    finally:
        conn.close()
    return {"method": "content chunks", "prompt": PROMPTS[0], "content_chunks": chunks,
            "usage_completion_tokens": usage.get("completion_tokens")}  # fmt: skip


def gateway_target(args: argparse.Namespace) -> dict[str, Any]:
    """The running stack's gateway /v1/chat/completions for ``args.model`` with a temporary API key."""
    from modelops.local import stack

    status = stack.status()
    name = f"bench-llm-{int(time.time())}"
    keys = [str(REPO / ".venv" / "bin" / "modelops"), "keys"]
    created = subprocess.run([*keys, "create", "--name", name, "--models", args.model, "--json"],
                             check=True, capture_output=True, text=True)  # fmt: skip
    key = json.loads(created.stdout)["key"]
    try:
        url = status["gateway"]["url"]
        points = run_target(functools.partial(llm_perf.openai_stream, url, args.model, api_key=key), args)
    finally:
        subprocess.run([*keys, "revoke", name], check=False, capture_output=True)
    return {"server": "gateway /v1/chat/completions", "gateway": url, "model": args.model, "points": points}


def table(targets: dict[str, dict[str, Any]]) -> str:
    """target | concurrency | TTFT p50/p90 | ITL p50 | output tok/s | errors, one row per point."""
    rows = [f"{'target':<16} {'conc':>4} {'TTFT p50':>9} {'TTFT p90':>9} {'ITL p50':>8} {'tok/s':>7} {'err':>4}"]

    def ms(value: float | None) -> str:
        return f"{value:.0f}" if value is not None else "-"

    for target, block in targets.items():
        if "error" in block:
            rows.append(f"{target:<16} failed: {block['error'][:90]}")
            continue
        for p in block["points"]:
            rows.append(f"{target:<16} {p['concurrency']:>4} {ms(p['ttft_p50_ms']):>9} {ms(p['ttft_p90_ms']):>9} "
                        f"{ms(p['itl_p50_ms']):>8} {p['throughput']:>7.1f} {p['errors']:>4}")  # fmt: skip
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default=",".join(ALL_TARGETS), help=f"comma-separated, of {ALL_TARGETS}")
    parser.add_argument("--gateway", action="store_true", help="also measure the running stack's gateway")
    parser.add_argument("--model", default="smollm2_chat", help="the model name at the gateway")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--requests", type=int, default=8, help="requests per concurrency level")
    parser.add_argument("--concurrency", default="1,2,4")
    parser.add_argument("--hf-dir", type=Path, help="an HF SmolLM2 directory (default: saved from the GGUF)")
    parser.add_argument("--genai-dir", type=Path, help="an ORT GenAI INT4 folder (default: built from --hf-dir)")
    parser.add_argument("--work", type=Path, help="working directory (default: a temporary one)")
    parser.add_argument("--note", default="", help="recorded in the results (e.g. 'noisy shared machine')")
    args = parser.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    wanted = [t for t in args.targets.split(",") if t]
    unknown = sorted(set(wanted) - set(ALL_TARGETS))
    if unknown:
        parser.error(f"unknown targets {unknown}; known: {list(ALL_TARGETS)}")

    targets: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack_:
        work = args.work or Path(stack_.enter_context(tempfile.TemporaryDirectory(prefix="bench-llm-")))
        work.mkdir(parents=True, exist_ok=True)
        for target in wanted:
            started = time.perf_counter()
            print(f"== {target}", file=sys.stderr, flush=True)
            try:
                if target == "hf_eager":
                    targets[target] = triton_target(target, hf_dir(work, args.hf_dir), work, args)
                elif target.startswith("ort_genai_"):
                    model = genai_dir(work, hf_dir(work, args.hf_dir), target,
                                      args.genai_dir if target == "ort_genai_int4" else None)
                    targets[target] = triton_target(target, model, work, args)
                else:
                    targets[target] = llamacpp_target(work, args)
            except Exception as exc:  # noqa: BLE001 - one target failing leaves the others measured
                targets[target] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
            targets[target]["seconds"] = round(time.perf_counter() - started, 1)
        if args.gateway:
            try:
                targets["gateway"] = gateway_target(args)
            except Exception as exc:  # noqa: BLE001
                targets["gateway"] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}

    results = {
        "note": args.note,
        "command": shlex.join([".venv-worker/bin/python", "bench/llm.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "threads_per_server": {"llamacpp": THREADS, "triton": "llm_dir.DEFAULT_THREADS (hf_eager 2, ort_genai 1)"}},
        "prompts": list(PROMPTS),
        "decoding": "greedy",
        "max_tokens": args.max_tokens,
        "requests_per_level": args.requests,
        "concurrency": args.concurrency,
        "targets": targets,
    }
    out = write_results("llm", results)
    print(table(targets))
    print(f"wrote {out}", file=sys.stderr)
    return 0 if all("error" not in block for block in targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
