"""The LLM path of the export and optimize steps (generative recipes, :mod:`modelops.recipes.generative`).

export: the MLflow transformers model becomes one Hugging Face directory at ``<run prefix>/export/source_model/``
(what the ``hf_eager`` baseline serves and the builder reads) plus ``llm_eval.json`` (the recipe's held-out
texts and benchmark prompts, frozen for this run). optimize: ONNX Runtime GenAI's model builder per ``ort_genai_*``
variant (precision and options from the variant registry) writes ``<run prefix>/<variant>/model/``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from modelops.contracts.status import Status
from modelops.contracts.variants import VARIANTS, ArtifactFormat
from modelops.steps._common import StepError, download_source, load_result, step_prefix, variant_prefix
from modelops.storage import Storage, join

log = logging.getLogger("modelops.steps.llm")

EVAL_FILE = "llm_eval.json"
BUILDER_TIMEOUT_S = 1800.0
GENAI_REQUIRED = ("genai_config.json", "model.onnx", "tokenizer.json")


def generative_recipe(spec: dict[str, Any]) -> Any | None:
    """The spec's recipe when it is generative (the steps then take the LLM path), else None."""
    from modelops.recipes import UnsupportedModel, get_recipe
    from modelops.recipes.generative import is_generative

    if not spec.get("recipe"):
        return None
    try:
        recipe = get_recipe(spec["recipe"])
    except UnsupportedModel:
        return None  # not an LLM recipe we know: the tensor path reports it as it always has
    return recipe if is_generative(recipe) else None


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def export(spec: dict[str, Any], storage: Storage, recipe: Any) -> dict[str, Any]:
    """Export step for an LLM: the source as one HF directory, and the frozen evaluation data."""
    from modelops.serving.triton.llm_dir import LLM_IO

    prefix = step_prefix(spec, "export")
    source_uri = spec["source_uri"]
    with tempfile.TemporaryDirectory(prefix="modelops-export-llm-") as tmp:
        model_dir = download_source(storage, source_uri, Path(tmp) / "source_model")
        try:
            hf = recipe.hf_dir(model_dir, Path(tmp) / "hf")
        except ValueError as exc:
            raise StepError(str(exc)) from None
        texts, prompts = recipe.heldout(), recipe.prompts()
        if not texts or not prompts:
            raise StepError(f"recipe {recipe.name} ships no held-out texts or no prompts")
        source_model_uri = join(prefix, "source_model")
        storage.upload_dir(hf, source_model_uri)
        eval_path = Path(tmp) / EVAL_FILE
        eval_path.write_text(json.dumps({"texts": texts, "prompts": prompts, "max_tokens": recipe.max_tokens}))
        eval_uri = storage.upload_file(eval_path, join(prefix, EVAL_FILE))
        size = dir_size(hf)
    log.info("LLM source: %s (%.0f MB), %d held-out texts, %d prompts", source_model_uri, size / 1e6, len(texts),
             len(prompts))  # fmt: skip
    return {
        "status": Status.DONE,
        "outputs": {"onnx": None, "samples": eval_uri, "source_model": source_model_uri},
        "metrics": {"source_size_bytes": float(size)},
        "io": LLM_IO,
        "max_batch_size": 0,
        "opset": None,
        "exporter": "transformers",
        "recipe": spec["recipe"],
        "baseline_kind": "hf_eager",
        "versions": recipe.library_versions(),
        "generative": True,
    }


def builder_command(hf_dir: Path, out_dir: Path, cache_dir: Path, options: dict[str, str]) -> list[str]:
    """``python -m onnxruntime_genai.models.builder`` for one variant (CPU execution provider)."""
    opts = dict(options)
    precision = opts.pop("precision", "int4")
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out_dir),
           "-p", precision, "-e", "cpu", "-c", str(cache_dir)]  # fmt: skip
    if opts:
        cmd += ["--extra_options", *(f"{k}={v}" for k, v in sorted(opts.items()))]
    return cmd


def build_variant(variant: str, hf_dir: Path, out_dir: Path, log_path: Path) -> Path:
    """Run the model builder for ``variant``; the ORT GenAI folder at ``out_dir``.

    Raises:
        StepError: the builder is missing, fails or leaves an incomplete folder (one line, log tail kept).
    """
    info = VARIANTS[variant]
    cmd = builder_command(hf_dir, out_dir, out_dir.parent / f"{variant}-cache", info.options)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as sink:
        try:
            proc = subprocess.run(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, timeout=BUILDER_TIMEOUT_S,
                                  check=False, start_new_session=True)  # fmt: skip
        except subprocess.TimeoutExpired:
            raise StepError(f"{variant}: the model builder ran past {BUILDER_TIMEOUT_S:.0f} s") from None
    if proc.returncode != 0:
        tail = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()][-1:] or ["no output"]
        raise StepError(f"{variant}: the model builder failed (exit {proc.returncode}): {tail[0][:300]}")
    missing = [f for f in GENAI_REQUIRED if not (out_dir / f).is_file()]
    if missing:
        raise StepError(f"{variant}: the model builder wrote no {missing} in {out_dir}")
    return out_dir


def optimize(spec: dict[str, Any], storage: Storage) -> dict[str, Any]:
    """Optimize step for an LLM: one ORT GenAI build per requested ``ort_genai_*`` variant."""
    export_result = load_result(storage, spec, "export")
    wanted = [v for v in spec.get("variants") or [] if VARIANTS[v].artifact == ArtifactFormat.ONNX_GENAI]
    if not wanted:
        raise StepError(f"no LLM variant requested (got {spec.get('variants')}); LLM variants: "
                        f"{[n for n, v in VARIANTS.items() if v.artifact == ArtifactFormat.ONNX_GENAI]}")  # fmt: skip
    candidates: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="modelops-optimize-llm-") as tmp:
        work = Path(tmp)
        hf = storage.download_dir(export_result["outputs"]["source_model"], work / "hf")
        for variant in wanted:
            started, out_dir, log_path = time.time(), work / variant / "model", work / f"{variant}-builder.log"
            out_dir.parent.mkdir(parents=True, exist_ok=True)
            vprefix = variant_prefix(spec, variant)
            try:
                build_variant(variant, hf, out_dir, log_path)
                uri = join(vprefix, "model")
                storage.upload_dir(out_dir, uri)
                candidates[variant] = {"status": Status.DONE, "onnx": None, "runtime": str(VARIANTS[variant].runtime),
                                       "size_bytes": dir_size(out_dir), "artifacts": {"model_dir": uri},
                                       "seconds": round(time.time() - started, 2)}  # fmt: skip
            except StepError as exc:
                candidates[variant] = {"status": Status.FAILED, "reason": str(exc), "onnx": None,
                                       "runtime": str(VARIANTS[variant].runtime)}  # fmt: skip
            if log_path.exists():
                storage.upload_file(log_path, join(vprefix, "builder.log"))
            log.info("%s: %s", variant, candidates[variant].get("reason") or candidates[variant]["status"])
    if all(c["status"] == Status.FAILED for c in candidates.values()):
        raise StepError("; ".join(c["reason"] for c in candidates.values()))
    source_size = int(export_result.get("metrics", {}).get("source_size_bytes") or 0)
    return {"status": Status.DONE, "candidates": candidates, "source_size_bytes": source_size}
