"""Model recipes: how to load a model family, what its inputs look like, what accuracy means.

This module is the LIGHT registry: it imports neither torch nor onnx nor mlflow, so the Airflow side
(``resolve``) can pick a recipe from the parsed ``MLmodel`` file. :func:`get_recipe` imports the heavy
recipe module lazily, in the worker environment.
"""

from __future__ import annotations

import importlib
import json
from typing import Any

# recipe name -> "module:attribute" of the recipe object (imported only by get_recipe)
RECIPES: dict[str, str] = {
    "pytorch_generic": "model_recipes.pytorch_generic:RECIPE",
    "digits_cnn": "model_recipes.digits_cnn:RECIPE",
    "mobilenet_v2": "model_recipes.mobilenet_v2:RECIPE",
    "text_embedding": "model_recipes.text_embedding:RECIPE",
    "sklearn_tabular": "model_recipes.sklearn_tabular:RECIPE",
    "onnx_generic": "model_recipes.onnx_generic:RECIPE",
}
# MLflow flavor -> recipe, checked in this order (a model logged with several flavors takes the first match)
FLAVOR_RECIPES: tuple[tuple[str, str], ...] = (
    ("sentence_transformers", "text_embedding"),
    ("transformers", "text_embedding"),
    ("sklearn", "sklearn_tabular"),
    ("onnx", "onnx_generic"),
)

RECIPE_METADATA_KEY = "modelops.recipe"
SUPPORTED_FLAVORS = ("pytorch", "sentence_transformers", "transformers", "sklearn", "onnx")


class UnsupportedModel(Exception):
    """No recipe can handle this model; the message says what is missing, in one line."""


def _signature_inputs(mlmodel: dict[str, Any]) -> list[dict[str, Any]]:
    """The signature's input specs (MLflow stores them as a JSON string); [] when absent."""
    raw = (mlmodel.get("signature") or {}).get("inputs")
    if not raw:
        return []
    parsed = json.loads(raw) if isinstance(raw, str) else raw
    return list(parsed or [])


def has_tensor_signature(mlmodel: dict[str, Any]) -> bool:
    """True when every signature input is a tensor spec (``{"type": "tensor", "tensor-spec": ...}``)."""
    inputs = _signature_inputs(mlmodel)
    return bool(inputs) and all(item.get("type") == "tensor" and "tensor-spec" in item for item in inputs)


def source_flavor(mlmodel: dict[str, Any]) -> str:
    """The MLflow flavor the model is loaded through: the first supported one, in selection order.

    ``python_function`` only when the model has nothing else (it is then unsupported).
    """
    flavors = set((mlmodel.get("flavors") or {}).keys())
    for flavor in (*(f for f, _ in FLAVOR_RECIPES), "pytorch"):
        if flavor in flavors:
            return flavor
    return min(flavors - {"python_function"}, default="python_function" if flavors else "")


def select_recipe(mlmodel: dict[str, Any]) -> str:
    """Pick the recipe for a registered model from its parsed ``MLmodel`` YAML.

    Args:
        mlmodel: the ``MLmodel`` file as a dict (keys ``flavors``, ``signature``, ``metadata``).

    Returns:
        A key of :data:`RECIPES`.

    Raises:
        UnsupportedModel: no recipe fits; the message names what is missing.
    """
    metadata = mlmodel.get("metadata") or {}
    named = metadata.get(RECIPE_METADATA_KEY)
    if named:
        if named not in RECIPES:
            raise UnsupportedModel(f"model metadata names recipe {named!r}, which is unknown; known: {sorted(RECIPES)}")
        return str(named)
    flavors = sorted((mlmodel.get("flavors") or {}).keys())
    for flavor, recipe in FLAVOR_RECIPES:
        if flavor in flavors:
            return recipe
    if "pytorch" not in flavors:
        shown = [f for f in flavors if f != "python_function"] or flavors
        raise UnsupportedModel(f"model has flavors {shown}; supported: {', '.join(SUPPORTED_FLAVORS)}")
    if not has_tensor_signature(mlmodel):
        what = "no signature" if not _signature_inputs(mlmodel) else "a column-based (not tensor) signature"
        raise UnsupportedModel(
            f"pytorch model has {what}, no tensor signature: log it with a signature "
            "(mlflow.models.infer_signature on numpy arrays) so inputs can be exported"
        )
    return "pytorch_generic"


def get_recipe(name: str) -> Any:
    """Import the recipe's module (heavy: numpy, torch at call time) and return the recipe object.

    Args:
        name: a key of :data:`RECIPES`.

    Raises:
        UnsupportedModel: the name is unknown.
    """
    try:
        target = RECIPES[name]
    except KeyError:
        raise UnsupportedModel(f"unknown recipe {name!r}; known: {sorted(RECIPES)}") from None
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)
