"""The text_generation recipe's pure pieces: recipe choice, variant mapping, the LLM gate's arithmetic, builder args."""

from __future__ import annotations

import numpy as np
import pytest

from modelops.contracts.variants import DEFAULT_VARIANTS, LLM_DEFAULT_VARIANTS, UnknownVariant, variants_for


def _mlmodel(task: str, metadata: dict | None = None) -> dict:
    return {"flavors": {"transformers": {"task": task}, "python_function": {}}, "metadata": metadata or {}}


def test_a_text_generation_model_gets_the_llm_recipe_and_an_embedder_does_not():
    from modelops.recipes import recipe_infos, select_recipe

    assert select_recipe(_mlmodel("text-generation")) == "text_generation"
    assert select_recipe(_mlmodel("", {"task": "llm/v1/chat"})) == "text_generation"
    assert select_recipe(_mlmodel("feature-extraction")) == "text_embedding"
    assert recipe_infos()["text_generation"].generative and not recipe_infos()["text_embedding"].generative


def test_the_default_variant_request_maps_to_each_family():
    assert variants_for(list(DEFAULT_VARIANTS), "llm") == LLM_DEFAULT_VARIANTS
    assert variants_for(list(LLM_DEFAULT_VARIANTS), "image") == ["ort_fp32", "ort_int8_static", "openvino_int8"]
    assert variants_for(["ort_genai_int8"], "llm") == ["ort_genai_int8"]
    with pytest.raises(UnknownVariant, match=r"\['ort_fp32'\] do not apply to llm models"):
        variants_for(["ort_fp32", "ort_genai_int8"], "llm")
    with pytest.raises(UnknownVariant, match="do not apply to tensor models"):
        variants_for(["ort_genai_int4"], "generic")


def _one_hot(ids: list[int], vocab: int, peak: float = 8.0) -> np.ndarray:
    logits = np.zeros((len(ids), vocab), dtype=np.float32)
    logits[np.arange(len(ids)), ids] = peak
    return logits


def test_agreement_and_perplexity_follow_the_logits():
    from modelops.steps.llm_eval import compare, gate

    tokens = np.array([[1, 2, 3, 4, 0]], dtype=np.int64)
    source = _one_hot([2, 3, 4, 0, 1], vocab=5)  # predicts every next token
    same = compare([source], [source.copy()], [tokens])
    assert same["agreement"] == 1.0 and same["perplexity_increase"] == pytest.approx(0.0)
    assert same["positions"] == 4
    assert gate(same, 0.9, 0.05) is None
    worse = source.copy()
    worse[0] = _one_hot([1], vocab=5)[0]  # position 0 now predicts token 1 instead of 2
    worse[1] = _one_hot([0], vocab=5)[0]
    stats = compare([source], [worse], [tokens])
    assert stats["agreement"] == pytest.approx(0.5)
    assert stats["perplexity"] > stats["source_perplexity"]
    reason = gate(stats, 0.9, 0.05)
    assert "agreement 0.500 < 0.9" in reason and "above the source's" in reason


def test_compare_refuses_mismatched_vocabularies():
    from modelops.steps._common import StepError
    from modelops.steps.llm_eval import compare

    tokens = np.array([[1, 2]], dtype=np.int64)
    with pytest.raises(StepError, match="shape"):
        compare([_one_hot([2, 1], 5)], [_one_hot([2, 1], 6)], [tokens])


def test_builder_command_takes_precision_and_options_from_the_registry(tmp_path):
    from modelops.contracts.variants import VARIANTS
    from modelops.steps.llm_build import builder_command

    cmd = builder_command(tmp_path / "hf", tmp_path / "out", tmp_path / "cache", VARIANTS["ort_genai_int8"].options)
    assert cmd[1:3] == ["-m", "onnxruntime_genai.models.builder"]
    assert cmd[cmd.index("-p") + 1] == "int8" and cmd[cmd.index("-e") + 1] == "cpu"
    assert "accuracy_level=4" in cmd[cmd.index("--extra_options") + 1:]
