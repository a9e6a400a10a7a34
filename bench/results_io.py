"""Where the bench scripts write their results: ``bench/results/<name>.json`` (git-ignored)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def cpuinfo() -> tuple[str, set[str]]:
    """This CPU's model name and instruction-set flags (``/proc/cpuinfo``; the platform's name and no flags without
    it)."""
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return model, flags


def host_info() -> dict[str, Any]:
    """The CPU a result was measured on: its model name, cores and the INT8/BF16 instruction sets it has (results
    from two hosts do not compare: this machine moved from an AMX Xeon to a Zen 5 EPYC between two sessions)."""
    model, flags = cpuinfo()
    return {"cpu": model, "cpus": os.cpu_count(), "isa": [f for f in ISA_FLAGS if f in flags]}


def write_results(name: str, results: dict[str, Any]) -> Path:
    """Write ``results`` as indented JSON to ``bench/results/<name>.json``; returns the path."""
    out = RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return out
