"""Building blocks of the optimize and compile steps.

- :mod:`modelops.optimization.ort_cpu`: ONNX Runtime on CPU with the deployments' session options (every
  step that scores a model runs through it).
- :mod:`modelops.optimization.qdq_graph`: calibration data, QDQ quantization and graph queries.
- :mod:`modelops.optimization.static_quant`: ONNX Runtime static QDQ (U8S8, per-channel) with an automatic,
  sensitivity-driven layer-exclusion policy. Runs in the worker environment.
- :mod:`modelops.optimization.modelopt_cli`: NVIDIA ModelOpt INT8/FP8 Q/DQ for TensorRT. Runs in its own
  environment (``.venv-modelopt``) as a subprocess; importing it here never imports ``modelopt``.
- :mod:`modelops.optimization.openvino`: the OpenVINO variants (NNCF INT8, bf16 hint) and running a model in
  OpenVINO as the deployments do. Imports ``openvino``/``nncf`` only when used.
- :mod:`modelops.optimization.gpu`: the GPU a step runs on (``nvidia-smi``), for TensorRT engines.

This package imports nothing heavy at import time.
"""

from __future__ import annotations
