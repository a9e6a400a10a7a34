"""MLflow registry side of a run: resolve a version, open the run, write the model-version tags.

Talks to the MLflow server through ``mlflow.MlflowClient``; the caller builds the client (from the
``mlflow_default`` connection in Airflow, from the stack in the CLI). Imported lazily by DAG tasks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import yaml

from modelops.contracts.data import EvalDataSpec
from modelops.contracts.naming import TAG_ERROR, TAG_EVAL_DATA, TAG_RUN_ID, TAG_STATUS, experiment_name, run_prefix
from modelops.contracts.spec import RunSpec, SpecError, rollout_steps_from_params
from modelops.contracts.status import Status
from modelops.recipes import source_flavor
from modelops.storage import Storage, join

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

#: The alias ``optimize_model`` follows when none is given (its form's default). A ``model_version`` given beside it
#: wins; only a version beside another alias that points elsewhere is refused.
DEFAULT_ALIAS = "champion"


class ResolveError(Exception):
    """The requested model, version or alias does not exist or cannot be used. One line."""


@dataclass(frozen=True)
class ResolvedVersion:
    name: str
    version: str
    alias: str | None
    source_uri: str  # s3:// URI of the MLflow model directory (holds MLmodel)
    mlmodel: dict[str, Any]
    run_id: str | None = None  # the run that logged the version (its datasets are the version's data)
    tags: dict[str, str] = field(default_factory=dict)  # the version's tags, then its registered model's

    @property
    def flavors(self) -> list[str]:
        return sorted(self.mlmodel.get("flavors", {}))


def _is_not_found(exc: Exception) -> bool:
    return "RESOURCE_DOES_NOT_EXIST" in str(exc) or "INVALID_PARAMETER_VALUE" in str(exc) or "not found" in str(exc)


def to_s3_uri(artifact_uri: str, mlflow_bucket: str) -> str:
    """Map MLflow's proxied ``mlflow-artifacts:/<path>`` to the bucket the server writes to."""
    if artifact_uri.startswith("s3://"):
        return artifact_uri.rstrip("/")
    for prefix in ("mlflow-artifacts:///", "mlflow-artifacts:/"):
        if artifact_uri.startswith(prefix):
            return f"s3://{mlflow_bucket}/{artifact_uri[len(prefix):].lstrip('/')}".rstrip("/")
    raise ResolveError(f"model artifacts at {artifact_uri!r} are not on S3; the pipeline needs an S3 artifact store")


def resolve_version(
    client: MlflowClient,
    storage: Storage,
    name: str,
    version: str | None,
    alias: str | None,
    mlflow_bucket: str,
) -> ResolvedVersion:
    """Find the registered version by number or alias and read its MLmodel file.

    A given ``version`` wins over the default alias (``champion``, what the DAG form and REST fill in); a version
    beside another alias is accepted when the alias points at that version.

    Raises:
        ResolveError: unknown model, version or alias, neither of version/alias, a version and a non-default alias
            that disagree, unreadable MLmodel.
    """
    if not name:
        raise ResolveError("model_name is required")
    if not version and not alias:
        raise ResolveError("give exactly one of model_version or model_alias")
    if version and alias == DEFAULT_ALIAS:
        # the form's and REST's default alias: a version typed in or sent wins over it
        alias = None
    try:
        registered = client.get_registered_model(name)
    except Exception as exc:
        if _is_not_found(exc):
            raise ResolveError(f"registered model {name!r} not found in MLflow") from None
        raise
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, str(version))
    except Exception as exc:
        if _is_not_found(exc):
            what = f"alias {alias!r}" if alias else f"version {version!r}"
            raise ResolveError(f"registered model {name!r} has no {what}") from None
        raise
    if version and alias and str(mv.version) != str(version).strip():
        raise ResolveError(f"model_version {version} and model_alias {alias!r} (version {mv.version}) of {name!r} "
                           "disagree: give one of them")
    source = to_s3_uri(client.get_model_version_download_uri(name, mv.version), mlflow_bucket)
    mlmodel_uri = join(source, "MLmodel")
    try:
        mlmodel = yaml.safe_load(storage.read_bytes(mlmodel_uri))
        if not isinstance(mlmodel, dict) or "flavors" not in mlmodel:
            raise ValueError("no 'flavors' section")
    except FileNotFoundError:
        raise ResolveError(f"version {mv.version} of {name!r} has no MLmodel file at {mlmodel_uri}") from None
    except Exception as exc:  # noqa: BLE001
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ResolveError(f"version {mv.version} of {name!r} has an unreadable MLmodel at {mlmodel_uri}: {first}") from None
    tags = {**(getattr(registered, "tags", None) or {}), **(mv.tags or {})}
    return ResolvedVersion(name=name, version=str(mv.version), alias=alias or None, source_uri=source, mlmodel=mlmodel,
                           run_id=mv.run_id or None, tags=tags)  # fmt: skip


def open_run(client: MlflowClient, model: str, version: str, airflow_run_id: str,
             params: dict[str, Any]) -> tuple[str, str]:  # fmt: skip
    """``(run id, experiment id)`` of this optimization's MLflow run, created once per Airflow run (a retry finds
    it again)."""
    exp_name = experiment_name(model)
    exp = client.get_experiment_by_name(exp_name)
    exp_id = exp.experiment_id if exp else client.create_experiment(exp_name)
    safe_id = airflow_run_id.replace("'", "")
    found = client.search_runs([exp_id], filter_string=f"tags.`airflow.run_id` = '{safe_id}'", max_results=1)
    if found:
        return found[0].info.run_id, exp_id
    run = client.create_run(
        exp_id,
        run_name=f"{model}-v{version}-{safe_id}"[:250],
        tags={"airflow.run_id": safe_id, "modelops.model": model, "modelops.model_version": str(version)},
    )
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value if not isinstance(value, list) else ",".join(map(str, value)))
    return run.info.run_id, exp_id


def build_spec(
    resolved: ResolvedVersion,
    recipe: str,
    run_id: str,
    artifacts_bucket: str,
    *,
    triton_bucket: str,
    variants: list[str],
    latency_slo_ms: float,
    accuracy_tolerance: float,
    ttft_slo_ms: float = 2000.0,
    rollout: int = 100,
    rollout_steps: list[int] | None = None,
    rollout_interval_s: float = 60.0,
    benchmark: dict[str, Any] | None = None,
    serving_device: str = "cpu",
    text_in: bool = False,
    eval_data: EvalDataSpec | None = None,
    allow_pickle: bool | None = None,
) -> RunSpec:
    """The run spec every step reads, complete: every block at its defaults unless given (see ``RunSpec``).

    ``serving_device`` is the device of the Triton that benchmarks and serves; ``text_in`` says the recipe's
    clients send raw text (tokenized in the python backend), which a GPU Triton's native backends cannot serve.

    Raises:
        SpecError: a value is out of range, a variant unknown, or a text-in recipe asked on gpu (one line).
    """
    if serving_device == "gpu" and text_in:
        raise SpecError(f"serving_device: gpu serves native backends only (onnxruntime_onnx, tensorrt_plan); recipe "
                        f"{recipe} takes raw text through the python backend's tokenizer: use serving_device cpu")
    try:
        steps = rollout_steps_from_params(rollout_steps, rollout)
    except ValueError as exc:
        raise SpecError(f"rollout_steps: {exc}") from None
    return RunSpec.parse(
        {
            "model_name": resolved.name,
            "model_version": resolved.version,
            "alias": resolved.alias,
            "model_uri": f"models:/{resolved.name}/{resolved.version}",
            "source_uri": resolved.source_uri,
            "flavor": source_flavor(resolved.mlmodel),
            "recipe": recipe,
            "mlmodel": resolved.mlmodel,
            "allow_pickle": allow_pickle,
            "variants": list(variants),
            "latency_slo_ms": float(latency_slo_ms),
            "ttft_slo_ms": float(ttft_slo_ms),
            "accuracy_tolerance": float(accuracy_tolerance),
            "rollout": steps[0],
            "rollout_steps": steps,
            "rollout_interval_s": float(rollout_interval_s),
            "run_id": run_id,
            "run_prefix": run_prefix(artifacts_bucket, resolved.name, resolved.version, run_id),
            "triton_bucket": triton_bucket,
            "benchmark": dict(benchmark or {}),
            "serving_device": serving_device,
            "eval_data": (eval_data or EvalDataSpec()).model_dump(mode="json"),
        }
    )


def set_version_tags(client: MlflowClient, name: str, version: str, tags: dict[str, Any]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))


def record_eval_data(client: MlflowClient, name: str, version: str, run_id: str, data: EvalDataSpec) -> None:
    """Say where the gate's rows came from: the version's and the run's ``modelops.eval_data`` tag, and the data's
    note (synthetic inputs, a small example) on the run as ``modelops.eval_data_note`` and in the task log."""
    client.set_model_version_tag(name, str(version), TAG_EVAL_DATA, str(data.source))
    client.set_tag(run_id, TAG_EVAL_DATA, str(data.source))
    client.set_tag(run_id, "modelops.eval_data_origin", data.origin[:500])
    if data.note:
        client.set_tag(run_id, "modelops.eval_data_note", data.note)
        log.warning("%s v%s: %s", name, version, data.note)


def clear_version_tag(client: MlflowClient, name: str, version: str, key: str) -> None:
    """Remove a tag left by an earlier run (e.g. the previous failure's ``modelops.error``)."""
    try:
        client.delete_model_version_tag(name, str(version), key)
    except Exception as exc:
        if not _is_not_found(exc):
            raise


def mark_failed(client: MlflowClient, name: str, version: str, error: str, run_id: str | None = None) -> None:
    """Record a failed run on the model version (and close the MLflow run) without hiding the first error."""
    tags = {TAG_STATUS: Status.FAILED, TAG_ERROR: error.splitlines()[0][:500] if error else "unknown error"}
    if run_id:
        tags[TAG_RUN_ID] = run_id
    set_version_tags(client, name, version, tags)
    if run_id:
        client.set_tag(run_id, TAG_ERROR, tags[TAG_ERROR])
        client.set_terminated(run_id, status="FAILED")
