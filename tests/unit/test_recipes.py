"""select_recipe rules, in the light registry (no torch, no numpy needed)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from model_recipes import RECIPES, UnsupportedModel, get_recipe, has_tensor_signature, select_recipe

TENSOR_SIG = {
    "inputs": json.dumps([{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 13]}}]),
    "outputs": json.dumps([{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 3]}}]),
}
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
        "import sys, model_recipes as m; m.select_recipe({'flavors': {'pytorch': {}}, 'metadata': "
        "{'modelops.recipe': 'digits_cnn'}}); "
        "heavy = [x for x in ('torch', 'onnx', 'onnxruntime', 'mlflow', 'numpy') if x in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_every_recipe_points_at_a_module_attribute():
    assert all(":" in target and target.startswith("model_recipes.") for target in RECIPES.values())
