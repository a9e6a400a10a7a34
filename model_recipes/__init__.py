"""This repository's recipes, as the light descriptors its ``modelops.recipes`` entry points name.

Importing this package loads neither torch nor onnx nor numpy: the Airflow side reads these
:class:`~modelops.recipes.RecipeInfo` objects to pick a recipe from the parsed ``MLmodel`` file, and only
``modelops.recipes.get_recipe`` imports the implementation modules, in the worker environment.

``pyproject.toml`` registers each descriptor under ``[project.entry-points."modelops.recipes"]``; selection
and loading live in :mod:`modelops.recipes`.
"""

from __future__ import annotations

from modelops.contracts.variants import ModelKind
from modelops.recipes import RecipeInfo, tensor_signature_required
from modelops.recipes.registry import text_generation_task

TEXT_GENERATION = RecipeInfo(
    "model_recipes.text_generation:RECIPE", flavors=("transformers",), order=5, check=text_generation_task,
    generative=True, kind=ModelKind.LLM,
    description="chat / completion LLMs (transformers): ONNX Runtime GenAI INT8/INT4, gated on next-token agreement",
)  # fmt: skip

TEXT_EMBEDDING = RecipeInfo(
    "model_recipes.text_embedding:RECIPE", flavors=("sentence_transformers", "transformers"), order=10,
    text_in=True, kind=ModelKind.TEXT_ENCODER,
    description="sentence-transformers / transformers text embedders, served with raw text in",
)  # fmt: skip
SKLEARN_TABULAR = RecipeInfo(
    "model_recipes.sklearn_tabular:RECIPE", flavors=("sklearn",), order=20, ships_data=False, kind=ModelKind.TABULAR,
    description="scikit-learn classifiers and regressors through skl2onnx",
)  # fmt: skip
ONNX_GENERIC = RecipeInfo(
    "model_recipes.onnx_generic:RECIPE", flavors=("onnx",), order=30, ships_data=False,
    description="ONNX models, taken as is",
)
PYTORCH_GENERIC = RecipeInfo(
    "model_recipes.pytorch_generic:RECIPE", flavors=("pytorch",), order=90, check=tensor_signature_required,
    ships_data=False,
    description="any mlflow.pytorch model with a tensor signature (pt2 or pickle); cosine vs the source",
)  # fmt: skip
DIGITS_CNN = RecipeInfo(
    "model_recipes.digits_cnn:RECIPE", kind=ModelKind.IMAGE, description="the demo digits CNN: held-out accuracy"
)
MOBILENET_V2 = RecipeInfo(
    "model_recipes.mobilenet_v2:RECIPE", kind=ModelKind.IMAGE,
    description="MobileNetV2: top-1/top-5 agreement on real photos",
)  # fmt: skip

__all__ = [
    "DIGITS_CNN", "MOBILENET_V2", "ONNX_GENERIC", "PYTORCH_GENERIC", "SKLEARN_TABULAR", "TEXT_EMBEDDING", "TEXT_GENERATION",
]  # fmt: skip
