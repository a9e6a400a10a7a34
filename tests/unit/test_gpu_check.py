"""scripts/gpu_check.sh without a GPU (every GPU check skipped, exit 0) and its nvidia-smi / MIG parsing.

The script runs for real, with the interpreter it picks itself; ``nvidia-smi`` is a fake on PATH (a machine
without a driver, an H100, an A100 split into MIG slices) and ``CUDA_VISIBLE_DEVICES`` hides any real GPU.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu_check.sh"
GPU_CHECKS = ("ort_cuda_vs_torch", "modelopt_int8", "modelopt_fp8", "tensorrt")

H100_QUERY = "0, NVIDIA H100 80GB HBM3, 9.0, 580.159.04, 81559, Disabled\n"
H100_LIST = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0c1e5b6a-7d7f-4a43-9a57-3b4b6d8f1e21)\n"
A100_QUERY = "0, NVIDIA A100-SXM4-80GB, 8.0, 570.86.15, 81920, Enabled\n1, NVIDIA A100-SXM4-80GB, 8.0, 570.86.15, 81920, Disabled\n"
A100_LIST = """GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a0f)
  MIG 3g.40gb     Device  0: (UUID: MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f)
  MIG 1g.10gb     Device  1: (UUID: MIG-cba663e8-9bed-5b25-b243-5985ef7c9beb)
  MIG 1g.10gb     Device  2: (UUID: MIG-1e099852-3624-508c-a3ab-3a7a2ec8e5fa)
GPU 1: NVIDIA A100-SXM4-80GB (UUID: GPU-7a3e1b2c-1111-2222-3333-444455556666)
"""


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_smi(tmp_path: Path, query: str | None, listing: str = "") -> Path:
    """A fake ``nvidia-smi``: ``query=None`` is a machine whose driver does not answer (exit 9)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if query is None:
        body = 'echo "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."; exit 9'
    else:
        detect = "\n".join(f"{p[1]}, {p[2]}, {p[3]}" for p in (ln.split(", ") for ln in query.splitlines()))
        body = f"""case "$*" in
  -L) printf '%s' '{listing}';;
  *query-gpu=name,compute_cap,driver_version*) printf '%s\\n' '{detect}';;
  *query-gpu=index,*) printf '%s' '{query}';;
  *) exit 2;;
esac"""
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"#!/usr/bin/env bash\n{body}\n")
    smi.chmod(0o755)
    return bin_dir


def _run(tmp_path: Path, bin_dir: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CUDA_VISIBLE_DEVICES": "",
           "MODELOPS_MODELOPT_PYTHON": str(tmp_path / "no-modelopt" / "python")}
    proc = subprocess.run(["bash", str(SCRIPT), "--out", str(out), *args], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    return proc, json.loads(out.read_text()) if out.is_file() else {}


def test_without_a_gpu_every_check_is_skipped_with_a_reason_and_exit_0(tmp_path):
    proc, report = _run(tmp_path, _fake_smi(tmp_path, None))
    assert proc.returncode == 0, proc.stderr
    checks = report["checks"]
    assert list(checks) == ["gpu_discovery", *GPU_CHECKS]
    assert checks["gpu_discovery"] == {"status": "skipped", "seconds": checks["gpu_discovery"]["seconds"],
                                       "reason": "nvidia-smi failed (exit 9): NVIDIA-SMI has failed because it "
                                                 "couldn't communicate with the NVIDIA driver."}
    for name in GPU_CHECKS:
        assert checks[name]["status"] == "skipped", (name, checks[name])
        assert checks[name]["reason"].startswith(("no CUDA device visible to torch", "torch not importable")), name
    assert report["versions"]["python"] and "torch" in report["versions"]
    table = proc.stdout.splitlines()
    assert any(line.split()[:2] == ["tensorrt", "skipped"] for line in table), proc.stdout


def test_an_h100_gives_the_product_label_resource_and_pool_of_deploy(tmp_path):
    proc, report = _run(tmp_path, _fake_smi(tmp_path, H100_QUERY, H100_LIST), "--only", "gpu_discovery,tensorrt")
    assert proc.returncode == 0, proc.stderr
    found = report["checks"]["gpu_discovery"]
    assert found["status"] == "ok", found
    kpo = yaml.safe_load((REPO / "deploy" / "airflow" / "kpo-defaults.yaml").read_text())["data"]
    assert found["placement"] == [{"index": 0, "gpu_product": kpo["MODELOPS_K8S_GPU_PRODUCT"], "mig_profiles": [],
                                   "k8s_resources": [kpo["MODELOPS_K8S_GPU_RESOURCE"]],
                                   "airflow_pools": [kpo["MODELOPS_K8S_POOL"]]}]
    assert found["engine_tag"] == {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
                                   "driver": "580.159.04", "slug": "nvidia-h100-80gb-hbm3"}
    assert found["gpus"][0]["memory_mib"] == 81559 and found["gpus"][0]["mig_mode"] == "Disabled"
    assert report["checks"]["tensorrt"]["status"] == "skipped"
    assert "NVIDIA-H100-80GB-HBM3 nvidia.com/gpu" in proc.stdout


def test_mig_slices_become_mig_resources_and_per_profile_pools():
    gc = _module()
    gpus = gc.parse_smi_gpus(A100_QUERY)
    assert [g["mig_mode"] for g in gpus] == ["Enabled", "Disabled"]
    mig = gc.parse_mig_devices(A100_LIST)
    assert mig == {0: ["3g.40gb", "1g.10gb", "1g.10gb"], 1: []}
    placed = gc.placement(gpus, mig)
    assert placed[0]["k8s_resources"] == ["nvidia.com/mig-1g.10gb", "nvidia.com/mig-3g.40gb"]
    # the pool deploy/airflow/kpo-defaults.yaml names for MIG 1g.10gb slices of this product
    assert "gpu-nvidia-a100-sxm4-80gb-mig-1g.10gb" in placed[0]["airflow_pools"]
    assert placed[1] == {"index": 1, "gpu_product": "NVIDIA-A100-SXM4-80GB", "mig_profiles": [],
                         "k8s_resources": ["nvidia.com/gpu"], "airflow_pools": ["gpu-nvidia-a100-sxm4-80gb"]}


def test_unknown_check_is_a_one_line_error(tmp_path):
    proc, report = _run(tmp_path, _fake_smi(tmp_path, None), "--only", "gpu_discovery,warp_drive")
    assert proc.returncode == 2 and not report
    assert proc.stderr.strip().splitlines()[-1].endswith("unknown check(s) warp_drive; known: " + ", ".join(
        ("gpu_discovery", *GPU_CHECKS)))


@pytest.mark.parametrize("line", ["", "index, name", "GPU 0: x"])
def test_parsing_ignores_lines_that_are_not_gpu_rows(line):
    assert _module().parse_smi_gpus(line) == []


def test_a_package_missing_on_a_bare_machine_is_skipped_and_a_crash_is_failed(monkeypatch):
    gc = _module()

    def needs_missing_package(ctx, iters=300):
        import tensorrt_not_installed_here  # noqa: F401

    def crashes(ctx):
        raise RuntimeError("digits: onnxruntime fell back to ['CPUExecutionProvider']\nsecond line")

    monkeypatch.setattr(gc, "check_tensorrt", needs_missing_package)
    monkeypatch.setattr(gc, "check_ort_cuda_vs_torch", crashes)
    checks = gc.run_checks(("ort_cuda_vs_torch", "tensorrt"))["checks"]
    assert checks["tensorrt"]["status"] == "skipped"
    assert checks["tensorrt"]["reason"].startswith("tensorrt_not_installed_here not available here")
    assert checks["ort_cuda_vs_torch"]["status"] == "failed"
    assert checks["ort_cuda_vs_torch"]["reason"] == "RuntimeError: digits: onnxruntime fell back to ['CPUExecutionProvider']"
