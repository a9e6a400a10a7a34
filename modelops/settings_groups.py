"""The settings groups of :mod:`modelops.settings`, one per component: Kubernetes placement, tools, the stack,
triggers, the webhook receiver, the serving gateway and the operator commands' view of a deployment.

Each field reads one variable (``validation_alias``), with its default, a one-line description and the default
docs/configuration.md shows (``shown``); :class:`modelops.settings.Settings` holds one of each.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"  # GPU Feature Discovery
PYTRITON = Path("pytriton") / "pytriton" / "tritonserver"
PERF_ANALYZER = Path("tritonclient") / "tritonclient-2.51.0.data" / "data" / "bin" / "perf_analyzer"


def _var(name: str, description: str, default: Any = None, *, shown: str | None = None, **kwargs: Any) -> Any:
    """A setting read from the variable ``name``; ``shown`` is its default as the README prints it."""
    extra = {"shown_default": shown} if shown is not None else None
    if "default_factory" in kwargs:
        return Field(validation_alias=name, description=description, json_schema_extra=extra, **kwargs)
    return Field(default, validation_alias=name, description=description, json_schema_extra=extra, **kwargs)


def _csv(value: Any) -> Any:
    """``"a, b,a"`` -> ``("a", "b")`` (order kept, duplicates dropped); other values pass through."""
    if isinstance(value, str):
        return tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    return value


class _Group(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_by_name=True, validate_by_alias=True)


class KubernetesSettings(_Group):
    """Placement of heavy steps when ``MODELOPS_EXECUTION=kubernetes``."""

    namespace: str = _var("MODELOPS_K8S_NAMESPACE", "Namespace of the step pods.", "modelops")
    image: str = _var("MODELOPS_K8S_IMAGE", "Worker image the step pods run.", "modelops/worker:latest")
    gpu_resource: str = _var("MODELOPS_K8S_GPU_RESOURCE", "GPU resource to request, or a MIG resource such as "
                             "nvidia.com/mig-1g.10gb.", "nvidia.com/gpu")
    gpu_count: int = _var("MODELOPS_K8S_GPU_COUNT", "GPUs (or MIG slices) per GPU step.", 1, ge=0)
    cpu: str = _var("MODELOPS_K8S_CPU", "CPU request of a step pod.", "4")
    memory: str = _var("MODELOPS_K8S_MEMORY", "Memory request and limit of a step pod.", "16Gi")
    gpu_product: str = _var("MODELOPS_K8S_GPU_PRODUCT", "GPU Feature Discovery product (e.g. NVIDIA-H100-80GB-HBM3); "
                            "adds the nvidia.com/gpu.product node selector.", "")
    node_selector: dict[str, str] = _var(
        "MODELOPS_K8S_NODE_SELECTOR", "Node selector of GPU steps, a JSON object.",
        default_factory=lambda: {"nvidia.com/gpu.present": "true"}, shown='{"nvidia.com/gpu.present": "true"}',
        validate_default=True,
    )
    priority_class: str = _var("MODELOPS_K8S_PRIORITY_CLASS", "Priority class of GPU step pods of runs started by "
                               "registry events (and of runs of unknown origin).", "modelops-gpu")
    priority_class_manual: str = _var("MODELOPS_K8S_PRIORITY_CLASS_MANUAL", "Priority class of GPU step pods of runs "
                                      "started by hand (Airflow UI or API).", "modelops-interactive")
    priority_class_nightly: str = _var("MODELOPS_K8S_PRIORITY_CLASS_NIGHTLY", "Priority class of GPU step pods of "
                                       "nightly_reoptimize runs.", "modelops-nightly")
    active_deadline_s: int = _var("MODELOPS_K8S_ACTIVE_DEADLINE_S", "activeDeadlineSeconds of a step pod (0: none).",
                                  7200, ge=0)
    deferrable: bool = _var("MODELOPS_K8S_DEFERRABLE", "Wait for step pods in the triggerer (deferrable), not in a "
                            "worker slot.", True)
    service_account: str = _var("MODELOPS_K8S_SERVICE_ACCOUNT", "Service account of the step pods.", "modelops-worker")
    s3_secret: str = _var("MODELOPS_K8S_S3_SECRET", "Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and "
                          "AWS_ENDPOINT_URL, mounted into the pods.", "modelops-s3")
    pool: str = _var("MODELOPS_K8S_POOL", "Airflow pool of GPU steps (one slot per GPU).", "gpu")
    gpu_products: tuple[str, ...] = _var(
        "MODELOPS_GPU_PRODUCTS", "GPU Feature Discovery products TensorRT engines are built for, comma-separated: one "
        "mapped compile pod per product, each selecting its nvidia.com/gpu.product (optimize_model's gpu_products "
        "param wins).", (), shown="MODELOPS_K8S_GPU_PRODUCT, else one compile pod on any GPU",
    )

    @field_validator("gpu_products", mode="before")
    @classmethod
    def _split_products(cls, value: Any) -> Any:
        return _csv(value)

    @field_validator("node_selector", mode="before")
    @classmethod
    def _parse_selector(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ValueError('must be a JSON object such as {"label": "value"}') from None
        return value

    @field_validator("node_selector", mode="after")
    @classmethod
    def _add_gpu_product(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        product = info.data.get("gpu_product")
        return {**value, GPU_PRODUCT_LABEL: product} if product else value


class ToolSettings(_Group):
    """Serving and optimization tools; unset paths are derived from ``tools_dir`` or the repository."""

    tritonserver: Path | None = _var("MODELOPS_TRITONSERVER", "tritonserver binary.",
                                     shown=f"<tools dir>/{PYTRITON}/bin/tritonserver")
    triton_backends: Path | None = _var("MODELOPS_TRITON_BACKENDS", "Triton backends directory.",
                                        shown=f"<tools dir>/{PYTRITON}/backends")
    perf_analyzer: Path | None = _var("MODELOPS_PERF_ANALYZER", "perf_analyzer binary (tritonclient 2.51).",
                                      shown=f"<tools dir>/{PERF_ANALYZER}")
    ld_library_path: str = _var("MODELOPS_TOOLS_LD_LIBRARY_PATH", "LD_LIBRARY_PATH entries tritonserver and "
                                "perf_analyzer need.", "", shown="contents of <tools dir>/ld_library_path")
    modelopt_python: Path | None = _var("MODELOPS_MODELOPT_PYTHON", "Interpreter of the NVIDIA ModelOpt "
                                        "environment (make modelopt).", shown="<repo>/.venv-modelopt/bin/python")
    worker_versions_file: Path | None = _var("MODELOPS_WORKER_VERSIONS_FILE", "JSON of worker library versions "
                                             "written by the worker image (nightly fingerprint).",
                                             shown="pins of requirements-worker.txt")


class StackSettings(_Group):
    """The embedded dev stack (``modelops stack``); its state directory is ``Settings.stack_dir``."""

    port_offset: int = _var("MODELOPS_PORT_OFFSET", "Shift of every stack port (a second stack beside the first).", 0)
    orchestrator_bin: Path | None = _var("MODELOPS_ORCHESTRATOR_BIN", "bin/ of the orchestrator venv (weed, mlflow, "
                                         "airflow).", shown="<repo>/.venv/bin, else the running interpreter's")


class TriggerSettings(_Group):
    """Which registry events, polls and schedules start ``optimize_model`` runs."""

    aliases: tuple[str, ...] = _var("MODELOPS_TRIGGER_ALIASES", "Watched model aliases, comma-separated.",
                                    ("champion", "production"))
    stages: tuple[str, ...] = _var("MODELOPS_TRIGGER_STAGES", "Watched legacy stages, comma-separated.",
                                   ("Production", "Staging"))
    scope: Literal["opted_in", "all"] = _var("MODELOPS_TRIGGER_SCOPE", "opted_in: models tagged "
                                             "modelops.optimize=true; all: every model.", "opted_in")
    on_version_created: bool = _var("MODELOPS_TRIGGER_ON_VERSION_CREATED", "Start a run for every new model "
                                    "version.", False)
    reconcile_interval_s: float = _var("MODELOPS_RECONCILE_INTERVAL_S", "Seconds between registry polls of "
                                       "registry_reconcile.", 60.0, gt=0)
    nightly_cron: str = _var("MODELOPS_NIGHTLY_CRON", "Cron schedule (UTC) of nightly_reoptimize.", "0 2 * * *")

    @field_validator("aliases", "stages", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return _csv(value)


class WebhookSettings(_Group):
    """The MLflow webhook receiver on Airflow's API server."""

    secret: SecretStr | None = _var("MODELOPS_WEBHOOK_SECRET", "HMAC secret of the MLflow webhook.",
                                    shown="read from the secret file")
    secret_file: Path | None = _var("MODELOPS_WEBHOOK_SECRET_FILE", "File holding the webhook secret.",
                                    shown="<MODELOPS_STACK_DIR>/webhook/secret when that variable is set")
    db: Path | None = _var("MODELOPS_WEBHOOK_DB", "SQLite replay guard of webhook deliveries.",
                           shown="$AIRFLOW_HOME/modelops/webhook_deliveries.db")
    max_body_kb: int = _var("MODELOPS_WEBHOOK_MAX_BODY_KB", "Largest webhook body the receiver accepts (KiB); "
                            "larger ones get 413 before they are read.", 1024, gt=0)


class GatewaySettings(_Group):
    """The serving gateway (``python -m modelops.serving.gateway``): upstream, limits, keys and routes."""

    triton_url: str = _var("MODELOPS_GATEWAY_TRITON_URL", "Triton HTTP endpoint the gateway forwards to.", "",
                           shown="http://127.0.0.1:8000, shifted by MODELOPS_PORT_OFFSET")
    max_body_mb: float = _var("MODELOPS_GATEWAY_MAX_BODY_MB", "Largest request body the gateway accepts (MiB); "
                              "larger ones get 413 before they are read.", 16.0, gt=0)
    keys_db: Path | None = _var("MODELOPS_GATEWAY_KEYS_DB", "SQLite store of the gateway's API keys (hashed).",
                                shown="<MODELOPS_STACK_DIR>/gateway/keys.db")
    routes_uri: str = _var("MODELOPS_GATEWAY_ROUTES_URI", "Where the gateway reads routes files: an s3:// prefix "
                           "or a local directory.", "", shown="s3://<MODELOPS_TRITON_BUCKET>/routes")
    routes_poll_s: float = _var("MODELOPS_GATEWAY_ROUTES_POLL_S", "Seconds between two polls of the routes files "
                                "(at most 1, so a change is served within 2 s).", 0.5, gt=0, le=1)
    upstream_timeout_s: float = _var("MODELOPS_GATEWAY_UPSTREAM_TIMEOUT_S", "Timeout of one request to Triton.",
                                     60.0, gt=0)
    max_in_flight: int = _var("MODELOPS_GATEWAY_MAX_IN_FLIGHT", "Requests one gateway admits at once over all keys; "
                              "more get 429 with Retry-After (0: no cap).", 1024, ge=0)
    invalid_key_rate: float = _var("MODELOPS_GATEWAY_INVALID_KEY_RATE", "Failed key lookups allowed per client "
                                   "address and second (burst: 4x); more get 429 before the lookup.", 5.0, gt=0)
    max_tokens: int = _var("MODELOPS_GATEWAY_MAX_TOKENS", "Largest max_tokens a chat request may ask (per model: "
                           "MLflow tag modelops.max_tokens); more is 400.", 4096, gt=0)
    max_prompt_chars: int = _var("MODELOPS_GATEWAY_MAX_PROMPT_CHARS", "Longest chat prompt in characters (tag "
                                 "modelops.max_prompt_chars); longer is 400.", 100_000, gt=0)
    max_input_chars: int = _var("MODELOPS_GATEWAY_MAX_INPUT_CHARS", "Longest embeddings input in characters (tag "
                                "modelops.max_input_chars); longer is 400.", 20_000, gt=0)
    stream_deadline_s: float = _var("MODELOPS_GATEWAY_STREAM_DEADLINE_S", "Longest a chat answer may take; then "
                                    "it ends with a 504 error (event).", 600.0, gt=0)
    embed_parallel: int = _var("MODELOPS_GATEWAY_EMBED_PARALLEL", "Triton calls one embeddings request makes at "
                               "once (its inputs are sent in batches).", 8, gt=0)
    usage_flush_s: float = _var("MODELOPS_GATEWAY_USAGE_FLUSH_S", "Seconds between writes of the keys' request "
                                "counts and last use to the key store.", 5.0, gt=0)
    mlflow_url: str = _var("MODELOPS_GATEWAY_MLFLOW_URL", "MLflow the gateway reads model descriptions and "
                           "modelops.task tags from (/v1/models).", "",
                           shown="http://127.0.0.1:5000, shifted by MODELOPS_PORT_OFFSET")
    mlflow_username: str = _var("MODELOPS_GATEWAY_MLFLOW_USERNAME", "MLflow user (basic auth) of those lookups; "
                                "the stack gives its read-only `gateway` user.", "", shown="none")
    mlflow_password: SecretStr | None = _var("MODELOPS_GATEWAY_MLFLOW_PASSWORD", "Password of that MLflow user.",
                                             shown="none")


class ClientSettings(_Group):
    """Where the operator commands (``openwebui refresh``, ``webhook``) find a deployment; unset: the stack's."""

    def mlflow(self, flag: str | None = None) -> str:
        """The deployment's MLflow: ``flag``, else MODELOPS_MLFLOW_URL, else MLflow's tracking URI if http(s)."""
        if flag or self.mlflow_url:
            return (flag or self.mlflow_url).rstrip("/")
        import mlflow

        uri = mlflow.get_tracking_uri()
        return uri.rstrip("/") if uri.startswith(("http://", "https://")) else ""

    mlflow_url: str = _var("MODELOPS_MLFLOW_URL", "MLflow of the deployment (login: MLFLOW_TRACKING_USERNAME / "
                           "_PASSWORD).", "", shown="MLflow's MLFLOW_TRACKING_URI when it is http(s)")
    airflow_url: str = _var("MODELOPS_AIRFLOW_URL", "Airflow API server (the webhook receiver's base URL).", "",
                            shown="the stack's")
    gateway_url: str = _var("MODELOPS_GATEWAY_URL", "Serving gateway as Open WebUI reaches it.", "", shown="the stack's")
    openwebui_url: str = _var("MODELOPS_OPENWEBUI_URL", "Open WebUI of the deployment.", "", shown="the stack's")
    openwebui_admin_email: str = _var("MODELOPS_OPENWEBUI_ADMIN_EMAIL", "Open WebUI admin login.", "",
                                      shown="the stack's")
    openwebui_admin_password: SecretStr | None = _var("MODELOPS_OPENWEBUI_ADMIN_PASSWORD", "Its password.",
                                                      shown="the stack's")
    openwebui_gateway_key: SecretStr | None = _var("MODELOPS_OPENWEBUI_GATEWAY_KEY", "The gateway API key Open "
                                                   "WebUI sends (granted the chat models).", shown="the stack's")
