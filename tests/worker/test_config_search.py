"""The configuration search in a real tritonserver with real perf_analyzer, on the digits candidate (tiny budget):
each configuration is reloaded through the repository API and verified against what Triton serves."""

from __future__ import annotations

import csv
import json
import os
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from model_recipes.demo_models import save_local
from modelops.evaluation.config_search import SearchSpace, ServingConfig
from modelops.evaluation.perf import PerfSettings
from modelops.evaluation.triton_bench import WARMUP_ROUNDS, model_name, warm_up
from modelops.serving.triton.local_server import TritonProcess
from modelops.settings import Settings
from modelops.steps.benchmark import Target, benchmark_target, write_model_dir
from tests.worker.stepkit import run_spec, step, write_spec

pytestmark = pytest.mark.skipif(not Settings.from_env().tritonserver_bin.exists(), reason="tritonserver not installed")


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> dict:
    """digits_cnn exported to ONNX (the ort_fp32 candidate's model) with its io."""
    tmp = tmp_path_factory.mktemp("digits")
    save_local("digits", str(tmp / "source_model"), "pt2")
    spec = run_spec(tmp / "run", model_name="digits", recipe="digits_cnn", source_uri=str(tmp / "source_model"),
                    variants=["ort_fp32"])  # fmt: skip
    return step("export", write_spec(tmp, spec))


def test_search_reloads_each_configuration_in_one_triton(digits, tmp_path):
    perf = PerfSettings.from_spec({"concurrency": [1, 4], "measurement_interval_ms": 400, "max_trials": 4})
    onnx = Path(digits["outputs"]["onnx"])
    out = benchmark_target(Target("ort_fp32", "onnxruntime", onnx), io=digits["io"], max_batch_size=64, perf=perf,
                           work=tmp_path, search_budget_s=25.0, slo_ms=1000.0)  # fmt: skip
    assert out["status"] == "done", out["reason"]
    search = out["config_search"]
    trials = search["points"]
    keys = [t["key"] for t in trials]
    assert len(keys) == len(set(keys)) >= 2, keys  # the start and reloaded configurations, each once
    assert trials[0]["config"] == ServingConfig(threads=2, max_batch_size=64).as_dict()
    # the CPU space of this machine (placements follow its cores); max_batch_size stays the model's 64
    space = SearchSpace.for_cpu(os.cpu_count() or 1, 64, [1, 4])
    assert space.max_batch_size == (64,) and search["measured"] < search["space_size"] == space.size
    # every reload served exactly the configuration asked for (TritonMeasure compares Triton's own config)
    assert all(t["error"] is None for t in trials), [t["error"] for t in trials if t["error"]]
    assert search["reloads"] == len(trials) - 1  # the start was measured as loaded (and warm): no reload
    # each reload was warmed up (a discarded perf_analyzer window) before its point was measured
    assert (tmp_path / "ort_fp32" / "search" / "warmup.csv").is_file()
    # every point, the start too (measured again with the search's short windows, like for like), measured
    # concurrency 4 first, and it met the 1 s SLO, so concurrency 1 (which cannot beat it) was not measured
    assert all([p["concurrency"] for p in t["points"]] == [4] for t in trials), [t["points"] for t in trials]
    rows = list(csv.DictReader((tmp_path / "ort_fp32" / "config_search.csv").open()))
    assert {r["config"] for r in rows} == set(keys) and len(rows) == len(keys)
    # the result's configuration is one measured in full, and its points are that configuration's
    full = {ServingConfig.from_dict(c["config"]).key(): c["points"] for c in out["configs"]}
    assert ServingConfig.from_dict(out["config"]).key() in full
    assert out["points"] == full[ServingConfig.from_dict(out["config"]).key()]
    assert search["best_key"] in full


def test_warm_up_sends_concurrent_rounds_in_process(digits, tmp_path):
    """The step's warm-up after a reload: WARMUP_ROUNDS rounds of `level` concurrent one-row requests, all answered
    (Triton's own statistics count them), no perf_analyzer started."""
    import numpy as np

    target = Target("ort_fp32", "onnxruntime", Path(digits["outputs"]["onnx"]))
    perf = PerfSettings.from_spec({"concurrency": [1, 4]})
    write_model_dir(target, tmp_path / "repo", io=digits["io"], max_batch_size=64, perf=perf)
    name = model_name(target)
    with np.load(digits["outputs"]["samples"]) as npz:
        samples = {t["name"]: npz[t["name"]] for t in digits["io"]["inputs"]}
    with TritonProcess(tmp_path / "repo", [name], log_path=tmp_path / "triton.log") as triton:
        warm_up(triton, name, samples, level=4)
        with urllib.request.urlopen(f"http://{triton.http_url}/v2/models/{name}/stats", timeout=10) as resp:
            stats = json.loads(resp.read())["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] == 4 * WARMUP_ROUNDS
    assert stats["inference_stats"]["fail"]["count"] == 0
    assert not list(tmp_path.rglob("warmup*.csv"))
