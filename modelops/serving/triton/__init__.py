"""Triton model directories (config.pbtxt + python-backend model) and a local tritonserver process."""

from __future__ import annotations

from modelops.serving.triton.model_dir import MODEL_KINDS, build_model_dir, render_config

__all__ = ["MODEL_KINDS", "build_model_dir", "render_config"]
