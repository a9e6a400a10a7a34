"""One settings object for paths, execution mode, buckets and Kubernetes placement.

Everything that differs between the embedded stack and a cluster is read here, from the environment,
so that the rest of the code never looks at ``os.environ`` itself (except the stack launcher, which
writes the environment of the processes it starts).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

EXECUTION_MODES = ("local", "kubernetes")


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


@dataclass(frozen=True)
class KubernetesSettings:
    """Placement of heavy steps when ``MODELOPS_EXECUTION=kubernetes``."""

    namespace: str = "modelops"
    image: str = "modelops/worker:latest"
    gpu_resource: str = "nvidia.com/gpu"  # or a MIG resource such as nvidia.com/mig-1g.10gb
    gpu_count: int = 1
    cpu: str = "4"
    memory: str = "16Gi"
    node_selector: dict[str, str] = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    gpu_product: str = ""  # GPU Feature Discovery label value, e.g. NVIDIA-H100-80GB-HBM3
    priority_class: str = "modelops-gpu"
    service_account: str = "modelops-worker"
    s3_secret: str = "modelops-s3"  # Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL
    pool: str = "gpu"

    @classmethod
    def from_env(cls) -> KubernetesSettings:
        node_selector = json.loads(os.environ["MODELOPS_K8S_NODE_SELECTOR"]) if os.environ.get(
            "MODELOPS_K8S_NODE_SELECTOR"
        ) else {"nvidia.com/gpu.present": "true"}
        gpu_product = _env("MODELOPS_K8S_GPU_PRODUCT", "")
        if gpu_product:
            node_selector = {**node_selector, "nvidia.com/gpu.product": gpu_product}
        return cls(
            namespace=_env("MODELOPS_K8S_NAMESPACE", cls.namespace),
            image=_env("MODELOPS_K8S_IMAGE", cls.image),
            gpu_resource=_env("MODELOPS_K8S_GPU_RESOURCE", cls.gpu_resource),
            gpu_count=int(_env("MODELOPS_K8S_GPU_COUNT", str(cls.gpu_count))),
            cpu=_env("MODELOPS_K8S_CPU", cls.cpu),
            memory=_env("MODELOPS_K8S_MEMORY", cls.memory),
            node_selector=node_selector,
            gpu_product=gpu_product,
            priority_class=_env("MODELOPS_K8S_PRIORITY_CLASS", cls.priority_class),
            service_account=_env("MODELOPS_K8S_SERVICE_ACCOUNT", cls.service_account),
            s3_secret=_env("MODELOPS_K8S_S3_SECRET", cls.s3_secret),
            pool=_env("MODELOPS_K8S_POOL", cls.pool),
        )


@dataclass(frozen=True)
class Settings:
    """Paths and choices of this installation. Build it with :meth:`from_env`."""

    repo_root: Path
    stack_dir: Path
    tools_dir: Path
    worker_python: Path
    execution: str
    artifacts_bucket: str
    triton_bucket: str
    mlflow_bucket: str
    kubernetes: KubernetesSettings
    # Airflow pool of the local benchmark task (one slot: perf_analyzer runs of concurrent DAG runs would
    # share the CPU and measure each other). Empty: Airflow's default pool. The stack sets and creates it.
    benchmark_pool: str = ""

    @classmethod
    def from_env(cls) -> Settings:
        execution = _env("MODELOPS_EXECUTION", "local")
        if execution not in EXECUTION_MODES:
            raise ValueError(f"MODELOPS_EXECUTION must be one of {EXECUTION_MODES}, got {execution!r}")
        return cls(
            repo_root=REPO_ROOT,
            stack_dir=Path(_env("MODELOPS_STACK_DIR", str(REPO_ROOT / ".stack"))).resolve(),
            tools_dir=Path(_env("MODELOPS_TOOLS_DIR", str(REPO_ROOT / ".tools"))).resolve(),
            worker_python=Path(_env("MODELOPS_WORKER_PYTHON", str(REPO_ROOT / ".venv-worker" / "bin" / "python"))),
            execution=execution,
            artifacts_bucket=_env("MODELOPS_ARTIFACTS_BUCKET", "modelops-artifacts"),
            triton_bucket=_env("MODELOPS_TRITON_BUCKET", "triton"),
            mlflow_bucket=_env("MODELOPS_MLFLOW_BUCKET", "mlflow"),
            kubernetes=KubernetesSettings.from_env(),
            benchmark_pool=_env("MODELOPS_BENCHMARK_POOL", ""),
        )

    # Serving tools (the nvidia-pytriton wheel's tritonserver, tritonclient 2.51's perf_analyzer).
    @property
    def tritonserver_bin(self) -> Path:
        return Path(_env("MODELOPS_TRITONSERVER", str(self.tools_dir / "pytriton" / "pytriton" / "tritonserver" / "bin" / "tritonserver")))

    @property
    def triton_backends_dir(self) -> Path:
        return Path(_env("MODELOPS_TRITON_BACKENDS", str(self.tools_dir / "pytriton" / "pytriton" / "tritonserver" / "backends")))

    @property
    def perf_analyzer_bin(self) -> Path:
        return Path(_env("MODELOPS_PERF_ANALYZER", str(self.tools_dir / "tritonclient" / "tritonclient-2.51.0.data" / "data" / "bin" / "perf_analyzer")))

    @property
    def tool_library_path(self) -> str:
        """LD_LIBRARY_PATH entries that tritonserver and perf_analyzer need (see ENVIRONMENT.md)."""
        env = _env("MODELOPS_TOOLS_LD_LIBRARY_PATH", "")
        if env:
            return env
        lib_file = self.tools_dir / "ld_library_path"
        return lib_file.read_text().strip() if lib_file.exists() else ""

    @property
    def stack_file(self) -> Path:
        return self.stack_dir / "stack.json"


def get_settings() -> Settings:
    return Settings.from_env()
