"""export -> optimize -> validate -> benchmark on real tiny models, with local paths as URIs.

Run in the worker environment: ``.venv-worker/bin/python -m pytest tests/worker``. Models are trained
in seconds and saved with ``mlflow.pytorch.save_model`` (digits as pt2, wine as pickle); no server.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from model_recipes.demo_models import save_local
from modelops.contracts import RunSpec
from modelops.settings import Settings
from modelops.steps import optimize
from modelops.steps._common import StepError
from modelops.steps.validate import validate_candidates
from modelops.storage import Storage
from tests.worker.stepkit import Pipelines, step, write_spec

REPO = Path(__file__).resolve().parents[2]
MODELS = {"digits": ("digits_cnn", "pt2"), "wine": ("pytorch_generic", "pickle")}


@pytest.fixture(scope="session")
def saved_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    out = {}
    for kind, (_, serialization) in MODELS.items():
        save_local(kind, str(root / kind), serialization)
        out[kind] = root / kind
    return out


def make_spec(tmp: Path, kind: str, model_dir: Path, **overrides: Any) -> Path:
    import yaml

    spec = {
        "model_name": kind, "model_version": "1", "alias": None, "model_uri": f"models:/{kind}/1",
        "source_uri": str(model_dir), "flavor": "pytorch", "recipe": MODELS[kind][0],
        "mlmodel": yaml.safe_load((model_dir / "MLmodel").read_text()),
        "variants": ["ort_fp32", "ort_int8_dynamic"], "latency_slo_ms": 50.0, "accuracy_tolerance": 0.01,
        "run_id": "t1", "run_prefix": str(tmp / "run"),
        "benchmark": {"concurrency": [1, 4], "batch_size": 1, "measurement_interval_ms": 500, "max_trials": 4, "threads": 2},
    }  # fmt: skip
    return write_spec(tmp, spec, **overrides)



@pytest.fixture(scope="session")
def pipelines(saved_models, tmp_path_factory) -> Pipelines:
    """export, optimize and validate a model (once per model); results keyed by step."""

    def build(kind: str) -> dict[str, Any]:
        spec_path = make_spec(tmp_path_factory.mktemp(f"run-{kind}"), kind, saved_models[kind])
        results = {name: step(name, spec_path) for name in ("export", "optimize", "validate")}
        return {"kind": kind, "spec_path": spec_path, "spec": json.loads(spec_path.read_text()), **results}

    return Pipelines(build)


@pytest.fixture(params=sorted(MODELS))
def pipeline(request, pipelines) -> dict[str, Any]:
    return pipelines(request.param)


def test_export(pipeline):
    res, spec = pipeline["export"], pipeline["spec"]
    assert res["status"] == "done" and res["opset"] >= 17
    assert res["metrics"]["parity_max_abs_diff"] < 1e-4
    onnx_path = Path(res["outputs"]["onnx"])
    assert onnx_path.is_file() and not list(onnx_path.parent.glob("*.data"))  # single file
    assert (Path(res["outputs"]["source_model"]) / "MLmodel").is_file()
    io = res["io"]
    assert res["max_batch_size"] > 0
    assert io["inputs"][0]["dims"] == ([1, 8, 8] if pipeline["kind"] == "digits" else [13])
    assert io["outputs"][0]["dims"] == ([10] if pipeline["kind"] == "digits" else [3])
    with np.load(res["outputs"]["samples"]) as npz:
        assert {"input", "output:output"} <= set(npz.files)
    assert set(res["versions"]) == {"torch", "onnx", "onnxruntime"}
    # the exact spec is kept next to the outputs, and the result is also under the run prefix
    # the exact spec the step ran with: the test's spec completed by the contract (every block at its defaults)
    assert json.loads((Path(spec["run_prefix"]) / "export" / "spec.json").read_text()) == RunSpec.parse(spec).to_json()
    assert (Path(spec["run_prefix"]) / "export" / "result.json").is_file()
    # ... and a script that re-runs the step by hand with that exact spec
    script = (Path(spec["run_prefix"]) / "export" / "reproduce.sh").read_text()
    assert f"-m modelops.steps.export --spec {Path(spec['run_prefix']) / 'export' / 'spec.json'}" in script


def test_onnx_has_dynamic_batch(pipeline):
    import onnxruntime as ort

    session = ort.InferenceSession(pipeline["export"]["outputs"]["onnx"], providers=["CPUExecutionProvider"])
    dims = [1, 8, 8] if pipeline["kind"] == "digits" else [13]
    for batch in (1, 5):
        (out,) = session.run(None, {"input": np.zeros([batch, *dims], np.float32)})
        assert out.shape[0] == batch


def test_optimize(pipeline):
    cands = pipeline["optimize"]["candidates"]
    assert {v: c["status"] for v, c in cands.items()} == {"ort_fp32": "done", "ort_int8_dynamic": "done"}
    fp32_size = Path(pipeline["export"]["outputs"]["onnx"]).stat().st_size
    assert cands["ort_int8_dynamic"]["size_bytes"] < 0.6 * fp32_size
    assert Path(cands["ort_int8_dynamic"]["onnx"]).stat().st_size == cands["ort_int8_dynamic"]["size_bytes"]


def test_validate(pipeline):
    res = pipeline["validate"]
    if pipeline["kind"] == "digits":
        assert res["metric_name"] == "accuracy" and res["source_metric"] > 0.9
    else:
        assert res["metric_name"] == "cosine" and res["source_metric"] == pytest.approx(1.0)
    task = "classification" if pipeline["kind"] == "digits" else "embedding"
    for variant, cand in res["candidates"].items():
        assert cand["status"] == "accepted", (variant, cand)
        assert cand["metric"] >= res["source_metric"] - 0.01
        assert cand["agreement"] >= 0.95
        with np.load(cand["sample_outputs"]) as npz:
            assert npz.files == ["output"]
        # the great-expectations gate passed, and its table and GX result sit next to the candidate
        gx = cand["expectations"]
        assert gx["success"] is True and gx["failed"] == [] and gx["suite"].startswith(f"accuracy_gate.{task}")
        assert gx["uri"] == str(Path(pipeline["spec"]["run_prefix"]) / variant / "expectations.json")
        assert json.loads(Path(gx["uri"]).read_text())["success"] is True
        table = Path(cand["comparison"]).read_text().splitlines()
        assert table[0].startswith("sample,") and {"agree", "cosine", "abs_err_max", "is_finite"} <= set(table[0].split(","))
        assert len(table) - 1 == (540 if pipeline["kind"] == "digits" else 256)  # one row per eval sample
        assert cand["extra_metrics"] == {}  # these recipes define no extra metrics
    assert res["candidates"]["ort_fp32"]["max_abs_diff"] < 1e-4


def test_validate_rejects_corrupted_candidate(pipeline, tmp_path):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(pipeline["export"]["outputs"]["onnx"])
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:  # scramble every weight matrix: same graph, garbage numbers
        arr = numpy_helper.to_array(init)
        if arr.dtype == np.float32 and arr.ndim >= 2:
            init.CopyFrom(numpy_helper.from_array(rng.standard_normal(arr.shape).astype(np.float32), init.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    spec = pipeline["spec"]
    _, metric_name, results = validate_candidates(
        spec["recipe"], pipeline["export"]["io"], Path(pipeline["export"]["outputs"]["onnx"]), {"broken": bad}, 0.01
    )
    broken = results["broken"]
    assert broken["status"] == "rejected"
    assert broken["reason"].startswith(f"{metric_name} ") and "is below source" in broken["reason"]
    # the expectation suite fails too, and says which expectation on which column, with the observed value
    assert broken["expectations"]["success"] is False and "failed expectations: expect_column_" in broken["reason"]
    failed = broken["expectations"]["failed"][0]
    assert failed["column"] in ("agree", "cosine") and failed["observed"] is not None
    assert "table" not in broken and "gx_result" not in broken  # JSON-only result


def test_validate_gates_on_expectations_and_skips_tensorrt(pipeline, tmp_path, monkeypatch):
    """A candidate whose metric passes but whose per-sample gate fails is rejected; TensorRT-only ones skip."""
    from modelops.recipes import get_recipe

    spec = pipeline["spec"]
    recipe = get_recipe(spec["recipe"])
    source = Path(pipeline["export"]["outputs"]["onnx"])
    # a strict recipe: every row must pass (cosine >= 0.999999 for the embedding gate); the metric rule still passes
    monkeypatch.setattr(recipe, "gate_min_cosine", 0.999999, raising=False)
    monkeypatch.setattr(recipe, "gate_mostly", 1.0, raising=False)
    monkeypatch.setattr(recipe, "task", "embedding", raising=False)
    monkeypatch.setattr(recipe, "extra_metrics", lambda out, labels, src: {"top2": 0.5}, raising=False)
    int8 = tmp_path / "int8.onnx"
    optimize.ort_int8_dynamic(source, int8)
    garbage = tmp_path / "fp8_qdq.onnx"
    garbage.write_bytes(b"not something ORT can load")
    _, _, results = validate_candidates(
        spec["recipe"], pipeline["export"]["io"], source, {"int8": int8, "fp8": garbage, "bad": garbage}, 0.01,
        out_dir=tmp_path / "out", runtimes={"fp8": "tensorrt"},
    )  # fmt: skip
    int8_res = results["int8"]
    assert int8_res["status"] == "rejected" and int8_res["reason"].startswith("failed expectations: ")
    failed = int8_res["expectations"]["failed"]
    assert [(f["expectation"], f["column"]) for f in failed] == [("expect_column_values_to_be_between", "cosine")]
    assert failed[0]["expected"].startswith("min_value=0.999999") and 0 < failed[0]["observed"] <= 100
    assert int8_res["extra_metrics"] == {"top2": 0.5}
    assert int8_res["comparison_path"].is_file() and int8_res["expectations_path"].is_file()
    assert results["fp8"]["status"] == "skipped" and results["fp8"]["reason"] == "needs TensorRT (GPU) to run"
    assert results["bad"]["status"] == "failed" and results["bad"]["reason"].startswith("cannot run candidate: ")


def test_unknown_variant_is_refused(pipeline, tmp_path):
    spec = {**pipeline["spec"], "variants": ["ort_fp32", "magic"]}
    with pytest.raises(StepError, match="unknown variant.*known"):
        optimize.run(spec, Storage())


def test_a_step_cli_exits_with_its_code_its_result_and_its_last_lines(pipelines, tmp_path):
    """The CLI ends without the interpreter's teardown (``_common.main``): nothing it wrote may be lost."""
    spec_path, result = pipelines("digits")["spec_path"], tmp_path / "optimize.json"
    proc = subprocess.run(
        [sys.executable, "-m", "modelops.steps.optimize", "--spec", str(spec_path), "--result", str(result)],
        capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r"optimize INFO optimize done in [0-9.]+ s$", proc.stdout.rstrip().splitlines()[-1])
    assert set(json.loads(result.read_text())["candidates"]) == {"ort_fp32", "ort_int8_dynamic"}


def test_broken_artifact_fails_with_one_line(saved_models, tmp_path):
    broken = tmp_path / "broken_model"
    subprocess.run(["cp", "-r", str(saved_models["digits"]), str(broken)], check=True)
    (broken / "data" / "model.pt2").write_bytes(b"not a zip archive")
    spec_path = make_spec(tmp_path, "digits", saved_models["digits"], source_uri=str(broken))
    proc = subprocess.run(
        [sys.executable, "-m", "modelops.steps.export", "--spec", str(spec_path), "--result", str(tmp_path / "r.json")],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 1
    # libraries (torch) may log to stderr too; the step's reason is its last line, and one line
    reason = proc.stderr.strip().splitlines()[-1]
    assert reason.startswith(f"export: error: cannot load model artifact from {broken}: ")


triton = pytest.mark.skipif(not Settings.from_env().tritonserver_bin.exists(), reason="tritonserver not installed")


@triton
def test_benchmark(pipelines):
    pipeline = pipelines("digits")
    res = step("benchmark", pipeline["spec_path"])
    variants = res["variants"]
    assert set(variants) == {"baseline", "ort_fp32", "ort_int8_dynamic"}
    for name, v in variants.items():
        assert v["status"] == "done", (name, v["reason"])
        assert v["kind"] == ("pytorch" if name == "baseline" else "onnxruntime")
        assert [p["concurrency"] for p in v["points"]] == [1, 4]
        assert 250 <= v["window_ms"] <= 500  # the probe's window: the spec's 500 ms at most
        assert all(p["throughput"] > 0 and 0 < p["p50_ms"] <= p["p99_ms"] for p in v["points"])
        assert Path(v["csv"]).is_file() and Path(v["log"]).is_file()
        # Triton (python backend) answered the export samples exactly like ORT/torch did in validate/export
        assert v["triton_max_abs_diff"] is not None and v["triton_max_abs_diff"] <= 1e-5
    assert res["settings"]["concurrency"] == [1, 4]
    # one tritonserver served every target in turn (its one log, uploaded beside each variant's CSV)
    log = Path(variants["baseline"]["log"]).read_text()
    assert all(Path(v["log"]).read_text() == log for v in variants.values())
    assert all(f"successfully loaded '{name}'" in log for name in variants), log[-2000:]
    # all loaded together before the first measurement (preload), not again for it (the search's reloads aside)
    assert max(log.index(f"successfully loaded '{name}'") for name in variants) < log.index("successfully unloaded")
    assert log.count("successfully loaded 'baseline'") == 1
    assert all(f"successfully unloaded '{name}'" in log for name in variants), log[-2000:]
    # the configuration search ran on the contenders only (the spec's default budget), never on the baseline
    searched = {name for name, v in variants.items() if v.get("config_search")}
    assert "baseline" not in searched and searched, variants
    # every searched point was served and measured, the start too (loaded again after its default measurement)
    trials = [t for name in searched for t in variants[name]["config_search"]["points"]]
    assert all(t["error"] is None and t["throughput"] > 0 for t in trials), [t["error"] for t in trials]
    assert all(any("not searched" in n for n in v["notes"]) for name, v in variants.items()
               if name != "baseline" and name not in searched)  # fmt: skip


@triton
def test_benchmark_marks_an_unloadable_candidate_failed(pipelines, tmp_path):
    pipeline = pipelines("wine")
    from modelops.evaluation.perf import PerfSettings
    from modelops.steps.benchmark import Target, benchmark_target

    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"this is not onnx")
    res = benchmark_target(
        Target("ort_garbage", "onnxruntime", bad),
        io=pipeline["export"]["io"],
        max_batch_size=8,
        perf=PerfSettings(),
        work=tmp_path / "work",
    )
    assert res["status"] == "failed"
    assert res["reason"].startswith("Triton could not serve ort_garbage:") and "\n" not in res["reason"]
    assert (tmp_path / "work" / "ort_garbage" / "triton.log").is_file()


@triton
def test_an_unloadable_candidate_in_the_shared_server_leaves_it_serving_the_next(pipelines, tmp_path):
    pipeline = pipelines("wine")
    from modelops.evaluation.perf import PerfSettings
    from modelops.serving.triton.local_server import TritonProcess
    from modelops.steps.benchmark import Target, benchmark_target

    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"this is not onnx")
    good = Path(pipeline["optimize"]["candidates"]["ort_fp32"]["onnx"])
    perf = PerfSettings(concurrency=[1], measurement_interval_ms=300, max_trials=3)
    common = {"io": pipeline["export"]["io"], "max_batch_size": 8, "perf": perf, "work": tmp_path / "work"}
    (tmp_path / "repo").mkdir()
    with TritonProcess(tmp_path / "repo", [], log_path=tmp_path / "triton.log") as server:
        res = benchmark_target(Target("ort_garbage", "onnxruntime", bad), server=server, **common)
        assert res["status"] == "failed"
        assert res["reason"].startswith("Triton could not serve ort_garbage:") and "\n" not in res["reason"]
        ok = benchmark_target(Target("ort_fp32", "onnxruntime", good), server=server, **common)
        assert ok["status"] == "done", ok["reason"]
        assert server.process is not None and server.process.poll() is None
    assert res["log_paths"][0] == ok["log_paths"][0] == tmp_path / "triton.log"


@triton
def test_preload_loads_every_target_at_once_and_a_failed_one_is_measured_alone(pipelines, tmp_path):
    pipeline = pipelines("wine")
    from modelops.evaluation.perf import PerfSettings
    from modelops.serving.triton.local_server import TritonProcess
    from modelops.steps.benchmark import Target, benchmark_target, preload

    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"this is not onnx")
    candidates = pipeline["optimize"]["candidates"]
    targets = [Target("ort_garbage", "onnxruntime", bad),
               Target("ort_fp32", "onnxruntime", Path(candidates["ort_fp32"]["onnx"])),
               Target("ort_int8_dynamic", "onnxruntime", Path(candidates["ort_int8_dynamic"]["onnx"]))]  # fmt: skip
    perf = PerfSettings(concurrency=[1], measurement_interval_ms=300, max_trials=3)
    common = {"io": pipeline["export"]["io"], "max_batch_size": 8, "perf": perf, "work": tmp_path / "work"}
    (tmp_path / "repo").mkdir()
    with TritonProcess(tmp_path / "repo", [], log_path=tmp_path / "triton.log") as server:
        loaded = preload(server, targets, io=common["io"], max_batch_size=8, perf=perf)
        assert loaded == {"ort_fp32", "ort_int8_dynamic"}
        ready = {v: _ready(server.http_url, v) for v in ("ort_fp32", "ort_int8_dynamic", "ort_garbage")}
        assert ready == {"ort_fp32": True, "ort_int8_dynamic": True, "ort_garbage": False}, ready
        results = {t.variant: benchmark_target(t, server=server, preloaded=t.variant in loaded, **common)
                   for t in targets}  # fmt: skip
    assert results["ort_garbage"]["status"] == "failed"
    assert results["ort_garbage"]["reason"].startswith("Triton could not serve ort_garbage:")
    assert all(results[v]["status"] == "done" for v in loaded), results
    log = (tmp_path / "triton.log").read_text()
    assert all(log.count(f"successfully loaded '{v}'") == 1 for v in loaded), log[-2000:]


def _ready(http_url: str, model: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{http_url}/v2/models/{model}/ready", timeout=10) as resp:
            return resp.status == 200
    except urllib.error.HTTPError:
        return False
