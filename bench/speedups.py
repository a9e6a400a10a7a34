"""Speedups of every demo model's variants over its source-framework baseline, measured in one run.

Run with the worker environment: ``.venv-worker/bin/python bench/speedups.py [--models minilm,mobilenet,...]``.
For each demo model it saves the model locally (MLflow format, no server), then runs the real step CLIs
(export -> optimize -> validate -> benchmark) against a local run directory, exactly as the DAG's step
operator does, and writes ``bench/results/speedups.json``: per variant the recipe metric, p50/p99 and
throughput at each concurrency level (perf_analyzer through Triton), and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from results_io import host_info, write_results

REPO = Path(__file__).resolve().parent.parent
STEPS = ("export", "optimize", "validate", "benchmark")
DEFAULT_MODELS = ("minilm", "mobilenet", "tabular", "digits")
VARIANTS = {
    "minilm": ["ort_fp32", "ort_int8_dynamic", "ort_int8_static"],
    "mobilenet": ["ort_fp32", "ort_int8_dynamic"],
    "tabular": ["ort_fp32", "ort_int8_dynamic"],
    "digits": ["ort_fp32", "ort_int8_dynamic"],
}
BENCH = {"concurrency": [1, 2, 4, 8], "batch_size": 1, "measurement_interval_ms": 2000, "max_trials": 6, "threads": 2}


def save_model(key: str, path: Path) -> None:
    """Write the demo model ``key`` as an MLflow model directory at ``path``."""
    if key == "minilm":
        from model_recipes.text_embedding import save_local
    elif key == "mobilenet":
        from model_recipes.mobilenet_v2 import save_local
    elif key == "tabular":
        from model_recipes.sklearn_tabular import save_local
    elif key == "digits":
        from model_recipes.demo_models import save_local as save_demo

        save_demo("digits", str(path))
        return
    else:
        raise SystemExit(f"unknown model {key!r}; known: {sorted(VARIANTS)}")
    save_local(str(path))


def run_model(key: str, work: Path) -> dict[str, Any]:
    from modelops.recipes import select_recipe

    model_dir, run_dir = work / key / "model", work / key / "run"
    t0 = time.monotonic()
    save_model(key, model_dir)
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    spec = {
        "model_name": key, "model_version": "1", "alias": None, "model_uri": f"file://{model_dir}",
        "source_uri": str(model_dir), "flavor": min(mlmodel["flavors"]), "recipe": select_recipe(mlmodel),
        "mlmodel": mlmodel, "variants": VARIANTS[key], "latency_slo_ms": 1e9, "accuracy_tolerance": 0.01,
        "run_id": "bench", "run_prefix": str(run_dir), "benchmark": BENCH,
    }
    spec_path = work / key / "spec.json"
    spec_path.write_text(json.dumps(spec))
    timings: dict[str, float] = {"save_s": round(time.monotonic() - t0, 1)}
    for step in STEPS:
        t = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", f"modelops.steps.{step}", "--spec", str(spec_path), "--result",
                               str(work / key / f"{step}.json")], capture_output=True, text=True, cwd=work, check=False)
        timings[f"{step}_s"] = round(time.monotonic() - t, 1)
        if proc.returncode != 0:
            return {"error": f"{step}: {(proc.stderr.strip().splitlines() or ['?'])[-1]}", "timings": timings}
    results = {s: json.loads((work / key / f"{s}.json").read_text()) for s in ("validate", "benchmark")}
    return summarize(spec["recipe"], results["validate"], results["benchmark"], timings)


def summarize(recipe: str, validate: dict[str, Any], bench: dict[str, Any], timings: dict[str, float]) -> dict:
    base = bench["variants"].get("baseline", {})
    base_best = max((p["throughput"] for p in base.get("points", [])), default=None)
    out: dict[str, Any] = {"recipe": recipe, "metric_name": validate.get("metric_name"),
                           "source_metric": validate.get("source_metric"), "timings": timings, "variants": {}}
    for variant, res in bench["variants"].items():
        verdict = validate["candidates"].get(variant, {})
        best = max((p["throughput"] for p in res.get("points", [])), default=None)
        out["variants"][variant] = {
            "status": res.get("status"),
            "metric": verdict.get("metric", validate.get("source_metric") if variant == "baseline" else None),
            "extra_metrics": verdict.get("extra_metrics"),
            "points": res.get("points", []),
            "best_throughput": best,
            "speedup_vs_baseline": round(best / base_best, 2) if best and base_best else None,
            "reason": res.get("reason"),
        }
    for variant, verdict in validate["candidates"].items():
        if variant not in out["variants"]:
            out["variants"][variant] = {"status": verdict.get("status"), "metric": verdict.get("metric"),
                                        "reason": verdict.get("reason")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--workdir", help="keep the models, candidates and step results here (default: a temp dir)")
    args = parser.parse_args()
    results: dict[str, Any] = {"host": host_info(), "benchmark": BENCH, "models": {}}
    with tempfile.TemporaryDirectory(prefix="modelops-speedups-") as tmp:
        work = Path(args.workdir).resolve() if args.workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for key in [m.strip() for m in args.models.split(",") if m.strip()]:
            print(f"== {key}", flush=True)
            results["models"][key] = run_model(key, work)
            print(json.dumps(results["models"][key], indent=1)[:2000], flush=True)
    out = write_results("speedups", results)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
