"""The source files of a recipe: its implementation module and what it imports from its own package.

Fingerprints hash these files, so a change in a recipe (or in a helper module it uses) re-optimizes the
models it serves. Modules are located with ``importlib.util.find_spec`` and read with ``ast``: the recipe
itself is not imported (it may need torch; the nightly planner runs on the Airflow side).
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

# the recipe interface whose defaults recipes run, and the variant registry (what each variant is, and the
# family defaults a run without a variants request gets)
CORE_MODULES = ("modelops.recipes.api", "modelops.recipes.tensors", "modelops.contracts.variants")


def module_file(module: str) -> Path | None:
    """The ``.py`` file of ``module`` (its ``__init__.py`` for a package), or None when there is none.

    Only the top-level package is looked up through the import system (which imports nothing); the
    rest of the dotted name is a path below it, so no parent package's code runs.
    """
    top, _, rest = module.partition(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if not rest:
        return Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    for root in spec.submodule_search_locations or ():
        base = Path(root, *rest.split("."))
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def _imported(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Absolute names of the modules ``tree`` imports (``from a import b`` yields ``a`` and ``a.b``)."""
    names: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}".rstrip(".") if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def recipe_sources(module: str) -> dict[str, Path]:
    """``module`` and every module of its top-level package it imports, transitively: name -> file.

    Args:
        module: the recipe's implementation module (``RecipeInfo.module``).

    Returns:
        Module name -> source file, for the modules that exist as ``.py`` files.
    """
    top = module.split(".", 1)[0]
    found: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        path = module_file(name)
        if path is None:
            continue
        found[name] = path
        try:
            tree = ast.parse(path.read_text())
        except (OSError, SyntaxError, ValueError):
            continue
        todo += [m for m in _imported(tree, name, path.name == "__init__.py") if m.split(".", 1)[0] == top]
    return found
