"""One settings tree for paths, execution mode, buckets, tools, Kubernetes placement, triggers and the webhook.

Every ``MODELOPS_*`` variable the code reads is declared once, here or in a group of
:mod:`modelops.settings_groups` (``validation_alias`` = the variable, with its default and a one-line
description), so the rest of the code never looks at ``os.environ`` for them (the stack launcher and the reproduce script still *write* variables for child processes).
Rules: a blank variable means its default; a bad value raises :class:`SettingsError` with one line naming
the variable. Settings are built per call (:meth:`Settings.from_env`, a fraction of a millisecond), so a
changed environment is seen at once. The settings table of docs/configuration.md is generated from this tree:
``python -m modelops.settings --update-readme docs/configuration.md`` (``make docs``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from modelops.settings_groups import (  # re-exported: the groups are part of this module's interface
    GPU_PRODUCT_LABEL,
    PERF_ANALYZER,
    PYTRITON,
    ClientSettings,
    GatewaySettings,
    KubernetesSettings,
    StackSettings,
    ToolSettings,
    TriggerSettings,
    WebhookSettings,
    _Group,
    _var,
)

__all__ = [
    "EXECUTION_MODES", "GPU_PRODUCT_LABEL", "REPO_ROOT", "TRIGGER_SCOPES", "ClientSettings", "GatewaySettings",
    "KubernetesSettings", "Settings", "SettingsError", "StackSettings", "ToolSettings", "TriggerSettings",
    "WebhookSettings", "get_settings",
]  # fmt: skip

REPO_ROOT = Path(__file__).resolve().parent.parent

EXECUTION_MODES = ("local", "kubernetes")
TRIGGER_SCOPES = ("opted_in", "all")
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("modelops_settings_environ", default=None)


class SettingsError(ValueError):
    """A ``MODELOPS_*`` variable has a bad value; the message is one line naming it."""


class _EnvironSource(PydanticBaseSettingsSource):
    """Reads each field's variable (its ``validation_alias``) from the environment, nested groups included.

    The environment is ``os.environ`` unless :meth:`Settings.from_env` was given a mapping. Values are
    stripped; blank ones are left out, so the field keeps its default.
    """

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # unused: __call__ walks
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        environ = _ENVIRON.get()
        return _collect(self.settings_cls, os.environ if environ is None else environ)


def _collect(model: type[BaseModel], environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, _Group):
            group = _collect(info.annotation, environ)
            if group:
                values[name] = group
        elif isinstance(info.validation_alias, str):
            raw = (environ.get(info.validation_alias) or "").strip()
            if raw:
                values[info.validation_alias] = raw
    return values


class Settings(BaseSettings):
    """Paths and choices of this installation. Build it with :meth:`from_env`."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", validate_by_name=True, validate_by_alias=True)

    repo_root: Path = Field(REPO_ROOT, description="The repository (not configurable).")
    stack_dir: Path = _var("MODELOPS_STACK_DIR", "State directory of the embedded stack.",
                           default_factory=lambda: REPO_ROOT / ".stack", shown="<repo>/.stack")
    tools_dir: Path = _var("MODELOPS_TOOLS_DIR", "tritonserver and perf_analyzer installation (make tools).",
                           default_factory=lambda: REPO_ROOT / ".tools", shown="<repo>/.tools")
    worker_python: Path = _var("MODELOPS_WORKER_PYTHON", "Interpreter of the worker environment (local steps).",
                               default_factory=lambda: REPO_ROOT / ".venv-worker" / "bin" / "python",
                               shown="<repo>/.venv-worker/bin/python")
    execution: Literal["local", "kubernetes"] = _var("MODELOPS_EXECUTION", "Where heavy steps run: local "
                                                     "subprocesses or Kubernetes pods.", "local")
    serving_device: Literal["cpu", "gpu"] = _var(
        "MODELOPS_SERVING_DEVICE", "Device of the Triton that benchmarks and serves when optimize_model's "
        "serving_device param is empty: cpu (python backend) or gpu (onnxruntime_onnx / tensorrt_plan).", "cpu",
    )
    artifacts_bucket: str = _var("MODELOPS_ARTIFACTS_BUCKET", "S3 bucket of run artifacts.", "modelops-artifacts")
    triton_bucket: str = _var("MODELOPS_TRITON_BUCKET", "S3 bucket of the Triton model repository.", "triton")
    mlflow_bucket: str = _var("MODELOPS_MLFLOW_BUCKET", "S3 bucket of MLflow artifacts.", "mlflow")
    s3_connect_timeout_s: float = _var("MODELOPS_S3_CONNECT_TIMEOUT_S", "Connect timeout of S3 calls.", 5.0, gt=0)
    s3_read_timeout_s: float = _var("MODELOPS_S3_READ_TIMEOUT_S", "Read timeout of S3 calls.", 60.0, gt=0)
    s3_max_attempts: int = _var("MODELOPS_S3_MAX_ATTEMPTS", "Attempts per S3 call (standard retries).", 3, ge=1)
    step_timeout_s: float = _var("MODELOPS_STEP_TIMEOUT_S", "Time limit of one local step.", 6900.0, gt=0)
    termination_log: str = _var("MODELOPS_TERMINATION_LOG", "File a failed or skipped step writes its one-line "
                                "reason to (the step pods: /dev/termination-log, the pod's termination message); "
                                "empty: none.", "")
    step_user: str = _var("MODELOPS_STEP_USER", "OS user the local step operator runs heavy steps (untrusted model "
                          "code) as when it runs as root; created on first use, it cannot read the stack folder. "
                          "-: steps keep the task's user.", "modelops-step")
    step_kill_grace_s: float = _var("MODELOPS_STEP_KILL_GRACE_S", "SIGTERM to SIGKILL delay for a step.", 10.0, ge=0)
    mlflow_timeout_s: int = _var("MODELOPS_MLFLOW_TIMEOUT_S", "Timeout of one MLflow client request.", 60, gt=0)
    mlflow_max_retries: int = _var("MODELOPS_MLFLOW_MAX_RETRIES", "Retries of an MLflow client request.", 3, ge=0)
    # One slot: perf_analyzer runs of concurrent DAG runs would share the CPU and measure each other.
    benchmark_pool: str = _var("MODELOPS_BENCHMARK_POOL", "Airflow pool of local benchmark tasks (the stack "
                               "creates modelops_benchmark).", "", shown="default_pool")
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)
    tools: ToolSettings = Field(default_factory=ToolSettings)
    stack: StackSettings = Field(default_factory=StackSettings)
    triggers: TriggerSettings = Field(default_factory=TriggerSettings)
    webhook: WebhookSettings = Field(default_factory=WebhookSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    clients: ClientSettings = Field(default_factory=ClientSettings)

    @field_validator("stack_dir", "tools_dir", mode="after")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.resolve()  # relative to the working directory, as the variables always were

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments, then the variables of the tree; no .env or secrets directory."""
        return init_settings, _EnvironSource(settings_cls)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings of ``environ`` (default ``os.environ``).

        Raises:
            SettingsError: a variable has a bad value (one line per variable, naming it).
        """
        token = _ENVIRON.set(environ)
        try:
            return cls()
        except ValidationError as err:
            raise SettingsError(_one_line(err)) from None
        finally:
            _ENVIRON.reset(token)

    def is_set(self, name: str) -> bool:
        """Whether the root setting ``name`` came from the environment rather than its default."""
        return name in self.model_fields_set

    # Serving tools (the nvidia-pytriton wheel's tritonserver, tritonclient 2.51's perf_analyzer).
    @property
    def tritonserver_bin(self) -> Path:
        return self.tools.tritonserver or self.tools_dir / PYTRITON / "bin" / "tritonserver"

    @property
    def triton_backends_dir(self) -> Path:
        return self.tools.triton_backends or self.tools_dir / PYTRITON / "backends"

    @property
    def perf_analyzer_bin(self) -> Path:
        return self.tools.perf_analyzer or self.tools_dir / PERF_ANALYZER

    @property
    def tool_library_path(self) -> str:
        """LD_LIBRARY_PATH entries that tritonserver and perf_analyzer need (see ENVIRONMENT.md)."""
        if self.tools.ld_library_path:
            return self.tools.ld_library_path
        lib_file = self.tools_dir / "ld_library_path"
        return lib_file.read_text().strip() if lib_file.exists() else ""

    @property
    def stack_file(self) -> Path:
        return self.stack_dir / "stack.json"

    # The serving gateway: unset values follow the stack.
    @property
    def gateway_triton_url(self) -> str:
        return self.gateway.triton_url.rstrip("/") or f"http://127.0.0.1:{8000 + self.stack.port_offset}"

    @property
    def gateway_keys_db(self) -> Path:
        return self.gateway.keys_db or self.stack_dir / "gateway" / "keys.db"

    @property
    def gateway_routes_uri(self) -> str:
        return self.gateway.routes_uri.rstrip("/") or f"s3://{self.triton_bucket}/routes"

    @property
    def gateway_mlflow_url(self) -> str:
        return self.gateway.mlflow_url.rstrip("/") or f"http://127.0.0.1:{5000 + self.stack.port_offset}"


def _one_line(err: ValidationError) -> str:
    """``MODELOPS_X must be ..., got 'value'`` for each failed variable, joined with ``; ``."""
    problems = []
    for item in err.errors():
        var = next((str(p) for p in reversed(item["loc"]) if str(p).startswith("MODELOPS_")), ".".join(map(str, item["loc"])))
        if item["type"] == "int_parsing":
            what = "must be an integer"
        elif item["type"] == "float_parsing":
            what = "must be a number"
        else:
            what = item["msg"].removeprefix("Value error, ").replace("Input should be", "must be", 1)
        problems.append(f"{var} {what}, got {item['input']!r}")
    return "; ".join(problems)


def get_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The current settings, built per call (no cache: tests and processes may change the environment)."""
    return Settings.from_env(environ)


if __name__ == "__main__":  # the README table lives in modelops.settings_docs; this keeps the old command working
    from modelops.settings_docs import main

    raise SystemExit(main())
