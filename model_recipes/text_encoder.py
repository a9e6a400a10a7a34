"""Loading text encoders for the ``text_embedding`` recipe: MLflow sentence-transformers / transformers models.

:func:`load_text_model` returns the source model beside an eager-attention copy wrapped in the pooling
module that is exported to ONNX (mean/CLS pooling and L2 normalisation inside the graph).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tokenizers
    import torch

ST_FLAVOR = "sentence_transformers"
HF_FLAVOR = "transformers"
DEFAULT_MAX_SEQ_LEN = 256  # all-MiniLM-L6-v2's max_seq_length, used when a model does not say


@dataclass
class TextModel:
    """What :func:`load_text_model` returns: the source model and what export needs beside it."""

    flavor: str  # "sentence_transformers" or "transformers"
    source: Any  # SentenceTransformer, or the HF PreTrainedModel of a transformers-flavor model
    encoder: torch.nn.Module  # PooledEncoder around an eager-attention copy of the HF model (exported)
    tokenizer: Any  # the HF (fast) tokenizer the source model uses
    max_seq_length: int
    pooling: str  # "mean" or "cls"
    normalize: bool
    hf_config: dict[str, Any] = field(default_factory=dict)


def load_text_model(model_dir: Path) -> TextModel:
    """Load an MLflow sentence-transformers or transformers model on CPU, plus an eager copy to export.

    Raises:
        ValueError: the model has neither flavor, or a pooling/module the export does not support.
    """
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
    return model


def fast_tokenizer(hf_tokenizer: Any) -> tokenizers.Tokenizer:
    """A standalone ``tokenizers.Tokenizer`` copied from an HF fast tokenizer's backend.

    Raises:
        ValueError: the tokenizer has no fast backend.
    """
    import tokenizers

    backend = getattr(hf_tokenizer, "backend_tokenizer", None) or getattr(hf_tokenizer, "_tokenizer", None)
    if backend is None:
        raise ValueError(f"tokenizer {type(hf_tokenizer).__name__} has no fast (tokenizers) backend")
    return tokenizers.Tokenizer.from_str(backend.to_str())


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
