"""LLM deployment directories (modelops.serving.triton.llm_dir): variants, config rendering, folder validation and
publication to an S3 Triton repository (the in-memory S3 with conditional writes of conftest.py).

The model files here are small stand-ins: these tests check what is rendered, copied and published; the worker
tests (tests/worker/test_llm_model.py) load and serve real models from the same directories.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelops.contracts.naming import deployment_name
from modelops.serving.publish import MANIFEST, verify_deployment
from modelops.serving.triton.config_proto import parse
from modelops.serving.triton.llm_dir import (
    LLM_IO,
    LLM_TEMPLATE,
    LLM_VARIANTS,
    build_llm_model_dir,
    genai_version,
    publish_llm,
    render_llm_config,
)
from modelops.serving.triton.model_dir import PYTHON_TEMPLATES

BUCKET = "triton"


def _genai_folder(root: Path, weights: bytes = b"int4-weights") -> Path:
    """The files ``onnxruntime_genai.models.builder`` writes (contents are stand-ins)."""
    root.mkdir(parents=True)
    (root / "genai_config.json").write_text(json.dumps({"model": {"type": "llama"}}))
    (root / "model.onnx").write_bytes(b"onnx-graph")
    (root / "model.onnx.data").write_bytes(weights)
    (root / "tokenizer.json").write_text("{}")
    (root / "tokenizer_config.json").write_text("{}")
    (root / "chat_template.jinja").write_text("{{ messages }}")
    return root


def _param(config: str, key: str) -> str:
    block = config.split(f'key: "{key}"', 1)[1]
    return block.split('string_value: "', 1)[1].split('"', 1)[0]


def test_variants_map_to_runtimes():
    assert {"hf_eager": "hf_eager", "ort_genai_int4": "ort_genai"}.items() <= LLM_VARIANTS.items()
    assert set(LLM_VARIANTS.values()) == {"hf_eager", "ort_genai"}  # the runtimes llm_model.py knows


@pytest.mark.parametrize(("variant", "runtime"), sorted(LLM_VARIANTS.items()))
def test_render_llm_config(variant, runtime):
    config = render_llm_config(name="chat--v2-x", variant=variant, instance_count=2, threads=3, max_concurrency=4)
    parsed = parse(config)
    assert (parsed.name, parsed.backend, parsed.max_batch_size) == ("chat--v2-x", "python", 0)
    assert parsed.model_transaction_policy.decoupled and parsed.instance_group[0].count == 2
    for tensor in LLM_IO["inputs"] + LLM_IO["outputs"]:
        assert f'name: "{tensor["name"]}"' in config
    assert [(i.name, i.optional) for i in parsed.input] == [("messages_json", False), ("params_json", True)]
    assert (_param(config, "runtime"), _param(config, "intra_op_threads"), _param(config, "max_concurrency")) == (
        runtime,
        "3",
        "4",
    )


# config.pbtxt as the string renderer wrote it before the protobuf one (Triton 2.51 served it): the same message
LEGACY_LLM = """name: "chat--v2-x"\nbackend: "python"\nmax_batch_size: 0\nmodel_transaction_policy {\n  decoupled: true\n}
input [\n  {\n    name: "messages_json"\n    data_type: TYPE_STRING\n    dims: [ 1 ]\n  },
  {\n    name: "params_json"\n    optional: true\n    data_type: TYPE_STRING\n    dims: [ 1 ]\n  }\n]
output [\n  {\n    name: "text"\n    data_type: TYPE_STRING\n    dims: [ 1 ]\n  },
  {\n    name: "finish_reason"\n    data_type: TYPE_STRING\n    dims: [ 1 ]\n  },
  {\n    name: "prompt_tokens"\n    data_type: TYPE_INT32\n    dims: [ 1 ]\n  },
  {\n    name: "completion_tokens"\n    data_type: TYPE_INT32\n    dims: [ 1 ]\n  }\n]
instance_group [\n  {\n    kind: KIND_CPU\n    count: 2\n  }\n]
parameters: [\n  {\n    key: "runtime"\n    value: { string_value: "RUNTIME" }\n  },
  {\n    key: "intra_op_threads"\n    value: { string_value: "3" }\n  },
  {\n    key: "max_concurrency"\n    value: { string_value: "4" }\n  }\n]
"""


@pytest.mark.parametrize(("variant", "runtime"), sorted(LLM_VARIANTS.items()))
def test_protobuf_rendering_equals_the_string_one(variant, runtime):
    """The ModelConfig rendering parses to the same message as the string template Triton 2.51 served."""
    config = render_llm_config(name="chat--v2-x", variant=variant, instance_count=2, threads=3, max_concurrency=4)
    assert parse(config) == parse(LEGACY_LLM.replace("RUNTIME", runtime))
    assert parse(config) != parse(LEGACY_LLM.replace("RUNTIME", runtime).replace("decoupled: true", "decoupled: false"))


def test_default_concurrency_is_a_pool_of_four():
    """One instance answers 4 requests at once by default (measured best on the 2-core CPU, see llm_dir)."""
    for variant in LLM_VARIANTS:
        assert _param(render_llm_config(name="x", variant=variant), "max_concurrency") == "4"


def test_render_refuses_bad_settings():
    with pytest.raises(ValueError, match=r"unknown LLM variant 'ort_int8'; known: \['hf_eager', .*'ort_genai_int4'"):
        render_llm_config(name="x", variant="ort_int8")
    for bad in ({"instance_count": 0}, {"threads": -1}, {"max_concurrency": 0}):
        with pytest.raises(ValueError, match="max_concurrency >= 1 are required"):
            render_llm_config(name="x", **bad)


def test_build_copies_a_genai_folder(tmp_path):
    src = _genai_folder(tmp_path / "int4")
    root = build_llm_model_dir(tmp_path / "repo" / "m", name="m", model_dir=src, variant="ort_genai_int4", threads=1)
    assert _param((root / "config.pbtxt").read_text(), "runtime") == "ort_genai"
    assert (root / "1" / "model.py").read_bytes() == (PYTHON_TEMPLATES / LLM_TEMPLATE).read_bytes()
    copied = {p.name: p.read_bytes() for p in (root / "1" / "model").iterdir()}
    assert copied == {p.name: p.read_bytes() for p in src.iterdir()}


@pytest.mark.parametrize("missing", ["genai_config.json", "model.onnx", "tokenizer.json"])
def test_build_refuses_an_incomplete_genai_folder(tmp_path, missing):
    src = _genai_folder(tmp_path / "int4")
    (src / missing).unlink()
    with pytest.raises(ValueError) as err:
        build_llm_model_dir(tmp_path / "m", name="m", model_dir=src, variant="ort_genai_int4")
    assert str(err.value) == f"{src} is not an ONNX Runtime GenAI model folder: missing ['{missing}']"
    assert not (tmp_path / "m").exists()


def test_an_hf_variant_refuses_a_genai_folder(tmp_path):
    src = _genai_folder(tmp_path / "int4")
    with pytest.raises(ValueError, match="not an HF causal LM with a tokenizer"):
        build_llm_model_dir(tmp_path / "m", name="m", model_dir=src, variant="hf_eager")


def test_publish_an_ort_genai_deployment(s3, tmp_path):
    src = _genai_folder(tmp_path / "int4")
    out = publish_llm(s3, model_dir=src, model_name="smollm2_chat", model_version=3, triton_bucket=BUCKET,
                      variant="ort_genai_int4", run_id="run-1")  # fmt: skip
    assert (
        out["deployment"] == deployment_name("smollm2_chat", 3, "ort_genai_int4") == "smollm2_chat--v3-ort_genai_int4"
    )
    manifest = verify_deployment(s3, out["uri"])
    assert manifest["variant"] == "ort_genai_int4" and manifest["backend"] == "python/onnxruntime-genai"
    assert manifest["library_versions"] == {"onnxruntime-genai": genai_version()} and genai_version()
    assert manifest["serving"] == {"decoupled": True, "io": LLM_IO}
    assert set(manifest["files"]) >= {
        "config.pbtxt",
        "1/model.py",
        "1/model/model.onnx.data",
        "1/model/genai_config.json",
    }
    assert s3.read_bytes(f"{out['uri']}/1/model/model.onnx.data") == b"int4-weights"
    config = s3.read_bytes(f"{out['uri']}/config.pbtxt").decode()
    assert f'name: "{out["deployment"]}"' in config and _param(config, "runtime") == "ort_genai"
    # the same bytes again: reused; other bytes: a content-addressed name, the plain one untouched
    again = publish_llm(s3, model_dir=src, model_name="smollm2_chat", model_version=3, triton_bucket=BUCKET,
                        variant="ort_genai_int4", run_id="run-2")  # fmt: skip
    assert again["reused"] and again["deployment"] == out["deployment"]
    other = publish_llm(s3, model_dir=_genai_folder(tmp_path / "other", b"other"), model_name="smollm2_chat",
                        model_version=3, triton_bucket=BUCKET, variant="ort_genai_int4", run_id="run-3")  # fmt: skip
    assert other["deployment"].startswith(out["deployment"] + "-") and not other["reused"]
    assert json.loads(s3.read_bytes(f"{out['uri']}/{MANIFEST}"))["content_digest"] == out["content_digest"]


def test_publish_defaults_to_hf_eager(s3, tmp_path):
    src = tmp_path / "mlflow_model"
    for rel in ("model/config.json", "model/model.safetensors", "components/tokenizer/tokenizer.json"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(rel)
    (src / "MLmodel").write_text(
        "flavors:\n  transformers:\n    transformers_version: 5.24.0\nmlflow_version: 3.17.2\n"
    )
    out = publish_llm(s3, model_dir=src, model_name="smollm2_chat", model_version=1, triton_bucket=BUCKET)
    manifest = verify_deployment(s3, out["uri"])
    assert out["deployment"] == "smollm2_chat--v1-hf_eager" and manifest["backend"] == "python/transformers"
    assert manifest["library_versions"] == {"mlflow": "3.17.2", "transformers": "5.24.0"}
    assert _param(s3.read_bytes(f"{out['uri']}/config.pbtxt").decode(), "runtime") == "hf_eager"
