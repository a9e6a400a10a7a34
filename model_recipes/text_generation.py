"""Chat and completion LLMs logged with the MLflow transformers flavor (e.g. the demo's ``smollm2_chat``).

The source runs in transformers eager (the ``hf_eager`` baseline); the candidates are ONNX Runtime GenAI builds
(``ort_genai_int8``, ``ort_genai_int4``). The gate scores them on the held-out passages of
``data/llm_heldout.json`` (written for this repository) with teacher forcing: greedy next-token agreement with the
source at least 0.90 and perplexity at most 5% above the source's. On SmolLM2-135M (whose weights came from a
Q4_1 GGUF) INT8 keeps ~96% agreement and +1% perplexity; INT4 drops to ~59% and +23%, and is rejected.
"""

from __future__ import annotations

from pathlib import Path

from modelops.recipes.generative import GenerativeRecipe


class TextGeneration(GenerativeRecipe):
    """Causal LMs with a tokenizer and chat template (MLflow transformers flavor)."""

    name = "text_generation"
    data_file = Path(__file__).parent / "data" / "llm_heldout.json"


RECIPE = TextGeneration()
