"""Does loading a model run code from its own files? The ``modelops.allow_pickle`` opt-in.

A pickled PyTorch module, a pickle or cloudpickle scikit-learn file, a skops file that asks (in its own
``MLmodel``) to trust types beyond skops' safe defaults, Python code shipped beside the model (``code_paths``) and
transformers models with their own modeling code (``trust_remote_code``) all execute what whoever logged the model
chose, in the step that loads it. Resolve refuses such a version unless it (or its registered model) carries
``modelops.allow_pickle=true``, and the steps then open MLflow's own gate (``MLFLOW_ALLOW_PICKLE_DESERIALIZATION``,
:func:`loader_gate`) for that run only; otherwise the gate is closed, so MLflow itself refuses a pickle that slipped
past these checks. MLflow's permissions are per model, not per tag: whoever may edit a model may set the tag, so
keep EDIT on production models to their owners and admins (``docs/operations.md``).

Pure functions of the ``MLmodel`` dict and the model directory's file list: cheap, no MLflow or torch import.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from modelops.contracts.naming import TAG_ALLOW_PICKLE

TRUE = frozenset({"true", "1", "yes"})


@dataclass(frozen=True)
class Trust:
    """What loading the model through ``flavor`` needs.

    Attributes:
        risks: why loading runs code from the model's files (empty: it does not).
        opted_in: the version or its registered model carries ``modelops.allow_pickle=true``.
        needs_gate: MLflow's pickle gate must be open to load it at all (a skops file is gated too, even when its
            types were checked here).
    """

    risks: tuple[str, ...]
    opted_in: bool
    needs_gate: bool

    @property
    def refused(self) -> bool:
        return bool(self.risks) and not self.opted_in

    @property
    def allow_pickle(self) -> bool:
        """What the run spec's ``allow_pickle`` (MLflow's gate in the steps) is set to."""
        return self.needs_gate and not self.refused

    def reason(self, name: str, version: str) -> str:
        """One line: why resolve refuses ``name`` version ``version`` and how an admin opts in."""
        more = f" (and {len(self.risks) - 1} more)" if len(self.risks) > 1 else ""
        return (f"model {name} version {version} runs code from its own files when loaded: {self.risks[0]}{more}; "
                f"an MLflow admin who trusts it sets the tag {TAG_ALLOW_PICKLE}=true on the version")


def assess(mlmodel: Mapping[str, Any], flavor: str, files: Iterable[str], tags: Mapping[str, str]) -> Trust:
    """The :class:`Trust` of a model loaded through ``flavor``.

    Args:
        mlmodel: the ``MLmodel`` file as a dict.
        flavor: the flavor the recipe loads it through (``modelops.recipes.source_flavor``).
        files: paths of the model directory's files, relative to it (``data/model.pth``, ``MLmodel``...).
        tags: the version's tags, then its registered model's.
    """
    conf: Mapping[str, Any] = (mlmodel.get("flavors") or {}).get(flavor) or {}
    names = set(files)
    risks: list[str] = []
    needs_gate = False
    if conf.get("code"):
        risks.append(f"it ships Python code ({conf['code']}/, code_paths) that MLflow imports")
    if flavor == "pytorch":
        data = str(conf.get("model_data") or "data")
        if f"{data}/model.pt2" not in names:
            risks.append("its PyTorch module is pickled (log it with serialization_format='pt2')")
            needs_gate = True
    elif flavor == "sklearn":
        fmt = str(conf.get("serialization_format") or "cloudpickle")
        needs_gate = True
        if fmt != "skops":
            risks.append(f"its scikit-learn model is a {fmt} file (log it with serialization_format='skops')")
        else:
            extra = sorted(str(t) for t in conf.get("skops_trusted_types") or ())
            if extra:  # skops' own defaults are safe; these the file asks to trust (Tree: unchecked node indices)
                risks.append(f"its skops file asks to trust {', '.join(extra[:3])} beyond skops' safe defaults")
    elif flavor in ("transformers", "sentence_transformers"):
        code = sorted(f for f in names if f.endswith(".py"))
        if code:
            risks.append(f"it ships modeling code ({code[0]}) that transformers runs with trust_remote_code")
    opted_in = str(tags.get(TAG_ALLOW_PICKLE, "")).strip().lower() in TRUE
    return Trust(tuple(risks), opted_in, needs_gate)


def loader_gate(allow_pickle: bool | None) -> dict[str, str]:
    """The environment a step loads the model under: MLflow's pickle gate closed unless the spec opens it.

    ``None`` (a spec written by hand, not by resolve) leaves the environment as it is.
    """
    if allow_pickle is None:
        return {}
    return {"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true" if allow_pickle else "false"}
