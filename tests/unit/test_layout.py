"""Layout rules of the code base that a review would otherwise have to re-check by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("modelops", "modelops_airflow", "model_recipes", "operators", "dags")
MAX_LINES = 400


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_over_400_lines(package):
    long = {
        str(p.relative_to(REPO)): n
        for p in sorted((REPO / package).rglob("*.py"))
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these modules (one concept per file, <= {MAX_LINES} lines): {long}"


def test_every_core_package_says_what_it_is_for():
    """Each sub-package of modelops/ opens with a docstring: the layout is the architecture's table of contents."""
    missing = [
        str(init.relative_to(REPO))
        for init in sorted((REPO / "modelops").glob("*/__init__.py"))
        if not init.read_text().lstrip().startswith('"""')
    ]
    assert not missing
