"""The recipe interface of generative LLMs: what the LLM path of the steps calls instead of the ONNX export hooks.

A :class:`GenerativeRecipe` is chosen like any recipe (entry point ``modelops.recipes``, flavor rules or the
``modelops.recipe`` MLmodel metadata). The heavy steps see ``generative = True`` and take the LLM path
(:mod:`modelops.steps.llm_build`, :mod:`modelops.steps.llm_eval`):

- export: :meth:`GenerativeRecipe.hf_dir` (the source as one Hugging Face directory: the ``hf_eager`` baseline);
- optimize: ONNX Runtime GenAI's model builder per variant (``ort_genai_*`` in the variant registry);
- validate: :meth:`GenerativeRecipe.heldout` texts, teacher-forced: greedy next-token agreement with the source
  (``>= min_agreement``) and the perplexity change (``<= max_perplexity_increase``);
- benchmark: :meth:`GenerativeRecipe.prompts` streamed at each concurrency, ``max_tokens`` each: time to first
  token, inter-token latency, output tokens/s; select takes the most tokens/s whose TTFT p99 meets the SLO.

Light: no torch or numpy at import (the Airflow side imports recipe descriptors).
"""

from __future__ import annotations

import json
from abc import ABC
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

__all__ = ["GenerativeRecipe", "is_generative"]


class GenerativeRecipe(ABC):
    """What the pipeline needs to know about a family of chat/completion LLMs."""

    name: ClassVar[str] = "generative"
    generative: ClassVar[bool] = True
    framework: ClassVar[str] = "transformers"
    metric_name: ClassVar[str] = "next_token_agreement"
    #: the gate: least share of held-out positions where the candidate's argmax equals the source's
    min_agreement: ClassVar[float] = 0.90
    #: the gate: largest relative perplexity increase over the source on the held-out texts
    max_perplexity_increase: ClassVar[float] = 0.05
    #: tokens generated per benchmark request (greedy, fixed so runs compare)
    max_tokens: ClassVar[int] = 64
    #: JSON file with ``texts`` (held-out passages) and ``prompts`` (benchmark chat requests)
    data_file: ClassVar[Path | None] = None

    @cached_property
    def _data(self) -> dict[str, Any]:
        if self.data_file is None:
            raise ValueError(f"recipe {self.name} has no data_file with held-out texts and prompts")
        return json.loads(Path(self.data_file).read_text())

    def heldout(self) -> list[str]:
        """Held-out passages the gate scores every candidate on (teacher forcing)."""
        return list(self._data["texts"])

    def prompts(self) -> list[str]:
        """User messages the benchmark sends (one chat turn each)."""
        return list(self._data["prompts"])

    def hf_dir(self, model_dir: Path, dest: Path) -> Path:
        """The source model as one Hugging Face directory (weights, config, tokenizer, chat template) at ``dest``.

        Default: an MLflow transformers model's ``model/`` and ``components/tokenizer/`` flattened.

        Raises:
            ValueError: the directory holds no HF causal LM with a tokenizer (one line).
        """
        import shutil

        from modelops.serving.triton.llm_dir import hf_files

        dest.mkdir(parents=True, exist_ok=True)
        for rel, src in hf_files(model_dir).items():
            shutil.copyfile(src, dest / rel)
        return dest

    def library_versions(self) -> dict[str, str]:
        """Versions of what runs the source and builds the candidates (recorded in manifests)."""
        from importlib.metadata import PackageNotFoundError, version

        out: dict[str, str] = {}
        for dist in ("torch", "transformers", "onnxruntime", "onnxruntime-genai"):
            try:
                out[dist] = version(dist)
            except PackageNotFoundError:
                continue
        return out


def is_generative(recipe: Any) -> bool:
    """True for a generative (LLM) recipe instance or class."""
    return bool(getattr(recipe, "generative", False))
