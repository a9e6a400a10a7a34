"""Publish an immutable deployment into the S3 Triton repository, manifest last.

``s3://<triton bucket>/<model>--v<version>-<variant>/`` holds ``config.pbtxt``, ``1/<model files>`` and
``manifest.json`` (sha256 and size of every other file, ``content_digest``, source model, recipe, variant,
library versions, target device, created_at). A deployment whose manifest exists is never overwritten; one
without a valid manifest is never loaded (:func:`verify_deployment`).

Identity: a deployment name never stands for two contents. The content digest is the sha256 over the sorted
(relative path, sha256) pairs of the files rendered under the plain name. The plain name is used when it is
free or already holds the same content (reuse); otherwise the deployment is ``<plain name>-<digest[:8]>``
(content-addressed). Publishers claim a free plain name with ``publish-claim.json`` (If-None-Match) before
uploading, so two concurrent publishers of different bytes never mix their files (:func:`publish_candidate`;
:func:`publish_content` is that algorithm for any rendered deployment, the chat LLMs' included).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelops.contracts.naming import deployment_name, deployment_uri, digest_name
from modelops.contracts.status import Status
from modelops.contracts.variants import BuildStep, Device, get_variant
from modelops.storage import PreconditionFailed, Storage, join, relative

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CLAIM = "publish-claim.json"  # conditional-create claim on a plain deployment name, written before any upload
CLAIM_WAIT_S = 120.0  # how long a publisher of the same bytes waits for the claimer's manifest
HASH_CHUNK = 8 << 20  # bytes per read when verify_deployment hashes a deployment's files


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
    """The deployment's manifest: provenance, the Triton backend and device it is rendered for, sha256 per file.

    ``backend`` (``<Triton backend>/<runtime>``) and ``target_device`` are read back from the rendered config.pbtxt.
    """
    from modelops.serving.triton.model_dir import rendered_target

    info, (backend, device) = get_variant(variant), rendered_target(root)
    return {
        "deployment": deployment,
        "model": spec["model_name"],
        "model_version": str(spec["model_version"]),
        "variant": variant,
        "recipe": spec["recipe"],
        "source_model_uri": spec["model_uri"],
        "source_artifacts": spec["source_uri"],
        "run_id": spec["run_id"],
        "backend": f"{backend}/{info.runtime}",
        "target_device": device,
        "library_versions": versions,
        "files": file_table(root),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def content_digest(files: dict[str, dict[str, Any]]) -> str:
    """sha256 over the sorted ``(relative path, sha256)`` pairs of a manifest's file table (manifest excluded)."""
    digest = hashlib.sha256()
    for rel in sorted(files):
        digest.update(f"{rel}\0{files[rel]['sha256']}\n".encode())
    return digest.hexdigest()


def _same_content(manifest: dict[str, Any], files: dict[str, dict[str, Any]], digest: str) -> bool:
    if manifest.get("content_digest"):
        return manifest["content_digest"] == digest
    # published before content digests: compare the file tables themselves
    return {k: v.get("sha256") for k, v in manifest.get("files", {}).items()} == {k: v["sha256"] for k, v in files.items()}


def _reuse(storage: Storage, uri: str, model_name: str, variant: str, digest: str) -> dict[str, Any]:
    manifest = verify_deployment(storage, uri)
    if manifest.get("model") != model_name or manifest.get("variant") != variant:
        raise PublishError(f"deployment {manifest.get('deployment')} holds {manifest.get('model')}/"
                           f"{manifest.get('variant')}, not {model_name}/{variant}; refusing to reuse it")
    log.info("deployment %s already published by run %s with the same bytes; reusing it", manifest.get("deployment"),
             manifest.get("run_id"))  # fmt: skip
    return {"deployment": manifest["deployment"], "uri": uri, "manifest": manifest, "reused": True,
            "content_digest": digest}  # fmt: skip


def _wait_for_manifest(storage: Storage, uri: str, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if storage.exists(join(uri, MANIFEST)):
            return True
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    return storage.exists(join(uri, MANIFEST))


def _upload(storage: Storage, root: Path, uri: str, manifest: dict[str, Any]) -> bool:
    """Upload the files, then the manifest (If-None-Match: the commit). False if another publisher committed first."""
    for rel in manifest["files"]:
        storage.upload_file(root / rel, join(uri, rel))
    try:
        storage.write_bytes(join(uri, MANIFEST), json.dumps(manifest, indent=2).encode(), if_none_match=True)
    except PreconditionFailed:
        return False
    return True


def publish_candidate(
    storage: Storage,
    spec: dict[str, Any],
    variant: str,
    export_result: dict[str, Any],
    optimize_result: dict[str, Any],
    triton_bucket: str,
    *,
    claim_wait_s: float = CLAIM_WAIT_S,
    serving_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Render and upload the deployment of ``variant``.

    ``serving_config`` is the configuration select chose with it (benchmark's configuration search of a python-backend
    candidate: instance count, threads, max_batch_size, dynamic batching's queue delay and preferred sizes); None,
    or a native GPU backend, renders the default one.

    A deployment name never stands for two contents. The model directory is rendered first under the plain
    name ``<model>--v<version>-<variant>`` and its content digest computed (:func:`content_digest`). Then:

    - the plain name holds a manifest with the same content: reused (a retried or repeated run);
    - the plain name is free: claimed with ``<plain>/publish-claim.json`` (If-None-Match, holding the digest),
      files uploaded, manifest written last (If-None-Match);
    - the plain name holds or is claimed for other bytes: published as ``<plain>-<digest[:8]>``
      (:func:`~modelops.contracts.naming.digest_name`; content-addressed, so a concurrent publisher of the same
      bytes writes identical files, and an existing manifest there is reused);
    - the plain name is claimed for the same bytes by a publisher still uploading: wait up to ``claim_wait_s``
      for its manifest and reuse it; if it never comes (that publisher died), finish the upload ourselves
      (the files are byte for byte the same). A claim older than ``claim_wait_s`` is not waited for: its
      publisher died mid-upload (a crash, an S3 outage), and its partial folder, never served since it has
      no manifest, is completed at once. A partial folder of other bytes is left to ``modelops gc``.

    ``content_digest`` in the manifest and in the result is the digest of the rendering under the plain name
    (the one deployment file that names the model, ``config.pbtxt``, differs under the digest name).

    Returns:
        ``{"deployment", "uri", "manifest", "reused", "content_digest"}``.

    Raises:
        PublishError: not servable on the target device, no optimized model, or the name holds another model.
    """
    from modelops.serving.triton.model_dir import (
        PYTHON_BACKEND,
        TENSORRT_BACKEND,
        build_model_dir,
        engine_max_batch,
        gpu_accelerator,
        runtime_parameters,
    )

    plain = deployment_name(spec["model_name"], spec["model_version"], variant)
    info, device = get_variant(variant), Device(spec.get("serving_device") or Device.CPU)
    if not info.servable_on(device):
        raise PublishError(f"cannot publish {variant}: {info.not_servable_reason(device)}")
    backend = info.backend_on(device)  # the registry's backend on the serving device decides what is rendered
    artifact = "plan" if backend == TENSORRT_BACKEND else "onnx"  # engines: the compile step's ``plan``
    candidate = optimize_result.get("candidates", {}).get(variant) or {}
    if not candidate and info.built_by == BuildStep.COMPILE:  # an engine: the compile step's result holds its plans
        candidate = _compiled(storage, spec, variant)
    if candidate.get("status") != Status.DONE or not candidate.get(artifact):
        raise PublishError(f"variant {variant!r} has no optimized model to publish")
    max_batch_size = int(export_result["max_batch_size"])
    with tempfile.TemporaryDirectory(prefix="modelops-publish-") as tmp:
        onnx_path = storage.download_file(candidate[artifact], Path(tmp) / "src" / f"model.{artifact}")
        plans = None  # engines of several compute capabilities: model_<cc>.plan each, named by cc_model_filenames
        if artifact == "plan":
            max_batch_size = engine_max_batch(candidate, max_batch_size)
            if len(candidate.get("plans") or {}) > 1:
                plans = {cc: storage.download_file(uri, Path(tmp) / "src" / cc / "model.plan")
                         for cc, uri in candidate["plans"].items()}  # fmt: skip
        # text-in recipes serve another contract than the ONNX model's (export's serving_kind/serving_io + tokenizer)
        assets_uri = export_result["outputs"].get("serving_assets")
        assets = storage.download_dir(assets_uri, Path(tmp) / "assets") if assets_uri else None

        serving = _serving_kwargs(serving_config if backend == PYTHON_BACKEND else None, max_batch_size)

        def render(name: str) -> Path:
            return build_model_dir(
                Path(tmp) / "render" / name,
                name=name,
                kind=export_result.get("serving_kind") or "onnxruntime",
                model_path=onnx_path,
                io=export_result.get("serving_io") or export_result["io"],
                assets=assets,
                parameters=runtime_parameters(variant),  # e.g. OpenVINO's engine and precision hint
                backend=backend,
                device=str(device),
                accelerator=gpu_accelerator(variant),
                plans=plans,
                **serving,  # max_batch_size, and the chosen serving configuration
            )

        def manifest_for(root: Path, name: str) -> dict[str, Any]:
            return build_manifest(root, spec, variant, name, export_result.get("versions", {}))

        return publish_content(storage, triton_bucket, plain, render, manifest_for, model_name=spec["model_name"],
                               variant=variant, run_id=spec.get("run_id"), claim_wait_s=claim_wait_s)  # fmt: skip


def _serving_kwargs(config: dict[str, Any] | None, max_batch_size: int) -> dict[str, Any]:
    """``build_model_dir`` keyword arguments of a chosen serving configuration (the default one without it)."""
    if not config:
        return {"max_batch_size": max_batch_size}
    return {
        "max_batch_size": int(config.get("max_batch_size") or max_batch_size),
        "instance_count": int(config.get("instance_count") or 1),
        "threads": int(config.get("threads") or 2),
        "preferred_batch_sizes": [int(b) for b in config.get("preferred_batch_sizes") or []],
        "max_queue_delay_us": int(config.get("max_queue_delay_us") or 0),
    }


def _compiled(storage: Storage, spec: dict[str, Any], variant: str) -> dict[str, Any]:
    """The compile step's record of engine ``variant`` (``plan``, ``plans`` by compute capability, ``profiles``)."""
    from modelops.steps._common import StepError, load_result

    try:
        return (load_result(storage, spec, "compile").get("engines") or {}).get(variant) or {}
    except StepError as exc:
        raise PublishError(f"cannot publish {variant}: {exc}") from None


def publish_content(
    storage: Storage,
    triton_bucket: str,
    plain: str,
    render: Callable[[str], Path],
    manifest_for: Callable[[Path, str], dict[str, Any]],
    *,
    model_name: str,
    variant: str,
    run_id: str | None,
    claim_wait_s: float | None = CLAIM_WAIT_S,
) -> dict[str, Any]:
    """Publish a rendered deployment under the plain name, or its digest name; the claim-and-commit algorithm.

    The identity rules of :func:`publish_candidate` (reuse, claim, digest name), for any deployment kind.

    Args:
        storage: S3 access.
        triton_bucket: the Triton repository bucket.
        plain: the plain deployment name ``<model>--v<version>-<variant>``.
        render: writes the model directory for a deployment name and returns its root (called for the plain
            name, and again for the digest name when that one is published).
        manifest_for: the manifest of a rendered root under a name, without ``content_digest`` (added here).
        model_name: the registered model; a reused deployment must hold it.
        variant: the variant; a reused deployment must hold it.
        run_id: the publishing run, written into the claim (a retry of the same run completes its own claim).
        claim_wait_s: how long to wait for the manifest of another run that claimed the plain name for the same
            bytes before completing the upload ourselves; ``None`` completes it at once without waiting.

    Returns:
        ``{"deployment", "uri", "manifest", "reused", "content_digest"}``.

    Raises:
        PublishError: the name holds another model or variant, or the digest name holds other bytes.
    """

    def reuse(uri: str) -> dict[str, Any]:
        return _reuse(storage, uri, model_name, variant, digest)

    def commit(name: str, root: Path) -> dict[str, Any]:
        uri = deployment_uri(triton_bucket, name)
        manifest = manifest_for(root, name)
        manifest["content_digest"] = digest
        if not _upload(storage, root, uri, manifest):
            return reuse(uri)  # a publisher of the same bytes won
        log.info("published %s (%d files, content %s)", uri, len(manifest["files"]), digest[:12])
        return {"deployment": name, "uri": uri, "manifest": manifest, "reused": False, "content_digest": digest}

    plain_root = render(plain)
    files = file_table(plain_root)
    digest = content_digest(files)
    plain_uri = deployment_uri(triton_bucket, plain)
    if storage.exists(join(plain_uri, MANIFEST)):
        if _same_content(verify_deployment(storage, plain_uri), files, digest):
            return reuse(plain_uri)
    else:
        claim = {"content_digest": digest, "run_id": run_id,
                 "claimed_at": datetime.now(UTC).isoformat(timespec="seconds")}  # fmt: skip
        try:
            storage.write_bytes(join(plain_uri, CLAIM), json.dumps(claim).encode(), if_none_match=True)
            return commit(plain, plain_root)
        except PreconditionFailed:
            pass
        held = _read_claim(storage, plain_uri)
        if held.get("content_digest") == digest:
            if (claim_wait_s is not None and held.get("run_id") != run_id and not _stale(held, claim_wait_s)
                    and _wait_for_manifest(storage, plain_uri, claim_wait_s)):  # fmt: skip
                if _same_content(verify_deployment(storage, plain_uri), files, digest):
                    return reuse(plain_uri)
            else:  # our own earlier attempt (a retry), or a publisher that died: same bytes, finish it
                log.warning("claim on %s (same content) has no manifest; completing the upload", plain_uri)
                return commit(plain, plain_root)
    name = digest_name(plain, digest)
    log.info("%s holds other bytes; publishing this content as %s", plain, name)
    uri = deployment_uri(triton_bucket, name)
    if storage.exists(join(uri, MANIFEST)):
        if verify_deployment(storage, uri).get("content_digest") != digest:
            raise PublishError(f"deployment {name} holds other bytes (digest prefix collision); refusing it")
        return reuse(uri)
    return commit(name, render(name))


def _stale(claim: dict[str, Any], wait_s: float) -> bool:
    """A claim older than ``wait_s``: its publisher died (or lost S3) before the manifest; do not wait for it."""
    try:
        claimed = datetime.fromisoformat(str(claim["claimed_at"]))
    except (KeyError, ValueError):
        return False
    return (datetime.now(UTC) - claimed).total_seconds() > wait_s


def _read_claim(storage: Storage, uri: str) -> dict[str, Any]:
    try:
        return json.loads(storage.read_bytes(join(uri, CLAIM)))
    except (FileNotFoundError, ValueError):
        return {}


def verify_deployment(storage: Storage, uri: str) -> dict[str, Any]:
    """Check that the deployment holds exactly the manifest's files, each with its sha256; return the manifest.

    Besides the listed files only ``manifest.json`` and the publisher's ``publish-claim.json`` may be there: Triton
    serves whatever the folder holds (an unlisted ``2/`` would be a version of its own). Files are hashed as they
    stream in, never read whole into memory.

    Raises:
        InvalidDeployment: no manifest, an unreadable manifest, an unlisted file, or a missing or changed file.
    """
    try:
        manifest = json.loads(storage.read_bytes(join(uri, MANIFEST)))
        files = manifest["files"]
        expected = {rel: str(meta["sha256"]) for rel, meta in files.items()}
    except FileNotFoundError:
        raise InvalidDeployment(f"{uri} has no {MANIFEST}: not a published deployment") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidDeployment(f"{uri}/{MANIFEST} is unreadable: {exc}") from None
    if not files:
        raise InvalidDeployment(f"{uri}/{MANIFEST} lists no files")
    present = {relative(uri, obj) for obj in storage.list(uri)}
    unlisted = sorted(present - set(expected) - {MANIFEST, CLAIM, ""})
    if unlisted:
        more = f" (and {len(unlisted) - 3} more)" if len(unlisted) > 3 else ""
        raise InvalidDeployment(f"{uri}: {', '.join(unlisted[:3])}{more} not listed in the manifest; refusing to serve it")
    for rel, sha256 in expected.items():
        try:
            if rel not in present:
                raise FileNotFoundError(rel)
            digest = hashlib.sha256()
            for chunk in storage.iter_chunks(join(uri, rel), HASH_CHUNK):
                digest.update(chunk)
        except FileNotFoundError:
            raise InvalidDeployment(f"{uri}: {rel} is listed in the manifest but missing") from None
        if digest.hexdigest() != sha256:
            raise InvalidDeployment(f"{uri}: {rel} does not match its sha256 in the manifest")
    return manifest
