"""The recipe API: everything a recipe author imports, from one place.

``from modelops.recipes import Recipe, RecipeInfo, IOSpec, TensorSpec, StepError`` and register the
recipe under the entry-point group ``modelops.recipes`` (see ``docs/adding-a-recipe.md``). Importing
this package loads no numerical library (numpy, torch, onnx): the Airflow side selects recipes with it.
"""

from __future__ import annotations

from modelops.recipes.api import TASKS, Recipe
from modelops.recipes.registry import (
    ENTRY_POINT_GROUP,
    RECIPE_METADATA_KEY,
    RecipeInfo,
    UnsupportedModel,
    get_recipe,
    has_tensor_signature,
    known_recipes,
    model_kind,
    recipe_infos,
    refresh,
    select_recipe,
    source_flavor,
    tensor_signature_required,
)
from modelops.recipes.tensors import (
    DEFAULT_MAX_BATCH_SIZE,
    VARIABLE_DIM_SIZE,
    IOSpec,
    TensorSpec,
    io_from_signature,
    random_inputs,
)
from modelops.steps._common import StepError, StepSkipped

__all__ = [
    "DEFAULT_MAX_BATCH_SIZE",
    "ENTRY_POINT_GROUP",
    "RECIPE_METADATA_KEY",
    "TASKS",
    "VARIABLE_DIM_SIZE",
    "IOSpec",
    "Recipe",
    "RecipeInfo",
    "StepError",
    "StepSkipped",
    "TensorSpec",
    "UnsupportedModel",
    "get_recipe",
    "has_tensor_signature",
    "io_from_signature",
    "known_recipes",
    "model_kind",
    "random_inputs",
    "recipe_infos",
    "refresh",
    "select_recipe",
    "source_flavor",
    "tensor_signature_required",
]
