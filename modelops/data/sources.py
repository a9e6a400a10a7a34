"""Resolve's choice of a run's eval and calibration rows, from what the user already has.

In this order (the first that exists wins), recorded as the model-version tag ``modelops.eval_data``:

1. ``uri``: the run's ``eval_data_uri`` (DAG param, ``modelops optimize --eval-data``): asked for, so it wins;
2. ``mlflow_dataset``: datasets logged with ``mlflow.log_input`` on the run that produced the version, whose source
   is a file (S3, the MLflow artifact store or a local path). Context ``evaluation``/``validation``/``test`` feeds the
   gate, ``training``/``calibration`` calibration; one dataset alone is split;
3. ``recipe``: the recipe ships data of its own (the demo recipes);
4. ``input_example``: the example logged with the model (a note says so when it is small);
5. ``synthetic``: nothing else. The gate runs on seeded random inputs, calibrated variants are skipped, and the
   report and MLflow run say so in one line.

The rows go to ``<run prefix>/data/eval.npz`` and ``calibration.npz``, never overlapping; every step reads those.
A user file that cannot be used fails resolve with one line (:class:`~modelops.data.tables.DataError`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modelops.contracts.data import EvalDataSource, EvalDataSpec
from modelops.data.tables import LABEL, DataError, Signature, check_columns, read_table, rows, split, write_npz
from modelops.storage import join

if TYPE_CHECKING:
    import numpy as np
    from mlflow import MlflowClient

    from modelops.recipes import RecipeInfo
    from modelops.settings import Settings
    from modelops.storage import Storage
    from modelops.tracking.registry import ResolvedVersion

log = logging.getLogger(__name__)

EVAL_CONTEXTS = ("evaluation", "eval", "validation", "test", "testing")
CALIBRATION_CONTEXTS = ("calibration", "training", "train")
CONTEXT_TAG = "mlflow.data.context"
#: An example with fewer rows than this is used, with a note that the gate saw few rows.
SMALL_EXAMPLE_ROWS = 32


@dataclass(frozen=True)
class LoggedDataset:
    """One dataset input of the source run: its name, digest, context and loadable file (None: not a file)."""

    name: str
    digest: str
    context: str
    uri: str | None


def logged_datasets(client: MlflowClient, run_id: str | None, mlflow_bucket: str) -> list[LoggedDataset]:
    """The dataset inputs of ``run_id`` (the version's source run), in logged order."""
    if not run_id:
        return []
    try:
        run = client.get_run(run_id)
    except Exception as exc:  # noqa: BLE001 - a deleted or unreadable source run means no logged data
        log.warning("source run %s unreadable (%s): no logged datasets", run_id, str(exc).splitlines()[0])
        return []
    found = []
    for item in getattr(run.inputs, "dataset_inputs", None) or []:
        ds = item.dataset
        context = next((t.value for t in item.tags or [] if t.key == CONTEXT_TAG), "")
        found.append(LoggedDataset(ds.name, ds.digest, context.lower(), _source_uri(ds.source, mlflow_bucket)))
    return found


def _source_uri(source_json: str, mlflow_bucket: str) -> str | None:
    """The file a dataset source points to, as a URI our storage reads; None for sources that are not files."""
    from modelops.tracking.registry import ResolveError, to_s3_uri

    try:
        source = json.loads(source_json or "{}")
    except json.JSONDecodeError:
        return None
    uri = source.get("uri") or source.get("url") or source.get("path")
    if not isinstance(uri, str) or not uri:
        return None
    if uri.startswith("mlflow-artifacts:"):
        try:
            return to_s3_uri(uri, mlflow_bucket)
        except ResolveError:
            return None
    if uri.startswith("file://"):
        return uri.removeprefix("file://")
    return uri if uri.startswith(("s3://", "/")) else None


def _pick(datasets: list[LoggedDataset]) -> tuple[LoggedDataset | None, LoggedDataset | None]:
    """``(eval dataset, calibration dataset)`` among the loadable ones; one dataset alone is the eval set (split)."""
    usable = [d for d in datasets if d.uri]
    evals = [d for d in usable if d.context in EVAL_CONTEXTS]
    cals = [d for d in usable if d.context in CALIBRATION_CONTEXTS]
    if evals:
        return evals[0], (cals[0] if cals else None)
    if len(usable) == 1 or cals:  # only training data: split it (calibration and gate rows stay disjoint)
        return (cals or usable)[0], None
    return None, None


def input_example_table(storage: Storage, source_uri: str, mlmodel: dict[str, Any],
                        signature: Signature | None) -> dict[str, np.ndarray] | None:  # fmt: skip
    """The logged input example as ``{column: array}``; None when there is none or it cannot be read."""
    import numpy as np

    info = mlmodel.get("saved_input_example_info") or {}
    path = info.get("artifact_path")
    if not path:
        return None
    try:
        doc = json.loads(storage.read_bytes(join(source_uri, path)))
    except Exception as exc:  # noqa: BLE001 - an unreadable example is no data, not a failed run
        log.warning("input example %s unreadable: %s", path, str(exc).splitlines()[0] if str(exc) else exc)
        return None
    # {"inputs": ...} / {"instances": ...} (tensors), or the pandas split orient {"columns", "data"} at either level
    data = doc.get("inputs", doc.get("instances", doc)) if isinstance(doc, dict) else doc
    if isinstance(data, dict) and "columns" in data and "data" in data:
        frame = np.asarray(data["data"], dtype=object)
        return {str(c): np.asarray(list(frame[:, i])) for i, c in enumerate(data["columns"])}
    if isinstance(data, dict):
        return {str(k): np.asarray(v) for k, v in data.items()}
    if signature is not None and len(signature.inputs) == 1:
        return {signature.inputs[0]: np.asarray(data)}
    return None


def prepare(
    storage: Storage,
    run_prefix: str,
    *,
    eval_data_uri: str | None,
    datasets: list[LoggedDataset],
    recipe_ships_data: bool,
    source_uri: str,
    mlmodel: dict[str, Any],
    label: str = LABEL,
) -> EvalDataSpec:
    """Pick the rows, check them against the signature, write them under ``run_prefix/data``; the spec's block.

    Raises:
        DataError: ``eval_data_uri`` or the chosen logged dataset cannot be used (one line naming the problem).
    """
    signature = Signature.from_mlmodel(mlmodel)
    columns = list(signature.inputs) if signature is not None and not signature.tensor else []
    if eval_data_uri:
        table = read_table(storage, eval_data_uri)
        check_columns(table, signature, eval_data_uri, label)
        return _write(storage, run_prefix, EvalDataSource.URI, eval_data_uri, table, None, columns, label)
    evals, cals = _pick(datasets)
    if evals is not None:
        table = read_table(storage, evals.uri)
        check_columns(table, signature, f"{evals.uri} (dataset {evals.name!r})", label)
        calibration = None
        if cals is not None:
            calibration = read_table(storage, cals.uri)
            check_columns(calibration, signature, f"{cals.uri} (dataset {cals.name!r})", label)
        origin = f"{evals.name}@{evals.digest}" + (f" + {cals.name}@{cals.digest}" if cals else "")
        return _write(storage, run_prefix, EvalDataSource.MLFLOW_DATASET, origin, table, calibration, columns, label)
    if recipe_ships_data:
        return EvalDataSpec(source=EvalDataSource.RECIPE, origin="the recipe's own data")
    example = input_example_table(storage, source_uri, mlmodel, signature)
    if example:
        try:
            check_columns(example, signature, "the logged input example", label)
        except DataError as exc:
            log.warning("%s: not used", exc)
        else:
            n = rows(example)
            note = (f"the gate ran on the logged input example, {n} row(s): log an evaluation dataset for a "
                    "trustworthy gate" if n < SMALL_EXAMPLE_ROWS else "")  # fmt: skip
            return _write(storage, run_prefix, EvalDataSource.INPUT_EXAMPLE, "input_example", example, None, columns,
                          label, note=note)  # fmt: skip
    return EvalDataSpec(
        source=EvalDataSource.SYNTHETIC, origin="seeded random inputs",
        note="the gate ran on synthetic inputs (no dataset, eval_data_uri, recipe data or input example): "
        "calibrated variants skipped",
    )  # fmt: skip


def _write(storage: Storage, run_prefix: str, source: EvalDataSource, origin: str, table: dict[str, np.ndarray],
           calibration: dict[str, np.ndarray] | None, columns: list[str], label: str,
           note: str = "") -> EvalDataSpec:  # fmt: skip
    evals, cals = split(table, calibration)
    if label != LABEL and label in evals:  # the steps read the labels under one name
        evals[LABEL] = evals.pop(label)
        cals.pop(label, None)
    cals.pop(LABEL, None)
    eval_uri, cal_uri = join(run_prefix, "data", "eval.npz"), None
    storage.write_bytes(eval_uri, write_npz(evals))
    if rows(cals):
        cal_uri = join(run_prefix, "data", "calibration.npz")
        storage.write_bytes(cal_uri, write_npz(cals))
    spec = EvalDataSpec(source=source, origin=origin, eval_uri=eval_uri, calibration_uri=cal_uri,
                        eval_rows=rows(evals), calibration_rows=rows(cals), labels=LABEL in evals, columns=columns,
                        note=note)  # fmt: skip
    log.info("eval data: %s (%s): %d gate rows, %d calibration rows%s", source, origin, spec.eval_rows,
             spec.calibration_rows, ", labelled" if spec.labels else "")  # fmt: skip
    return spec


def prepare_for_version(client: MlflowClient, storage: Storage, settings: Settings, resolved: ResolvedVersion,
                        info: RecipeInfo, run_id: str, eval_data_uri: str | None) -> EvalDataSpec:  # fmt: skip
    """:func:`prepare` for a resolved model version: its source run's datasets, its label tag, the recipe's data.

    LLM recipes gate on their own prompts (next-token agreement): their block says ``recipe``.
    """
    from modelops.contracts.naming import TAG_LABEL_COLUMN, run_prefix

    if info.generative:
        return EvalDataSpec(source=EvalDataSource.RECIPE, origin="the recipe's prompts")
    return prepare(
        storage,
        run_prefix(settings.artifacts_bucket, resolved.name, resolved.version, run_id),
        eval_data_uri=eval_data_uri or None,
        datasets=logged_datasets(client, resolved.run_id, settings.mlflow_bucket),
        recipe_ships_data=info.ships_data,
        source_uri=resolved.source_uri,
        mlmodel=resolved.mlmodel,
        label=(resolved.tags.get(TAG_LABEL_COLUMN) or LABEL).strip(),
    )
