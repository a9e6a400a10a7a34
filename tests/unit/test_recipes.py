"""select_recipe rules over the installed entry points, in the light registry (no torch, no numpy needed)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from modelops.recipes import UnsupportedModel, get_recipe, has_tensor_signature, recipe_infos, select_recipe

TENSOR_SIG = {
    "inputs": json.dumps([{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 13]}}]),
    "outputs": json.dumps([{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 3]}}]),
}
BUILT_IN = ("pytorch_generic", "digits_cnn", "mobilenet_v2", "text_embedding", "sklearn_tabular", "onnx_generic")
COLUMN_SIG = {"inputs": json.dumps([{"type": "double", "name": "a", "required": True}]), "outputs": None}


def mlmodel(flavors=("pytorch", "python_function"), signature=TENSOR_SIG, metadata=None) -> dict:
    return {"flavors": {f: {} for f in flavors}, "signature": signature, "metadata": metadata}


def test_metadata_names_the_recipe():
    assert select_recipe(mlmodel(metadata={"modelops.recipe": "digits_cnn"})) == "digits_cnn"


def test_metadata_wins_over_generic_rules():
    # even without a signature the explicit recipe is honoured (the recipe knows its inputs)
    assert select_recipe(mlmodel(signature=None, metadata={"modelops.recipe": "pytorch_generic"})) == "pytorch_generic"


def test_unknown_recipe_in_metadata_is_refused():
    with pytest.raises(UnsupportedModel, match="unknown.*known"):
        select_recipe(mlmodel(metadata={"modelops.recipe": "no_such_recipe"}))


def test_pytorch_with_tensor_signature_is_generic():
    assert select_recipe(mlmodel()) == "pytorch_generic"
    assert select_recipe(mlmodel(metadata={"other": "x"})) == "pytorch_generic"


def test_other_flavor_is_unsupported_with_one_line_reason():
    with pytest.raises(UnsupportedModel) as err:
        select_recipe(mlmodel(flavors=("xgboost", "python_function")))
    msg = str(err.value)
    assert "['xgboost']" in msg and "supported: pytorch" in msg and "\n" not in msg


@pytest.mark.parametrize("signature", [None, {}, COLUMN_SIG])
def test_pytorch_without_tensor_signature_is_unsupported(signature):
    with pytest.raises(UnsupportedModel, match="no tensor signature.*infer_signature"):
        select_recipe(mlmodel(signature=signature))


def test_has_tensor_signature_accepts_parsed_lists():
    assert has_tensor_signature({"signature": {"inputs": json.loads(TENSOR_SIG["inputs"])}})
    assert not has_tensor_signature({"signature": COLUMN_SIG})


def test_get_recipe_unknown_name():
    with pytest.raises(UnsupportedModel):
        get_recipe("nope")


def test_registry_module_imports_no_heavy_library():
    code = (
        "import sys, modelops.recipes as m; m.select_recipe({'flavors': {'pytorch': {}}, 'metadata': "
        "{'modelops.recipe': 'digits_cnn'}}); "
        "heavy = [x for x in ('torch', 'onnx', 'onnxruntime', 'mlflow', 'numpy') if x in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_every_recipe_points_at_a_module_attribute():
    infos = recipe_infos()
    assert {"pytorch_generic", "digits_cnn", "mobilenet_v2", "text_embedding", "sklearn_tabular", "onnx_generic"} <= set(
        infos
    )
    assert all(info.target.startswith("model_recipes.") for name, info in infos.items() if name in BUILT_IN)


def test_explicit_recipe_wins_over_metadata_and_flavor():
    model = mlmodel(flavors=("onnx",), signature=None, metadata={"modelops.recipe": "digits_cnn"})
    assert select_recipe(model, explicit="mobilenet_v2") == "mobilenet_v2"
    assert select_recipe(mlmodel(flavors=("xgboost",)), explicit="pytorch_generic") == "pytorch_generic"
    assert select_recipe(model, explicit=None) == "digits_cnn"


def test_unknown_explicit_recipe_lists_the_known_ones_in_one_line():
    with pytest.raises(UnsupportedModel) as err:
        select_recipe(mlmodel(), explicit="nope")
    msg = str(err.value)
    assert msg.startswith("unknown recipe 'nope'; known: [") and "'digits_cnn'" in msg and "\n" not in msg


def test_flavor_rules_follow_the_descriptors_order():
    # sentence_transformers (text, order 10) before sklearn (20) before onnx (30) before pytorch (90)
    assert select_recipe(mlmodel(flavors=("pytorch", "sentence_transformers"))) == "text_embedding"
    assert select_recipe(mlmodel(flavors=("onnx", "sklearn"), signature=None)) == "sklearn_tabular"
    assert select_recipe(mlmodel(flavors=("pytorch", "onnx"), signature=None)) == "onnx_generic"
