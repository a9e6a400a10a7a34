"""Rows for the gate and calibration: read a user's file, check it against the signature, split it, turn it into tensors.

Formats by file extension: Parquet (``.parquet``, ``.pq``), CSV (``.csv``), JSON lines (``.jsonl``, ``.ndjson``)
and numpy (``.npz``). Columns (or npz keys) are named after the signature's inputs (a tensor signature: one
column per input, a cell holding the input's values, nested or flat) or are the signature's columns (a column
signature: one scalar per feature); an optional ``label`` column holds the true labels. pandas and pyarrow (through
MLflow in the orchestrator environment) read the tables; numpy and pandas load inside the functions.

Every problem is a :class:`DataError` with one line naming it: unreadable file, unknown format, no rows, a missing
column, columns of different lengths, a cell that does not fit the input's shape.
"""

from __future__ import annotations

import io as _io
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from modelops.recipes import IOSpec
    from modelops.storage import Storage

LABEL = "label"
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".npz": "npz"}  # fmt: skip
#: Most rows the gate scores (a deterministic sample of a larger file) and most rows calibration takes.
MAX_EVAL_ROWS = 1024
MAX_CALIBRATION_ROWS = 256
#: Fewest calibration rows split off one table: a smaller table goes to the gate whole (no calibrated variant).
MIN_CALIBRATION_ROWS = 8
SPLIT_SEED = 0


class DataError(ValueError):
    """Evaluation data that cannot be used; the message is one line naming the problem."""


def data_format(uri: str) -> str:
    suffix = PurePosixPath(uri.split("?", 1)[0]).suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"eval data {uri}: unknown format {suffix or '(no extension)'!r}; "
                        f"use one of {', '.join(sorted(FORMATS))}")  # fmt: skip
    return FORMATS[suffix]


def parse_table(raw: bytes, fmt: str, where: str) -> dict[str, np.ndarray]:
    """``{column: array}`` of a file's bytes; list-valued cells become one array of shape ``[rows, ...]``."""
    import numpy as np

    if fmt == "npz":
        try:
            with np.load(_io.BytesIO(raw), allow_pickle=False) as npz:
                table = {k: np.asarray(npz[k]) for k in npz.files}
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's problem, said in one line
            raise DataError(f"eval data {where} is not a readable .npz file: {_first_line(exc)}") from None
        lengths = {k: (len(v) if v.ndim else 0) for k, v in table.items()}
        if len(set(lengths.values())) > 1:
            raise DataError(f"eval data {where}: arrays of different lengths {lengths}")
        return table
    import pandas as pd

    try:
        if fmt == "parquet":
            frame = pd.read_parquet(_io.BytesIO(raw))
        elif fmt == "csv":
            frame = pd.read_csv(_io.BytesIO(raw))
        else:
            frame = pd.read_json(_io.BytesIO(raw), lines=True)
    except Exception as exc:  # noqa: BLE001
        label = {"parquet": "Parquet", "csv": "CSV", "jsonl": "JSON lines"}[fmt]
        raise DataError(f"eval data {where} is not a readable {label} file: {_first_line(exc)}") from None
    return {str(col): _column(frame[col], str(col), where) for col in frame.columns}


def _column(series: Any, name: str, where: str) -> np.ndarray:
    import numpy as np

    values = series.to_numpy()
    if values.dtype != object:
        return values
    cells = [np.asarray(c) if isinstance(c, (list, tuple, np.ndarray)) else c for c in values]
    if cells and all(isinstance(c, np.ndarray) for c in cells):
        try:
            return np.stack([np.stack(c) if c.dtype == object else c for c in cells])
        except ValueError:
            raise DataError(f"eval data {where}: column {name!r} has cells of different shapes") from None
    if all(isinstance(c, str) for c in cells):
        return values.astype(str)  # text (a unicode array: npz files stay pickle-free)
    raise DataError(f"eval data {where}: column {name!r} mixes values of different kinds")


def read_table(storage: Storage, uri: str) -> dict[str, np.ndarray]:
    """Read ``uri`` (``s3://`` or a local path) into ``{column: array}``.

    Raises:
        DataError: missing, unreadable, of an unknown format, or empty.
    """
    fmt = data_format(uri)
    try:
        raw = storage.read_bytes(uri)
    except FileNotFoundError:
        raise DataError(f"eval data {uri} not found") from None
    except Exception as exc:  # noqa: BLE001 - an access error names the URI and the cause
        raise DataError(f"eval data {uri} could not be read: {_first_line(exc)}") from None
    if not raw:
        raise DataError(f"eval data {uri} is empty (0 bytes)")
    table = parse_table(raw, fmt, uri)
    if not table or rows(table) == 0:
        raise DataError(f"eval data {uri} is empty (no rows)")
    return table


def rows(table: dict[str, np.ndarray]) -> int:
    return len(next(iter(table.values()))) if table else 0


@dataclass(frozen=True)
class Signature:
    """What resolve knows of a model's inputs from its MLflow signature."""

    inputs: tuple[str, ...]  # tensor inputs or columns, in signature order
    tensor: bool  # a tensor signature (one column per input) or a column signature (one column per feature)

    @classmethod
    def from_mlmodel(cls, mlmodel: dict[str, Any]) -> Signature | None:
        import json

        raw = (mlmodel.get("signature") or {}).get("inputs")
        if not raw:
            return None
        specs = json.loads(raw) if isinstance(raw, str) else raw
        names = tuple(str(s.get("name") or "") for s in specs)  # "": an unnamed tensor (logged from a bare array)
        return cls(inputs=names, tensor=all(s.get("type") == "tensor" for s in specs))


def check_columns(table: dict[str, np.ndarray], signature: Signature | None, where: str, label: str = LABEL) -> None:
    """Every input of the signature is a column of ``table``.

    Raises:
        DataError: naming the first missing column and what the file has.
    """
    if signature is None:
        return
    features = [k for k in table if k != label]
    if len(signature.inputs) == 1 and signature.tensor:
        # one tensor input: its column, or a table of scalar feature columns (stacked in file order); an unnamed
        # input (logged from a bare array) takes the one column there is
        scalar = len(features) > 1 and all(table[k].ndim == 1 for k in features)
        if signature.inputs[0] in table or scalar or (not signature.inputs[0] and len(features) == 1):
            return
    if len(signature.inputs) == 1 and not signature.inputs[0] and len(features) == 1:
        return  # one unnamed input (a bare array, a list of strings): the one column there is
    missing = [name or "(unnamed input)" for name in signature.inputs if not name or name not in table]
    if missing:
        kind = "inputs" if signature.tensor else "columns"
        raise DataError(f"eval data {where} has no column {missing[0]!r} of the signature's {kind} "
                        f"{list(signature.inputs)} (it has {features})")  # fmt: skip


def take(table: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[index] for k, v in table.items()}


def split(table: dict[str, np.ndarray], calibration: dict[str, np.ndarray] | None = None,
          max_eval: int = MAX_EVAL_ROWS, max_calibration: int = MAX_CALIBRATION_ROWS,
          seed: int = SPLIT_SEED) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:  # fmt: skip
    """``(eval rows, calibration rows)``, deterministic and disjoint.

    With a separate ``calibration`` table the eval table is scored whole (a sample of ``max_eval`` rows when
    larger) and calibration takes a sample of its own table. One table: a seeded permutation gives calibration
    a quarter of the rows (``max_calibration`` at most; none when that is under ``MIN_CALIBRATION_ROWS``) and the gate
    the rest.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    n = rows(table)
    if calibration is not None:
        evals = np.sort(rng.permutation(n)[:max_eval])
        m = rows(calibration)
        return take(table, evals), take(calibration, np.sort(rng.permutation(m)[:max_calibration]))
    order = rng.permutation(n)
    n_cal = min(max_calibration, n // 4)
    n_cal = n_cal if n_cal >= MIN_CALIBRATION_ROWS else 0
    return take(table, np.sort(order[n_cal:][:max_eval])), take(table, np.sort(order[:n_cal]))


def model_inputs(table: dict[str, np.ndarray], io: IOSpec, columns: list[str] | None = None,
                 label: str = LABEL) -> tuple[dict[str, np.ndarray], np.ndarray | None]:  # fmt: skip
    """``(inputs, labels)`` as the exported model takes them: one array ``[rows, *dims]`` per input, cast to its dtype.

    A table whose keys are the model's input names feeds each input from its column; a tabular model (one input,
    a column signature) gets its feature columns stacked in ``columns`` order.

    Raises:
        DataError: a missing input, or a column that does not fit the input's shape.
    """
    import numpy as np

    labels = np.asarray(table[label]) if label in table else None
    n = rows(table)
    out: dict[str, np.ndarray] = {}
    if all(spec.name in table for spec in io.inputs):
        for spec in io.inputs:
            out[spec.name] = _fit(np.asarray(table[spec.name]), spec, io, n)
    elif len(io.inputs) == 1 and (features := _features(table, columns, label)):
        if len(features) == 1:
            out[io.inputs[0].name] = _fit(np.asarray(table[features[0]]), io.inputs[0], io, n)
        else:
            stacked = np.stack([np.asarray(table[c], dtype=np.float64) for c in features], axis=1)
            out[io.inputs[0].name] = _fit(stacked, io.inputs[0], io, n)
    else:
        have = [k for k in table if k != label]
        raise DataError(f"eval data has no column for the model's inputs {io.input_names} (it has {have})")
    return out, labels


def _features(table: dict[str, np.ndarray], columns: list[str] | None, label: str) -> list[str]:
    """The columns feeding a one-input model: the column signature's, else every non-label column (one array
    column, or scalar feature columns in file order); empty when neither fits."""
    if columns:
        return list(columns) if all(c in table for c in columns) else []
    keys = [k for k in table if k != label]
    if len(keys) == 1 or (keys and all(table[k].ndim == 1 for k in keys)):
        return keys
    return []


def _fit(values: np.ndarray, spec: Any, io: IOSpec, n: int) -> np.ndarray:
    import numpy as np

    dims = list(spec.dims) if io.max_batch_size > 0 else list(spec.dims)[1:]
    target = [n, *dims]
    if -1 not in dims:
        size = int(np.prod(dims)) if dims else 1
        if values.size != n * size:
            raise DataError(f"eval data column {spec.name!r}: {values.shape[1:] or '(scalar)'} per row does not fit "
                            f"the input's dims {tuple(dims)}")  # fmt: skip
        values = values.reshape(target)
    elif values.ndim != len(target):
        raise DataError(f"eval data column {spec.name!r}: {values.ndim - 1} dims per row, the input has {len(dims)}")
    return values.astype(np.dtype(spec.dtype), copy=False)


def write_npz(table: dict[str, np.ndarray]) -> bytes:
    import numpy as np

    buf = _io.BytesIO()
    np.savez(buf, **table)
    return buf.getvalue()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
