"""GPU check for a lent GPU machine (``scripts/gpu_check.sh``, ``make gpu-check``): a few minutes, one JSON report.

Checks, each ``ok`` / ``skipped`` (with the reason) / ``failed`` (with one line), with its numbers and versions:

- ``gpu_discovery``: ``nvidia-smi`` (GPUs, MIG mode and MIG devices) -> the GPU Feature Discovery product label
  (``nvidia.com/gpu.product``), the Kubernetes GPU resources, the Airflow pool ``deploy/gpu_capacity.py``
  would size, and the engine tag the compile step records (:func:`modelops.optimization.gpu.detect_gpu`);
- ``ort_cuda_vs_torch``: the demo candidates (digits CNN, wine MLP, trained as the demo trains them) in
  PyTorch eager on the GPU vs ONNX Runtime's CUDA execution provider, host to host, same inputs;
- ``modelopt_int8`` / ``modelopt_fp8``: ModelOpt Q/DQ calibration with ``--eps cuda:0`` in the ModelOpt
  environment (``MODELOPS_MODELOPT_PYTHON`` or ``.venv-modelopt``, ``make modelopt``);
- ``tensorrt``: the compile step's :func:`~modelops.steps.compile.build_engine` (``trt_fp16``) on the digits
  ONNX where ``tensorrt`` imports, and the engine's latency and agreement with PyTorch.

Without a GPU every GPU check is skipped with its reason and the exit code is 0; it is 1 when a check failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
DEFAULT_OUT = REPO / "bench" / "results" / "gpu_check.json"
CHECKS = ("gpu_discovery", "ort_cuda_vs_torch", "modelopt_int8", "modelopt_fp8", "tensorrt")
SMI_FIELDS = "index,name,compute_cap,driver_version,memory.total,mig.mode.current"
MIG_LINE = re.compile(r"^\s+MIG\s+(\S+)\s+Device\s+(\d+):")
GPU_LINE = re.compile(r"^GPU\s+(\d+):")
ORT_HINT = ("the worker-gpu image has onnxruntime-gpu (docker/worker-gpu.Dockerfile); on a bare machine set "
            "MODELOPS_GPU_CHECK_PYTHON to an interpreter with it, or MODELOPS_GPU_CHECK_WHEELS to a folder of wheels")
FP8_MIN = (8, 9)


class Skip(Exception):
    """The check does not apply on this machine; the message says why."""


# -- discovery (pure parsing, unit-tested with real nvidia-smi output) -------------------------------------------
def parse_smi_gpus(text: str) -> list[dict[str, Any]]:
    """Rows of ``nvidia-smi --query-gpu=<SMI_FIELDS> --format=csv,noheader,nounits``."""
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 6 or not parts[0].isdigit():
            continue
        mem = parts[4]
        gpus.append({"index": int(parts[0]), "name": parts[1], "compute_capability": parts[2],
                     "driver": parts[3], "memory_mib": int(mem) if mem.isdigit() else None,
                     "mig_mode": parts[5] if parts[5] not in ("[N/A]", "N/A") else None})
    return gpus


def parse_mig_devices(text: str) -> dict[int, list[str]]:
    """GPU index -> MIG profiles of its MIG devices, from ``nvidia-smi -L``."""
    found: dict[int, list[str]] = {}
    gpu = None
    for line in text.splitlines():
        if m := GPU_LINE.match(line):
            gpu = int(m.group(1))
            found.setdefault(gpu, [])
        elif (m := MIG_LINE.match(line)) and gpu is not None:
            found[gpu].append(m.group(1))
    return found


def gfd_product(name: str) -> str:
    """The ``nvidia.com/gpu.product`` label GPU Feature Discovery gives a GPU of this NVML name (spaces -> '-')."""
    return re.sub(r"\s+", "-", name.strip())


def _load_gpu_capacity() -> Any:
    name = "modelops_deploy_gpu_capacity"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "deploy" / "gpu_capacity.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)  # stdlib only
    return sys.modules[name]


def placement(gpus: list[dict[str, Any]], mig: dict[int, list[str]]) -> list[dict[str, Any]]:
    """Per GPU: product label, Kubernetes resources (``mixed`` MIG strategy) and the Airflow pools they feed."""
    capacity = _load_gpu_capacity()
    out = []
    for gpu in gpus:
        product = gfd_product(gpu["name"])
        profiles = sorted(set(mig.get(gpu["index"], []))) if gpu["mig_mode"] == "Enabled" else []
        resources = [f"nvidia.com/mig-{p}" for p in profiles] or ["nvidia.com/gpu"]
        pools = [capacity.GpuCapacity(product, p, 1, ()).pool_name() for p in (profiles or [None])]
        out.append({"index": gpu["index"], "gpu_product": product, "mig_profiles": profiles,
                    "k8s_resources": resources, "airflow_pools": pools})
    return out


def _smi(*args: str) -> str:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        raise Skip("nvidia-smi not found: no NVIDIA driver on this machine")
    proc = subprocess.run([smi, *args], capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        raise Skip(f"nvidia-smi failed (exit {proc.returncode}): {lines[0][:200] if lines else 'no output'}")
    return proc.stdout


def check_gpu_discovery(ctx: dict[str, Any]) -> dict[str, Any]:
    from modelops.optimization.gpu import detect_gpu

    gpus = parse_smi_gpus(_smi(f"--query-gpu={SMI_FIELDS}", "--format=csv,noheader,nounits"))
    if not gpus:
        raise Skip("nvidia-smi lists no GPU")
    mig = parse_mig_devices(_smi("-L"))
    engine_gpu = detect_gpu()
    ctx["capability"] = engine_gpu.capability() if engine_gpu else None
    return {"gpus": gpus, "placement": placement(gpus, mig),
            "engine_tag": {"gpu": engine_gpu.name, "compute_capability": engine_gpu.compute_capability,
                           "driver": engine_gpu.driver, "slug": engine_gpu.slug()} if engine_gpu else None,
            "k8s_gpu_product_setting": (settings.kubernetes.gpu_product or None) if (settings := _settings()) else None}


# -- demo candidates, PyTorch eager vs ONNX Runtime CUDA ---------------------------------------------------------
def _cuda_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise Skip(f"torch not importable: {exc}") from None
    if not torch.cuda.is_available():
        raise Skip(f"no CUDA device visible to torch {torch.__version__}")
    return torch


def _candidates(ctx: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The demo models, trained as ``model_recipes.demo_models`` trains them, exported to ONNX once."""
    if "candidates" in ctx:
        return ctx["candidates"]
    import numpy as np
    import torch

    from model_recipes.demo_models import train
    from model_recipes.digits_cnn import digits_split

    out = {}
    for kind in ("digits", "wine"):
        trained = train(kind)
        model = trained.model.eval()
        if kind == "digits":
            x_train, x_test = digits_split()[:2]
        else:
            from model_recipes.demo_models import wine_split

            x_train, x_test = wine_split()[:2]
        path = Path(ctx["workdir"]) / f"{kind}.onnx"
        example = torch.from_numpy(trained.example)
        names = {"input_names": ["input"], "output_names": ["output"],
                 "dynamic_axes": {"input": {0: "batch"}, "output": {0: "batch"}}}
        try:
            torch.onnx.export(model, (example,), str(path), **names, dynamo=False)
        except TypeError:  # a torch without the dynamo argument
            torch.onnx.export(model, (example,), str(path), **names)
        calib = Path(ctx["workdir"]) / f"{kind}-calib.npz"
        np.savez(calib, input=x_train[:128])
        out[kind] = {"model": model, "onnx": path, "calib": calib, "x_test": x_test, "accuracy": trained.accuracy}
    ctx["candidates"] = out
    return out


def _batch(x: Any, n: int) -> Any:
    import numpy as np

    reps = -(-n // len(x))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:n])


def _time_ms(fn: Callable[[], Any], iters: int, warmup: int = 20) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return {"p50_ms": round(statistics.median(samples), 4), "p99_ms": round(samples[int(len(samples) * 0.99) - 1], 4),
            "mean_ms": round(statistics.fmean(samples), 4), "iters": iters}


def check_ort_cuda_vs_torch(ctx: dict[str, Any], iters: int = 300) -> dict[str, Any]:
    torch = _cuda_torch()
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise Skip(f"onnxruntime not importable ({exc}); {ORT_HINT}") from None
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise Skip(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider "
                   f"({', '.join(ort.get_available_providers())}): not onnxruntime-gpu; {ORT_HINT}")
    results: dict[str, Any] = {"onnxruntime": ort.__version__, "torch": torch.__version__,
                               "gpu": torch.cuda.get_device_name(0), "models": {}}
    for kind, cand in _candidates(ctx).items():
        model = cand["model"].to("cuda")
        session = ort.InferenceSession(str(cand["onnx"]), providers=["CUDAExecutionProvider"])
        if session.get_providers()[0] != "CUDAExecutionProvider":
            raise RuntimeError(f"{kind}: onnxruntime fell back to {session.get_providers()}")
        rows = {}
        for n in (1, 64):
            x = _batch(cand["x_test"], n)

            def eager(x=x, model=model):
                with torch.inference_mode():
                    return model(torch.from_numpy(x).to("cuda")).cpu().numpy()

            def onnx_rt(x=x, session=session):
                return session.run(None, {"input": x})[0]

            diff = float(abs(eager() - onnx_rt()).max())
            t_eager, t_ort = _time_ms(eager, iters), _time_ms(onnx_rt, iters)
            rows[f"batch_{n}"] = {"torch_eager": t_eager, "ort_cuda": t_ort, "max_abs_diff": diff,
                                  "ort_speedup_p50": round(t_eager["p50_ms"] / t_ort["p50_ms"], 3)}
        results["models"][kind] = rows
        cand["model"] = model.to("cpu")
    return results


# -- ModelOpt on the GPU -------------------------------------------------------------------------------------------
def _settings() -> Any | None:
    """``modelops.settings.Settings`` of this environment; None where pydantic-settings is missing (a bare machine)."""
    try:
        from modelops.settings import Settings
    except ModuleNotFoundError:
        return None
    return Settings.from_env()


def _modelopt_python() -> Path:
    settings = _settings()
    path = (settings.tools.modelopt_python if settings else None) or REPO / ".venv-modelopt" / "bin" / "python"
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise Skip(f"ModelOpt environment not found at {path}: make modelopt (or MODELOPS_MODELOPT_PYTHON)")
    return path


def check_modelopt(ctx: dict[str, Any], mode: str) -> dict[str, Any]:
    _cuda_torch()
    python = _modelopt_python()
    cap = ctx.get("capability")
    if mode == "fp8" and cap is not None and tuple(cap) < FP8_MIN:
        raise Skip(f"FP8 needs compute capability >= {FP8_MIN[0]}.{FP8_MIN[1]}; this GPU has {cap[0]}.{cap[1]}")
    cand = _candidates(ctx)["digits"]
    dest = Path(ctx["workdir"]) / f"digits.{mode}.onnx"
    cmd = [str(python), "-m", "modelops.optimization.modelopt_cli", "--src", str(cand["onnx"]), "--dest", str(dest),
           "--mode", mode, "--calib", str(cand["calib"]), "--eps", "cuda:0"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO, env=env, check=False)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
        raise RuntimeError(f"modelopt_cli {mode}: {lines[-1][:300] if lines else proc.returncode}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    summary["wall_s"] = round(time.perf_counter() - t0, 2)
    ctx[f"modelopt_{mode}"] = dest
    return summary


# -- TensorRT, through the compile step's builder -----------------------------------------------------------------
def check_tensorrt(ctx: dict[str, Any], iters: int = 300) -> dict[str, Any]:
    torch = _cuda_torch()
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise Skip(f"tensorrt not importable ({exc}); the worker-gpu image has tensorrt-cu13") from None
    from modelops.steps.compile import DEFAULT_VARIABLE_DIM, ENGINES, build_engine

    cand = _candidates(ctx)["digits"]
    work = Path(ctx["workdir"])
    build = build_engine(trt, cand["onnx"], work / "digits.plan", ENGINES["trt_fp16"], batched=True,
                         batch=(1, 8, 64), variable=DEFAULT_VARIABLE_DIM, timing_cache=work / "timing.cache")
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine((work / "digits.plan").read_bytes())
    context = engine.create_execution_context()
    x = torch.from_numpy(_batch(cand["x_test"], 64)).to("cuda")
    out = torch.empty((64, 10), dtype=torch.float32, device="cuda")
    context.set_input_shape("input", tuple(x.shape))
    context.set_tensor_address("input", x.data_ptr())
    context.set_tensor_address("output", out.data_ptr())
    stream = torch.cuda.current_stream()

    def run() -> None:
        context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()

    run()
    model = cand["model"].to("cuda")
    with torch.inference_mode():
        ref = model(x)
    cand["model"] = model.to("cpu")
    agreement = float((out.argmax(1) == ref.argmax(1)).float().mean())
    return {"tensorrt": trt.__version__, "build": asdict(build), "batch_64_device_only": _time_ms(run, iters),
            "argmax_agreement_vs_torch": agreement, "max_abs_diff": float((out - ref).abs().max())}


# -- driver ---------------------------------------------------------------------------------------------------------
def _versions() -> dict[str, Any]:
    found: dict[str, Any] = {"python": platform.python_version(), "executable": sys.executable}
    for name in ("torch", "onnx", "onnxruntime", "tensorrt", "numpy"):
        try:
            found[name] = importlib.import_module(name).__version__
        except Exception as exc:  # noqa: BLE001 - a version we cannot read is recorded, not fatal
            found[name] = f"not available ({type(exc).__name__})"
    return found


def run_checks(only: tuple[str, ...] = CHECKS) -> dict[str, Any]:
    """Run the checks in order; each one's outcome is recorded, none stops the others."""
    ctx: dict[str, Any] = {"workdir": tempfile.mkdtemp(prefix="gpu-check-")}
    funcs: dict[str, Callable[[], dict[str, Any]]] = {
        "gpu_discovery": lambda: check_gpu_discovery(ctx),
        "ort_cuda_vs_torch": lambda: check_ort_cuda_vs_torch(ctx),
        "modelopt_int8": lambda: check_modelopt(ctx, "int8"),
        "modelopt_fp8": lambda: check_modelopt(ctx, "fp8"),
        "tensorrt": lambda: check_tensorrt(ctx),
    }
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "host": platform.node(), "versions": _versions(), "checks": {}}
    try:
        for name in only:
            t0 = time.perf_counter()
            try:
                entry = {"status": "ok", **funcs[name]()}
            except Skip as exc:
                entry = {"status": "skipped", "reason": str(exc)}
            except ModuleNotFoundError as exc:  # a bare machine: the package is not available, not broken
                entry = {"status": "skipped", "reason": f"{exc.name} not available here ({exc}); carry its wheel "
                         "(MODELOPS_GPU_CHECK_WHEELS) or run in the worker-gpu image"}
            except Exception as exc:  # noqa: BLE001 - one check's failure is recorded, the others still run
                first = (str(exc).strip().splitlines() or [""])[0][:400]
                entry = {"status": "failed", "reason": f"{type(exc).__name__}: {first}"}
            entry["seconds"] = round(time.perf_counter() - t0, 2)
            report["checks"][name] = entry
    finally:
        shutil.rmtree(ctx["workdir"], ignore_errors=True)
    return report


def _detail(entry: dict[str, Any]) -> str:
    if entry["status"] != "ok":
        return entry.get("reason", "")
    if "placement" in entry:
        return "; ".join(f"GPU {p['index']}: {p['gpu_product']} {','.join(p['k8s_resources'])}" for p in entry["placement"])
    if "models" in entry:
        return "; ".join(f"{k} b{b.split('_')[1]}: torch {r['torch_eager']['p50_ms']:.3f} ms, ort {r['ort_cuda']['p50_ms']:.3f} ms"
                         for k, rows in entry["models"].items() for b, r in rows.items())
    if "quantize_linear" in entry:
        return f"{entry['quantize_linear']} QuantizeLinear, {entry['calibration_eps']}, {entry['wall_s']} s"
    if "build" in entry:
        return (f"fp16 plan {entry['build']['plan_bytes']} B in {entry['build']['build_seconds']} s, "
                f"b64 {entry['batch_64_device_only']['p50_ms']:.3f} ms, agreement {entry['argmax_agreement_vs_torch']:.3f}")
    return ""


def render_table(report: dict[str, Any]) -> str:
    """One line per check: name, status, the key numbers or the reason."""
    lines = [f"{'check':<20} {'status':<8} detail"]
    for name, entry in report["checks"].items():
        lines.append(f"{name:<20} {entry['status']:<8} {_detail(entry)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON report (default {DEFAULT_OUT})")
    parser.add_argument("--only", default=",".join(CHECKS), help="comma-separated checks to run")
    args = parser.parse_args(argv)
    only = tuple(c for c in args.only.split(",") if c)
    unknown = sorted(set(only) - set(CHECKS))
    if unknown:
        parser.error(f"unknown check(s) {', '.join(unknown)}; known: {', '.join(CHECKS)}")
    report = run_checks(only)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(render_table(report))
    print(f"report: {args.out}")
    return 1 if any(e["status"] == "failed" for e in report["checks"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
