"""The fingerprint of an optimization: everything that determines its result, hashed.

model version + recipe (name and a content hash of its code) + worker library versions (torch, onnx,
onnxruntime, ...) + target device + optimization settings (variants, latency SLO, accuracy tolerance).
Two runs with equal fingerprints build the same candidates; a nightly re-optimization is due only when
the fingerprint moved (a new ONNX Runtime in the worker image, a new recipe, new settings...).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modelops.settings import REPO_ROOT, Settings

# Worker libraries whose versions change what an optimization produces.
WORKER_LIBRARIES = ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript", "tensorrt", "nvidia-modelopt")
VERSIONS_FILE_ENV = "MODELOPS_WORKER_VERSIONS_FILE"  # Settings.tools.worker_versions_file: JSON {"torch": "2.13.0", ...}
_PIN = re.compile(r"^\s*([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*==\s*([^\s;#]+)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pins(lines: Iterable[str], wanted: Iterable[str] = WORKER_LIBRARIES) -> dict[str, str]:
    """``name==version`` pins of ``wanted`` packages from requirements lines (normalised names)."""
    targets = {_norm(w) for w in wanted}
    pins: dict[str, str] = {}
    for line in lines:
        match = _PIN.match(line)
        if match and _norm(match.group(1)) in targets:
            pins[_norm(match.group(1))] = match.group(2)
    return dict(sorted(pins.items()))


def worker_library_versions(environ: Mapping[str, str] | None = None, repo_root: Path = REPO_ROOT) -> dict[str, str]:
    """Library versions of the worker environment.

    ``MODELOPS_WORKER_VERSIONS_FILE`` (JSON written when the worker image is built) wins; otherwise the
    pins of ``requirements-worker.txt``, which is what the embedded worker venv is installed from.
    """
    explicit = Settings.from_env(environ).tools.worker_versions_file
    if explicit is not None:
        data = json.loads(explicit.read_text())
        return {_norm(k): str(v) for k, v in sorted(data.items()) if _norm(k) in {_norm(w) for w in WORKER_LIBRARIES}}
    path = repo_root / "requirements-worker.txt"
    return parse_pins(path.read_text().splitlines()) if path.exists() else {}


def _source_hash(sources: Mapping[str, Path | None]) -> str:
    """sha256 over ``module name + source`` of each module (a missing file hashes as empty), 12 hex chars."""
    digest = hashlib.sha256()
    for module, path in sorted(sources.items()):
        digest.update(module.encode())
        digest.update(path.read_bytes() if path is not None and path.exists() else b"")
    return digest.hexdigest()[:12]


def recipe_versions(recipes: Mapping[str, str] | None = None) -> dict[str, str]:
    """recipe name -> content hash of its code; ``auto`` hashes every recipe's code together.

    A recipe's code is its implementation module (found through the ``modelops.recipes`` entry point),
    every module of its own package that it imports, transitively, and the core recipe interface whose
    defaults it runs (:mod:`modelops.recipes.sources`). Nothing is imported: the files are located and read.

    Args:
        recipes: name -> ``"module:attribute"`` of the recipes to hash; None: every installed recipe.

    A content hash instead of a hand-bumped number: a recipe change nobody remembered to version still
    re-optimizes the models it serves.
    """
    from modelops.recipes import recipe_infos
    from modelops.recipes.sources import CORE_MODULES, module_file, recipe_sources

    targets = dict(recipes) if recipes is not None else {n: i.target for n, i in recipe_infos().items()}
    core = {module: module_file(module) for module in CORE_MODULES}
    per_recipe = {name: {**core, **recipe_sources(target.partition(":")[0])} for name, target in targets.items()}
    versions = {name: _source_hash(sources) for name, sources in per_recipe.items()}
    versions["auto"] = _source_hash({m: p for sources in per_recipe.values() for m, p in sources.items()})
    return versions


def target_device(settings: Settings) -> str:
    """``cpu`` for the embedded stack; the GPU product (or GPU resource) the pods are placed on otherwise."""
    if settings.execution != "kubernetes":
        return "cpu"
    k8s = settings.kubernetes
    return k8s.gpu_product or k8s.gpu_resource


@dataclass(frozen=True)
class FingerprintContext:
    """What is the same for every model in one planning pass (read once, not once per model)."""

    libraries: dict[str, str]
    recipes: dict[str, str]
    device: str

    @classmethod
    def current(cls, recipes: Mapping[str, str] | None = None, settings: Settings | None = None) -> FingerprintContext:
        """The context of this installation (worker pins, recipe code, execution target).

        Args:
            recipes: name -> ``"module:attribute"``; None: the recipes installed through entry points.
            settings: defaults to ``Settings.from_env()``.
        """
        settings = settings or Settings.from_env()
        return cls(worker_library_versions(), recipe_versions(recipes), target_device(settings))


@dataclass(frozen=True)
class FingerprintInputs:
    """The inputs of one fingerprint, kept on the version so a later plan can say what changed."""

    model: str
    version: str
    recipe: str
    recipe_version: str
    libraries: dict[str, str] = field(default_factory=dict)
    device: str = "cpu"
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def digest(self) -> str:
        """sha256 of the canonical JSON, 16 hex characters (what the version tag holds)."""
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def fingerprint_inputs(
    model: str, version: str, settings: Mapping[str, Any], context: FingerprintContext, recipe: str | None = None
) -> FingerprintInputs:
    """The fingerprint inputs of ``model`` v``version`` under ``settings`` (variants / SLO / tolerance).

    ``recipe`` is the version's ``modelops.recipe`` tag when known; otherwise the fingerprint covers the
    code of every recipe (``auto``), since picking one needs the MLmodel file (an S3 read per model).
    """
    name = recipe if recipe and recipe in context.recipes else "auto"
    normalised = {
        "variants": sorted(settings.get("variants") or []),
        "latency_slo_ms": float(settings["latency_slo_ms"]),
        "accuracy_tolerance": float(settings["accuracy_tolerance"]),
    }
    return FingerprintInputs(model, str(version), name, context.recipes[name], dict(context.libraries),
                             context.device, normalised)


def changed_parts(old: Mapping[str, Any] | None, new: FingerprintInputs) -> list[str]:
    """Which inputs differ from a previous fingerprint's inputs (e.g. ``["libraries.onnxruntime"]``)."""
    if not old:
        return ["no previous fingerprint inputs"]
    current = new.to_json()
    parts: list[str] = []
    for key, value in current.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            parts += [f"{key}.{k}" for k in sorted(set(value) | set(before)) if value.get(k) != before.get(k)]
        elif value != before:
            parts.append(key)
    return parts
