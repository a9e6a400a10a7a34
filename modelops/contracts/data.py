"""Where a run's evaluation and calibration data came from: the ``eval_data`` block of the run spec.

Resolve picks the data (``modelops.data.prepare``) and records the choice here and on the model version as the tag
``modelops.eval_data`` (ARCHITECTURE.md, December contracts); optimize and validate read the rows it wrote.
Pure data: no heavy import.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class EvalDataSource(StrEnum):
    """The values of the ``modelops.eval_data`` tag, in resolve's order of preference."""

    URI = "uri"  # the run's eval_data_uri (DAG param / --eval-data): what the user asked for wins
    MLFLOW_DATASET = "mlflow_dataset"  # datasets logged with mlflow.log_input on the version's source run
    RECIPE = "recipe"  # data the recipe ships (the demo recipes)
    INPUT_EXAMPLE = "input_example"  # the input example logged with the model
    SYNTHETIC = "synthetic"  # nothing else: seeded random inputs; calibrated variants are skipped


#: What a recipe's data or the logged example must have for a calibrated variant to be built on it.
REAL_SOURCES = (EvalDataSource.URI, EvalDataSource.MLFLOW_DATASET, EvalDataSource.RECIPE, EvalDataSource.INPUT_EXAMPLE)


class EvalDataSpec(BaseModel):
    """The eval/calibration rows of a run. ``eval_uri``/``calibration_uri`` are npz files resolve wrote under the run
    prefix (keys: the signature's inputs or columns, and ``label`` when labels exist); None for ``recipe`` and
    ``synthetic``, where the recipe's own hooks give the rows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: EvalDataSource = EvalDataSource.RECIPE
    origin: str = Field("", description="where the rows came from: a URI, or the dataset's name and digest")
    eval_uri: str | None = None
    calibration_uri: str | None = None
    eval_rows: int = Field(0, ge=0)
    calibration_rows: int = Field(0, ge=0)
    labels: bool = Field(False, description="the eval rows carry true labels (a 'label' column)")
    columns: list[str] = Field(default_factory=list, description="a column signature's feature order (tabular)")
    note: str = Field("", description="one line for the report and the MLflow run (e.g. synthetic, a small example)")

    @property
    def real(self) -> bool:
        """True unless the rows are synthetic (a calibrated variant needs real rows)."""
        return self.source in REAL_SOURCES
