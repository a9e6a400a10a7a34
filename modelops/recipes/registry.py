"""Recipes found through the entry-point group ``modelops.recipes``, and the choice of one for a model.

Each entry point names a light :class:`RecipeInfo` (no torch, no numpy): the flavors it handles, its
place in the selection order, an optional light check, and the ``module:attribute`` of the real recipe.
The Airflow side selects from these descriptors alone; :func:`get_recipe` imports the implementation in
the worker environment. A package adds a recipe by declaring, in its own ``pyproject.toml``::

    [project.entry-points."modelops.recipes"]
    my_recipe = "my_package.catalog:MY_RECIPE"      # a RecipeInfo(target="my_package.impl:RECIPE", ...)
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from modelops.contracts.variants import ModelKind

if TYPE_CHECKING:
    from modelops.recipes.api import Recipe
    from modelops.recipes.generative import GenerativeRecipe

log = logging.getLogger("modelops.recipes")

ENTRY_POINT_GROUP = "modelops.recipes"
RECIPE_METADATA_KEY = "modelops.recipe"  # MLmodel metadata naming the recipe (wins over the flavor)
PYFUNC = "python_function"

# (mlmodel, matched flavor) -> None when the recipe can take the model, else the one-line reason why not
Check = Callable[[Mapping[str, Any], str], "str | None"]


class UnsupportedModel(Exception):
    """No recipe can handle this model; the message says what is missing, in one line."""


@dataclass(frozen=True)
class RecipeInfo:
    """What selection needs to know about a recipe, without importing it.

    Attributes:
        target: ``"module:attribute"`` of the :class:`~modelops.recipes.api.Recipe` instance (or class).
        flavors: MLflow flavors this recipe takes, in preference order; empty: only chosen by name.
        order: place in the flavor rules, lower first (built-ins: text 10, sklearn 20, onnx 30, pytorch 90).
        check: light test of a flavor match (e.g. "needs a tensor signature"); returns a reason or None.
        description: one line for listings and docs.
        generative: an LLM recipe (:class:`~modelops.recipes.generative.GenerativeRecipe`): the steps take the LLM
            path and the run gets the LLM variants.
        text_in: clients send raw text, tokenized in the python backend (``write_serving_artifacts``): served on
            the CPU python backend only (``serving_device: gpu`` is refused at resolve).
        ships_data: the recipe's ``eval_data`` is real data of its own (``modelops.eval_data=recipe`` when the user
            logged none); False for generic recipes, whose own rows are synthetic (random inputs).
        kind: the model family, which picks the variants of a run that names none
            (:data:`~modelops.contracts.variants.KIND_DEFAULTS`); None: read from the model's signature
            (:func:`model_kind`), for generic recipes whose models may be anything.
    """

    target: str
    flavors: tuple[str, ...] = ()
    order: int = 50
    check: Check | None = None
    description: str = ""
    generative: bool = False
    text_in: bool = False
    ships_data: bool = True
    kind: ModelKind | None = None

    def __post_init__(self) -> None:
        module, sep, attr = self.target.partition(":")
        if not (module and sep and attr):
            raise ValueError(f"recipe target {self.target!r} is not 'module:attribute'")
        object.__setattr__(self, "flavors", tuple(self.flavors))

    @property
    def module(self) -> str:
        """The implementation's module (its source is what a fingerprint hashes)."""
        return self.target.partition(":")[0]


# -- light predicates recipes can use as ``check`` ------------------------------------------------------
def signature_inputs(mlmodel: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The signature's input specs (MLflow stores them as a JSON string); [] when absent."""
    raw = (mlmodel.get("signature") or {}).get("inputs")
    if not raw:
        return []
    parsed = json.loads(raw) if isinstance(raw, str) else raw
    return list(parsed or [])


def has_tensor_signature(mlmodel: Mapping[str, Any]) -> bool:
    """True when every signature input is a tensor spec (``{"type": "tensor", "tensor-spec": ...}``)."""
    inputs = signature_inputs(mlmodel)
    return bool(inputs) and all(item.get("type") == "tensor" and "tensor-spec" in item for item in inputs)


def tensor_signature_required(mlmodel: Mapping[str, Any], flavor: str) -> str | None:
    """A :data:`Check`: the model must be logged with a tensor signature (its inputs are exported from it)."""
    if has_tensor_signature(mlmodel):
        return None
    what = "no signature" if not signature_inputs(mlmodel) else "a column-based (not tensor) signature"
    return (
        f"{flavor} model has {what}, no tensor signature: log it with a signature "
        "(mlflow.models.infer_signature on numpy arrays) so inputs can be exported"
    )


LLM_TASKS = ("text-generation", "llm/v1/chat", "llm/v1/completions")


def text_generation_task(mlmodel: Mapping[str, Any], flavor: str) -> str | None:
    """A :data:`Check`: a transformers model logged for text generation (pipeline or ``llm/v1/*`` task)."""
    flavor_conf = (mlmodel.get("flavors") or {}).get(flavor) or {}
    tasks = {str(flavor_conf.get("task") or ""), str((mlmodel.get("metadata") or {}).get("task") or "")}
    if tasks & set(LLM_TASKS):
        return None
    return f"{flavor} model task {sorted(t for t in tasks if t) or 'unknown'} is not text generation"


def _looks_like_images(spec: Mapping[str, Any]) -> bool:
    """A float 4-D tensor with 1 or 3 channels first (NCHW) or last (NHWC), each side at least 8 pixels."""
    tensor = spec.get("tensor-spec") or {}
    shape = list(tensor.get("shape") or [])
    if len(shape) != 4 or not str(tensor.get("dtype", "")).startswith("float"):
        return False
    for channels, sides in ((shape[1], shape[2:]), (shape[3], shape[1:3])):
        if channels in (1, 3) and all(s == -1 or s >= 8 for s in sides):
            return True
    return False


def model_kind(info: RecipeInfo, mlmodel: Mapping[str, Any]) -> ModelKind:
    """The family of a model handled by ``info``: the recipe's own :attr:`RecipeInfo.kind`, else LLM for a
    generative recipe, else image when the tensor signature's first input looks like images, else generic."""
    if info.kind is not None:
        return ModelKind(info.kind)
    if info.generative:
        return ModelKind.LLM
    inputs = signature_inputs(mlmodel) if has_tensor_signature(mlmodel) else []
    if inputs and _looks_like_images(inputs[0]):
        return ModelKind.IMAGE
    return ModelKind.GENERIC


# -- discovery --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Registry:
    """The installed recipes: name -> info, and names whose entry point failed to load (name -> reason)."""

    infos: dict[str, RecipeInfo]
    broken: dict[str, str]

    def flavor_rules(self) -> list[tuple[str, str, RecipeInfo]]:
        """``(flavor, recipe, info)`` in the order they are tried (``order``, then name, then flavor order)."""
        ranked = sorted(self.infos.items(), key=lambda item: (item[1].order, item[0]))
        return [(flavor, name, info) for name, info in ranked for flavor in info.flavors]

    def supported_flavors(self) -> list[str]:
        """Every flavor some recipe takes, the most general recipe's first (what errors list)."""
        ranked = sorted(self.infos.items(), key=lambda item: (-item[1].order, item[0]))
        return list(dict.fromkeys(flavor for _, info in ranked for flavor in info.flavors))


@lru_cache(maxsize=1)
def registry() -> Registry:
    """Load every ``modelops.recipes`` entry point once per process (:func:`refresh` forgets them)."""
    infos: dict[str, RecipeInfo] = {}
    values: dict[str, str] = {}
    broken: dict[str, str] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in values:
            if values[ep.name] != ep.value:
                log.warning("recipe %r declared twice (%s and %s); keeping the first", ep.name, values[ep.name],
                            ep.value)
            continue
        values[ep.name] = ep.value
        try:
            info = ep.load()
        except Exception as exc:  # noqa: BLE001 - one broken plugin must not hide the other recipes
            broken[ep.name] = f"entry point {ep.value} failed to load: {type(exc).__name__}: {exc}".splitlines()[0]
            log.warning("recipe %r: %s", ep.name, broken[ep.name])
            continue
        if not isinstance(info, RecipeInfo):
            broken[ep.name] = f"entry point {ep.value} is a {type(info).__name__}, not a modelops.recipes.RecipeInfo"
            log.warning("recipe %r: %s", ep.name, broken[ep.name])
            continue
        infos[ep.name] = info
    return Registry(infos, broken)


def refresh() -> None:
    """Forget the loaded entry points and recipe objects (after installing a recipe package in-process)."""
    registry.cache_clear()
    _load_recipe.cache_clear()
    importlib.invalidate_caches()


def recipe_infos() -> dict[str, RecipeInfo]:
    """name -> :class:`RecipeInfo` of every installed recipe."""
    return dict(registry().infos)


def known_recipes() -> list[str]:
    """Sorted names of the installed recipes."""
    return sorted(registry().infos)


def _known(name: str) -> None:
    reg = registry()
    if name in reg.broken:
        raise UnsupportedModel(f"recipe {name!r} is not usable: {reg.broken[name]}")
    if name not in reg.infos:
        raise UnsupportedModel(f"unknown recipe {name!r}; known: {sorted(reg.infos)}")


# -- selection --------------------------------------------------------------------------------------
def source_flavor(mlmodel: Mapping[str, Any]) -> str:
    """The MLflow flavor the model is loaded through: the first supported one, in selection order.

    ``python_function`` only when the model has nothing else (it is then unsupported).
    """
    flavors = set((mlmodel.get("flavors") or {}).keys())
    for flavor, _, _ in registry().flavor_rules():
        if flavor in flavors:
            return flavor
    return min(flavors - {PYFUNC}, default=PYFUNC if flavors else "")


def select_recipe(mlmodel: Mapping[str, Any], explicit: str | None = None) -> str:
    """Pick the recipe for a registered model from its parsed ``MLmodel`` YAML.

    In this order: ``explicit`` (the ``recipe`` param of a run), the model's ``modelops.recipe`` metadata,
    then the flavor rules (:meth:`Registry.flavor_rules`): the first recipe taking one of the model's
    flavors whose ``check`` passes.

    Args:
        mlmodel: the ``MLmodel`` file as a dict (keys ``flavors``, ``signature``, ``metadata``).
        explicit: a recipe name that wins over everything else; must be installed.

    Returns:
        The name of an installed recipe.

    Raises:
        UnsupportedModel: no recipe fits, or a named recipe is unknown; the message says why in one line.
    """
    reg = registry()
    if explicit:
        _known(explicit)
        return str(explicit)
    named = (mlmodel.get("metadata") or {}).get(RECIPE_METADATA_KEY)
    if named:
        if named not in reg.infos:
            raise UnsupportedModel(f"model metadata names recipe {named!r}, which is unknown; known: {sorted(reg.infos)}")
        return str(named)
    flavors = sorted((mlmodel.get("flavors") or {}).keys())
    refusals: list[str] = []
    for flavor, name, info in reg.flavor_rules():
        if flavor not in flavors:
            continue
        reason = info.check(mlmodel, flavor) if info.check else None
        if reason is None:
            return name
        refusals.append(reason)
    if refusals:
        raise UnsupportedModel(refusals[0])
    shown = [f for f in flavors if f != PYFUNC] or flavors
    raise UnsupportedModel(f"model has flavors {shown}; supported: {', '.join(reg.supported_flavors())}")


# -- loading ----------------------------------------------------------------------------------------
@cache
def _load_recipe(name: str) -> Recipe | GenerativeRecipe:
    from modelops.recipes.api import Recipe
    from modelops.recipes.generative import GenerativeRecipe

    info = registry().infos[name]
    module_name, _, attr = info.target.partition(":")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except AttributeError:
        raise UnsupportedModel(f"recipe {name!r}: {module_name} has no attribute {attr!r}") from None
    if isinstance(obj, type) and issubclass(obj, (Recipe, GenerativeRecipe)):
        obj = obj()
    if not isinstance(obj, (Recipe, GenerativeRecipe)):
        raise UnsupportedModel(f"recipe {name!r}: {info.target} is a {type(obj).__name__}, not a modelops Recipe")
    return obj


def get_recipe(name: str) -> Recipe | GenerativeRecipe:
    """Import the recipe's implementation (heavy: numpy, torch at call time) and return the recipe object.

    Args:
        name: an installed recipe (see :func:`known_recipes`).

    Returns:
        A :class:`modelops.recipes.api.Recipe`, or a :class:`~modelops.recipes.generative.GenerativeRecipe` for
        LLMs (one instance per process).

    Raises:
        UnsupportedModel: the name is unknown, or its entry point or target is not a recipe.
    """
    _known(name)
    return _load_recipe(name)
