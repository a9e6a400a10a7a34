"""The GPU a step runs on, as ``nvidia-smi`` reports it (name, compute capability, driver).

TensorRT engines only run on the GPU model and TensorRT version they were built with, so the compile step
tags every engine with what :func:`detect_gpu` finds; without a GPU it finds nothing and the step skips.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GpuInfo:
    """The GPU an engine is built on (``nvidia-smi``)."""

    name: str
    compute_capability: str | None = None  # "9.0"
    driver: str | None = None

    def capability(self) -> tuple[int, int] | None:
        if not self.compute_capability:
            return None
        major, _, minor = self.compute_capability.partition(".")
        return int(major), int(minor or 0)

    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "-", self.name).strip("-").lower() or "gpu"


def detect_gpu(runner: Callable[..., Any] = subprocess.run) -> GpuInfo | None:
    """The first GPU ``nvidia-smi`` lists (name, compute capability, driver), or None without one."""
    for fields in ("name,compute_cap,driver_version", "name,driver_version"):  # old drivers lack compute_cap
        try:
            proc = runner(
                ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return None
        lines = [ln for ln in (proc.stdout or "").splitlines() if ln.strip()]
        if proc.returncode == 0 and lines:
            parts = [p.strip() for p in lines[0].split(",")]
            if fields.startswith("name,compute_cap"):
                return GpuInfo(parts[0], parts[1] if len(parts) > 1 else None, parts[2] if len(parts) > 2 else None)
            return GpuInfo(parts[0], None, parts[1] if len(parts) > 1 else None)
    return None
