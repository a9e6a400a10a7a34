"""Publish an immutable deployment into the S3 Triton repository, manifest last.

``s3://<triton bucket>/<model>--v<version>-<variant>/`` holds ``config.pbtxt``, ``1/<model files>`` and
``manifest.json`` (sha256 and size of every other file, source model, recipe, variant, library
versions, target device, created_at). A deployment whose manifest exists is never overwritten; one
without a valid manifest is never loaded (:func:`verify_deployment`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelops.contracts.naming import deployment_name, deployment_uri
from modelops.contracts.status import Status
from modelops.contracts.variants import Device, get_variant
from modelops.storage import Storage, join

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


class InvalidDeployment(Exception):
    """A deployment without a manifest, or whose files do not match it."""


class PublishError(Exception):
    """The candidate cannot be published (missing artifact, name taken by something else)."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_table(root: Path) -> dict[str, dict[str, Any]]:
    return {
        p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def build_manifest(root: Path, spec: dict[str, Any], variant: str, deployment: str, versions: dict[str, str]) -> dict:
    """The deployment's manifest: provenance, the Triton backend and device it is rendered for, sha256 per file."""
    info, device = get_variant(variant), Device(spec.get("serving_device") or Device.CPU)
    return {
        "deployment": deployment,
        "model": spec["model_name"],
        "model_version": str(spec["model_version"]),
        "variant": variant,
        "recipe": spec["recipe"],
        "source_model_uri": spec["model_uri"],
        "source_artifacts": spec["source_uri"],
        "run_id": spec["run_id"],
        "backend": f"{info.backend_on(device)}/{info.runtime}",
        "target_device": str(device),
        "library_versions": versions,
        "files": file_table(root),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def publish_candidate(
    storage: Storage,
    spec: dict[str, Any],
    variant: str,
    export_result: dict[str, Any],
    optimize_result: dict[str, Any],
    triton_bucket: str,
) -> dict[str, Any]:
    """Render and upload the deployment of ``variant``; returns ``{"deployment", "uri", "manifest", "reused"}``.

    Idempotent: if the deployment already has a valid manifest from the same model version and variant,
    it is reused (a retried or repeated run publishes nothing new).
    """
    from modelops.serving.triton.model_dir import build_model_dir

    deployment = deployment_name(spec["model_name"], spec["model_version"], variant)
    uri = deployment_uri(triton_bucket, deployment)
    if storage.exists(join(uri, MANIFEST)):
        manifest = verify_deployment(storage, uri)
        if manifest["model"] != spec["model_name"] or manifest["variant"] != variant:
            raise PublishError(f"deployment {deployment} already exists for something else; refusing to overwrite")
        log.info("deployment %s already published by run %s; reusing it", deployment, manifest.get("run_id"))
        return {"deployment": deployment, "uri": uri, "manifest": manifest, "reused": True}
    info, device = get_variant(variant), Device(spec.get("serving_device") or Device.CPU)
    if not info.servable_on(device):
        raise PublishError(f"cannot publish {variant}: {info.not_servable_reason(device)}")
    candidate = optimize_result.get("candidates", {}).get(variant) or {}
    if candidate.get("status") != Status.DONE or not candidate.get("onnx"):
        raise PublishError(f"variant {variant!r} has no optimized model to publish")
    with tempfile.TemporaryDirectory(prefix="modelops-publish-") as tmp:
        onnx_path = storage.download_file(candidate["onnx"], Path(tmp) / "src" / "model.onnx")
        # text-in recipes serve another contract than the ONNX model's (export's serving_kind/serving_io + tokenizer)
        assets_uri = export_result["outputs"].get("serving_assets")
        root = build_model_dir(
            Path(tmp) / deployment,
            name=deployment,
            kind=export_result.get("serving_kind") or "onnxruntime",
            model_path=onnx_path,
            io=export_result.get("serving_io") or export_result["io"],
            max_batch_size=int(export_result["max_batch_size"]),
            assets=storage.download_dir(assets_uri, Path(tmp) / "assets") if assets_uri else None,
        )
        manifest = build_manifest(root, spec, variant, deployment, export_result.get("versions", {}))
        for rel in manifest["files"]:
            storage.upload_file(root / rel, join(uri, rel))
        # Written last, and only if no concurrent publisher got there first: the manifest is the commit.
        storage.write_bytes(join(uri, MANIFEST), json.dumps(manifest, indent=2).encode(), if_none_match=True)
    log.info("published %s (%d files)", uri, len(manifest["files"]))
    return {"deployment": deployment, "uri": uri, "manifest": manifest, "reused": False}


def verify_deployment(storage: Storage, uri: str) -> dict[str, Any]:
    """Check that every file listed in the manifest is there with its sha256; return the manifest.

    Raises:
        InvalidDeployment: no manifest, an unreadable manifest, or a missing or changed file.
    """
    try:
        manifest = json.loads(storage.read_bytes(join(uri, MANIFEST)))
        files = manifest["files"]
    except FileNotFoundError:
        raise InvalidDeployment(f"{uri} has no {MANIFEST}: not a published deployment") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidDeployment(f"{uri}/{MANIFEST} is unreadable: {exc}") from None
    if not files:
        raise InvalidDeployment(f"{uri}/{MANIFEST} lists no files")
    for rel, meta in files.items():
        try:
            data = storage.read_bytes(join(uri, rel))
        except FileNotFoundError:
            raise InvalidDeployment(f"{uri}: {rel} is listed in the manifest but missing") from None
        if hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise InvalidDeployment(f"{uri}: {rel} does not match its sha256 in the manifest")
    return manifest
