"""select_recipe on real MLmodel files (sklearn/skops, onnx, MobileNet pytorch), in the orchestrator env.

The MLmodel texts are what MLflow 3.17 wrote for the demo models (trimmed of timestamps and ids). No
torch, onnx or scikit-learn is imported: the recipe modules are checked by parsing their source.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from modelops.recipes import UnsupportedModel, recipe_infos, select_recipe

REPO = Path(__file__).resolve().parents[2]

SKLEARN_MLMODEL = """
flavors:
  python_function: {loader_module: mlflow.sklearn, model_path: model.skops, predict_fn: predict, python_version: 3.11.7}
  sklearn:
    code: null
    pickled_model: model.skops
    serialization_format: skops
    sklearn_version: 1.9.1
    skops_trusted_types: [sklearn.tree._tree.Tree]
mlflow_version: 3.17.2
signature:
  inputs: '[{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 30]}}]'
  outputs: '[{"type": "tensor", "tensor-spec": {"dtype": "int64", "shape": [-1]}}]'
  params: null
"""

ONNX_MLMODEL = """
flavors:
  onnx:
    code: null
    data: model.onnx
    onnx_session_options: null
    onnx_version: 1.23.2
    providers: [CUDAExecutionProvider, CPUExecutionProvider]
  python_function: {data: model.onnx, loader_module: mlflow.onnx, python_version: 3.11.7}
mlflow_version: 3.17.2
signature:
  inputs: '[{"name": "input", "type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 1, 8, 8]}}]'
  outputs: '[{"name": "output", "type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 10]}}]'
  params: null
"""

MOBILENET_MLMODEL = """
flavors:
  python_function: {data: data, loader_module: mlflow.pytorch, python_version: 3.11.7}
  pytorch: {code: null, model_data: data, pytorch_version: 2.13.0+cpu}
metadata:
  modelops.recipe: mobilenet_v2
mlflow_version: 3.17.2
signature:
  inputs: '[{"name": "input", "type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 3, 224, 224]}}]'
  outputs: '[{"name": "output", "type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 1000]}}]'
  params: null
"""

PYFUNC_ONLY_MLMODEL = """
flavors:
  python_function: {cloudpickle_version: 3.1.1, loader_module: mlflow.pyfunc.model, python_model: python_model.pkl}
mlflow_version: 3.17.2
"""


def parse(text: str) -> dict:
    return yaml.safe_load(text)


def test_sklearn_skops_model_gets_the_tabular_recipe():
    assert select_recipe(parse(SKLEARN_MLMODEL)) == "sklearn_tabular"


def test_sklearn_without_signature_is_still_selected():
    # selection is by flavor; the missing signature is reported by export, which needs it for the I/O
    mlmodel = parse(SKLEARN_MLMODEL)
    mlmodel.pop("signature")
    assert select_recipe(mlmodel) == "sklearn_tabular"


def test_onnx_model_gets_the_as_is_recipe():
    assert select_recipe(parse(ONNX_MLMODEL)) == "onnx_generic"


def test_onnx_model_without_signature_is_still_selected():
    # onnx_generic reads its I/O from the graph, not the signature
    mlmodel = parse(ONNX_MLMODEL)
    mlmodel["signature"] = None
    assert select_recipe(mlmodel) == "onnx_generic"


def test_mobilenet_metadata_names_its_recipe():
    assert select_recipe(parse(MOBILENET_MLMODEL)) == "mobilenet_v2"


def test_same_pytorch_model_without_metadata_is_generic():
    mlmodel = parse(MOBILENET_MLMODEL)
    mlmodel.pop("metadata")
    assert select_recipe(mlmodel) == "pytorch_generic"


def test_metadata_overrides_the_flavor_rule():
    mlmodel = parse(ONNX_MLMODEL)
    mlmodel["metadata"] = {"modelops.recipe": "mobilenet_v2"}
    assert select_recipe(mlmodel) == "mobilenet_v2"


def test_model_with_sklearn_and_onnx_flavors_takes_sklearn_first():
    mlmodel = parse(SKLEARN_MLMODEL)
    mlmodel["flavors"]["onnx"] = parse(ONNX_MLMODEL)["flavors"]["onnx"]
    assert select_recipe(mlmodel) == "sklearn_tabular"


def test_pyfunc_only_model_is_unsupported_naming_the_flavor_and_the_choices():
    with pytest.raises(UnsupportedModel) as err:
        select_recipe(parse(PYFUNC_ONLY_MLMODEL))
    msg = str(err.value)
    assert "['python_function']" in msg and "\n" not in msg
    for flavor in ("pytorch", "sklearn", "onnx", "transformers"):
        assert flavor in msg


def test_flavorless_mlmodel_is_unsupported():
    with pytest.raises(UnsupportedModel, match=r"model has flavors \[\]"):
        select_recipe({"flavors": {}, "signature": None})


@pytest.mark.parametrize("recipe", ["sklearn_tabular", "onnx_generic", "mobilenet_v2"])
def test_recipe_module_defines_recipe_and_register_demo(recipe):
    module, _, attr = recipe_infos()[recipe].target.partition(":")
    tree = ast.parse((REPO / (module.replace(".", "/") + ".py")).read_text())
    assigned = {
        t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)
    }
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert attr in assigned
    params = [a.arg for a in functions["register_demo"].args.args]
    assert params == ["name", "alias", "serialization"]  # what demo_models.register passes by keyword


def test_sklearn_baseline_kind_has_a_triton_template():
    from modelops.serving.triton.model_dir import MODEL_KINDS, ONNX_FILE_KINDS, PYTHON_TEMPLATES

    assert MODEL_KINDS["sklearn"] == "sklearn_model.py" and "sklearn" not in ONNX_FILE_KINDS
    assert (PYTHON_TEMPLATES / "sklearn_model.py").is_file()
    assert "onnxruntime" in ONNX_FILE_KINDS  # onnx_generic's baseline serves the as-is .onnx file


@pytest.mark.parametrize(
    ("text", "flavor"),
    [(SKLEARN_MLMODEL, "sklearn"), (ONNX_MLMODEL, "onnx"), (MOBILENET_MLMODEL, "pytorch"),
     (PYFUNC_ONLY_MLMODEL, "python_function")],
)  # fmt: skip
def test_source_flavor_is_the_one_the_recipe_loads_not_python_function(text, flavor):
    from modelops.recipes import source_flavor

    assert source_flavor(parse(text)) == flavor
