"""Defaults per model family: a run that names no variants gets its recipe's family defaults."""

from __future__ import annotations

import json

import pytest

from modelops.contracts.variants import KIND_DEFAULTS, VARIANTS, ModelKind, UnknownVariant, variants_for
from modelops.recipes import model_kind, recipe_infos


def _mlmodel(shape: list[int], dtype: str = "float32") -> dict:
    spec = [{"type": "tensor", "tensor-spec": {"dtype": dtype, "shape": shape}, "name": "x"}]
    return {"flavors": {"pytorch": {}}, "signature": {"inputs": json.dumps(spec)}}


def test_every_family_default_is_a_known_variant_of_its_family():
    for kind, names in KIND_DEFAULTS.items():
        assert names and len(set(names)) == len(names), kind
        for name in names:
            assert (VARIANTS[name].family == "llm") == (kind == ModelKind.LLM), (kind, name)


def test_no_request_gets_the_family_defaults_and_a_request_is_kept():
    assert variants_for([], "image") == ["ort_fp32", "ort_int8_static", "openvino_int8"]
    assert variants_for(None, "text_encoder") == ["ort_fp32", "ort_int8_dynamic", "openvino_int8"]
    assert variants_for([], "tabular") == ["ort_fp32", "ort_int8_dynamic"]
    assert variants_for(["ort_fp32", "ort_int8_dynamic"], "image") == ["ort_fp32", "ort_int8_dynamic"]
    with pytest.raises(UnknownVariant, match="do not apply to tensor models"):
        variants_for(["ort_fp32", "ort_genai_int4"], "image")


@pytest.mark.parametrize(
    ("recipe", "kind"),
    [("mobilenet_v2", "image"), ("digits_cnn", "image"), ("text_embedding", "text_encoder"),
     ("sklearn_tabular", "tabular"), ("text_generation", "llm")],
)  # fmt: skip
def test_the_demo_recipes_name_their_family(recipe, kind):
    assert model_kind(recipe_infos()[recipe], {}) == kind


@pytest.mark.parametrize(
    ("shape", "dtype", "kind"),
    [([-1, 3, 224, 224], "float32", "image"),  # NCHW photos
     ([-1, 32, 32, 1], "float32", "image"),  # NHWC grey
     ([-1, 3, -1, -1], "float32", "image"),  # any size
     ([-1, 30], "float32", "generic"),  # features
     ([-1, 3, 4, 4], "float32", "generic"),  # too small to be a picture
     ([-1, 3, 224, 224], "int64", "generic"),  # not pixels
     ([-1, 16, 10, 10], "float32", "generic")],  # 16 channels: a feature map, not an image
)  # fmt: skip
def test_a_generic_recipe_reads_the_family_from_the_signature(shape, dtype, kind):
    assert model_kind(recipe_infos()["pytorch_generic"], _mlmodel(shape, dtype)) == kind
    assert model_kind(recipe_infos()["onnx_generic"], {"flavors": {"onnx": {}}}) == "generic"  # no signature

