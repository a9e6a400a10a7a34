"""The recipe API in core: no import of model_recipes (or airflow) from modelops, entry-point discovery.

Runs in the orchestrator env (no torch): a throwaway recipe distribution is written as a ``*.dist-info``
folder on ``sys.path`` of a subprocess, which is how an installed package's entry points are found.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "model_recipes" or name.startswith("model_recipes."):
            raise ImportError(f"blocked: {name}")
sys.meta_path.insert(0, Block())
"""


def run_python(code: str, *paths: Path, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env_path = ":".join(str(p) for p in (*paths, REPO))
    env = {"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=cwd, env=env)


def test_core_and_every_step_import_without_model_recipes():
    code = BLOCKER + textwrap.dedent(
        """
        import modelops, modelops.recipes
        import modelops.steps.export, modelops.steps.optimize, modelops.steps.validate
        import modelops.steps.compile, modelops.steps.benchmark
        import model_recipes
        """
    )
    out = run_python(code)
    # everything up to the last line imports; the last proves the blocker really blocks
    assert out.returncode == 1 and out.stderr.strip().splitlines()[-1] == "ImportError: blocked: model_recipes", out.stderr


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_no_module_of_modelops_imports_model_recipes_or_airflow():
    offenders = {
        str(path.relative_to(REPO)): sorted(m for m in _imported_modules(path) if m.split(".")[0] in {"model_recipes", "airflow"})
        for path in sorted((REPO / "modelops").rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def write_plugin(root: Path, flavor: str = "tinyflavor", broken: bool = False) -> Path:
    """A distribution ``tiny-recipe`` on ``root``: a light descriptor module and an implementation module."""
    (root / "tiny_catalog.py").write_text(textwrap.dedent(f"""
        from modelops.recipes import RecipeInfo
        TINY = RecipeInfo("tiny_impl:RECIPE", flavors=({flavor!r},), description="test recipe")
        NOT_INFO = 42
    """))
    (root / "tiny_impl.py").write_text("raise RuntimeError('the implementation must not be imported to select')\n")
    dist = root / "tiny_recipe-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-recipe\nVersion: 0.1\n")
    lines = ["[modelops.recipes]", "tiny = tiny_catalog:TINY"]
    if broken:
        lines += ["not_info = tiny_catalog:NOT_INFO", "gone = no_such_module:X"]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return root


def test_a_recipe_installed_from_another_package_is_selected_by_flavor_and_name(tmp_path):
    write_plugin(tmp_path, broken=True)
    code = textwrap.dedent("""
        import json, sys
        from modelops.recipes import UnsupportedModel, known_recipes, select_recipe, source_flavor
        from modelops.triggers.fingerprint import recipe_versions
        out = {"known": known_recipes()}
        model = {"flavors": {"tinyflavor": {}, "python_function": {}}}
        out["by_flavor"] = select_recipe(model)
        out["source_flavor"] = source_flavor(model)
        out["by_name"] = select_recipe({"flavors": {"pytorch": {}}}, explicit="tiny")
        out["pytorch_still"] = select_recipe({"flavors": {"pytorch": {}}, "signature": {"inputs": [
            {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 3]}}]}})
        for name in ("not_info", "gone"):
            try:
                select_recipe(model, explicit=name)
            except UnsupportedModel as exc:
                out[name] = str(exc)
        try:
            select_recipe({"flavors": {"xgboost": {}}})
        except UnsupportedModel as exc:
            out["unsupported"] = str(exc)
        out["hash"] = recipe_versions()["tiny"]
        out["heavy"] = [m for m in ("tiny_impl", "torch", "numpy") if m in sys.modules]
        print(json.dumps(out))
    """)
    proc = run_python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert "tiny" in out["known"] and {"not_info", "gone"}.isdisjoint(out["known"])
    assert (out["by_flavor"], out["source_flavor"], out["by_name"]) == ("tiny", "tinyflavor", "tiny")
    assert out["pytorch_still"] == "pytorch_generic"
    assert out["not_info"] == (
        "recipe 'not_info' is not usable: entry point tiny_catalog:NOT_INFO is a int, not a modelops.recipes.RecipeInfo"
    )
    assert out["gone"].startswith("recipe 'gone' is not usable: entry point no_such_module:X failed to load:")
    assert "tinyflavor" in out["unsupported"] and out["unsupported"].startswith("model has flavors ['xgboost']")
    assert len(out["hash"]) == 12 and out["heavy"] == []


def test_recipe_hash_follows_the_implementation_and_its_package_imports(tmp_path):
    from modelops.recipes.sources import recipe_sources

    pkg = tmp_path / "hashpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "impl.py").write_text("from . import helpers\nfrom hashpkg.shared import x\nimport json\n")
    (pkg / "helpers.py").write_text("def lazy():\n    from hashpkg import deep\n")
    (pkg / "shared.py").write_text("x = 1\n")
    (pkg / "deep.py").write_text("")
    (pkg / "unused.py").write_text("")
    sys.path.insert(0, str(tmp_path))
    try:
        found = recipe_sources("hashpkg.impl")
    finally:
        sys.path.remove(str(tmp_path))
    assert sorted(found) == ["hashpkg", "hashpkg.deep", "hashpkg.helpers", "hashpkg.impl", "hashpkg.shared"]
    assert "hashpkg" not in sys.modules  # located and parsed, not imported
