"""Quantization building blocks used by the optimize step.

- :mod:`modelops.optimization.static_quant`: ONNX Runtime static QDQ (U8S8, per-channel) with an automatic,
  sensitivity-driven layer-exclusion policy. Runs in the worker environment.
- :mod:`modelops.optimization.modelopt_cli`: NVIDIA ModelOpt INT8/FP8 Q/DQ for TensorRT. Runs in its own
  environment (``.venv-modelopt``) as a subprocess; importing it here never imports ``modelopt``.

This package imports nothing heavy at import time.
"""

from __future__ import annotations
