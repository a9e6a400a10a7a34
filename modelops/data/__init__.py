"""A run's evaluation and calibration rows: picked at resolve from what the user has, read by the steps.

- :mod:`modelops.data.sources`: resolve's choice (``eval_data_uri``, logged MLflow datasets, the recipe's data, the
  input example, synthetic) and the rows it writes under the run prefix;
- :mod:`modelops.data.tables`: reading Parquet / CSV / JSON lines / npz, checks against the signature, the split;
- :mod:`modelops.data.bound`: the steps' view, a recipe whose ``eval_data``/``calibration_data`` are those rows.
"""

from modelops.data.tables import DataError

__all__ = ["DataError"]
