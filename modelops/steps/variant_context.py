"""What an optimize builder gets: :class:`VariantContext` (paths, spec, recipe, I/O, cached data), and how it says
a variant does not apply (:class:`VariantSkipped`). The builders live in :mod:`modelops.steps.optimize`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelops.data.bound import calibration_skip_reason, eval_data_of


class VariantSkipped(Exception):
    """The variant does not apply here (e.g. no ModelOpt environment): status ``skipped``, not ``failed``."""


@dataclass
class VariantContext:
    """What a builder gets: paths, the run spec, the recipe and the model's I/O.

    ``recipe``/``io`` are None when the recipe could not be loaded (builders that need them fail with
    ``recipe_error``). ``artifacts`` is filled by the builder with extra files to upload next to the
    candidate (name -> local path), even when it then fails (logs). ``shared`` is one dict for all the
    variants of a run (cached eval/calibration data).
    """

    src: Path
    dest: Path
    spec: dict[str, Any]
    recipe: Any | None
    io: Any | None
    workdir: Path
    recipe_error: str | None = None
    artifacts: dict[str, Path] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)

    def need_recipe(self) -> tuple[Any, Any]:
        if self.recipe is None or self.io is None:
            raise RuntimeError(f"needs the recipe's data: {self.recipe_error or 'no recipe/io given'}")
        return self.recipe, self.io

    def calibration(self) -> tuple[dict[str, np.ndarray], str]:
        """The recipe's calibration inputs (see :func:`modelops.optimization.static_quant.calibration_inputs`), cached;
        :class:`VariantSkipped` when the run's rows are synthetic or too few to calibrate on."""
        from modelops.optimization.static_quant import StaticQuantConfig, calibration_inputs

        if no_data := calibration_skip_reason(eval_data_of(self.spec)):  # synthetic rows: scales fitted to noise
            raise VariantSkipped(no_data)
        if "calibration" not in self.shared:
            recipe, io = self.need_recipe()
            rows = StaticQuantConfig.from_spec(self.spec.get("static_quant")).calibration_rows
            self.shared["calibration"] = calibration_inputs(recipe, io, rows)
        return self.shared["calibration"]

    def scorer(self) -> tuple[Callable[[Path], float], float]:
        """``(score(model) -> recipe metric vs the source on the eval data, source metric)``, cached."""
        from modelops.optimization.ort_cpu import run_list

        if "scorer" not in self.shared:
            recipe, io = self.need_recipe()
            eval_inputs, labels = recipe.eval_data(io)
            reference = run_list(self.src, eval_inputs)[0]

            def score(model: Path) -> float:
                return float(recipe.metric(run_list(model, eval_inputs)[0], labels, reference))

            self.shared["scorer"] = (score, float(recipe.metric(reference, labels, reference)))
        return self.shared["scorer"]


Builder = Callable[[VariantContext], "dict[str, Any] | None"]


def paths_builder(fn: Callable[[Path, Path], None]) -> Builder:
    """Adapt a ``builder(src, dest)`` (no recipe needed) to the context signature."""

    def build(ctx: VariantContext) -> None:
        fn(ctx.src, ctx.dest)

    build.__doc__ = fn.__doc__
    return build
