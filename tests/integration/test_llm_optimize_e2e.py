"""optimize_model on a chat LLM, end to end on the real stack (issue 11): the text_generation recipe.

SmolLM2-135M-Instruct registered with the transformers flavor goes through the same DAG as the tensor models:
export (the HF source), optimize (ONNX Runtime GenAI INT8 and INT4 builds), validate (next-token agreement and
perplexity on held-out text, teacher-forced against the source), benchmark (each in its own Triton, streamed:
TTFT, ITL, output tokens/s), select (tokens/s under the TTFT SLO), publish, deploy (a streamed smoke answer),
record. On this model INT4 loses too much (about 59% agreement) and must be rejected by the gate; INT8 passes.
"""

from __future__ import annotations

import uuid

import pytest

pytestmark = pytest.mark.integration
DAG = "optimize_model"


@pytest.fixture(scope="module")
def llm_run(register, airflow, stack):
    name = f"it_llm_{uuid.uuid4().hex[:6]}"
    reg = register("smollm2", alias="champion", name=name)
    from modelops.local.demo import run_optimize

    run_id, state = run_optimize(airflow, {"model_name": name, "model_alias": "champion", "model_version": None,
                                           "rollout_steps": [100]}, show_progress=False, timeout_s=2400)  # fmt: skip
    return reg, run_id, state


def test_llm_run_succeeds_with_the_gate_rejecting_int4(llm_run, airflow, storage):
    _reg, run_id, state = llm_run
    states = airflow.task_states(DAG, run_id)
    assert state == "success", states
    assert states["compile"] == "skipped"
    spec = storage.read_json(airflow.xcom(DAG, run_id, "resolve")["spec_uri"])
    assert spec["recipe"] == "text_generation"
    assert spec["variants"] == ["ort_genai_int8", "ort_genai_int4"]  # the default request, mapped for an LLM
    validate = storage.read_json(f"{spec['run_prefix']}/validate/result.json")
    int8, int4 = validate["candidates"]["ort_genai_int8"], validate["candidates"]["ort_genai_int4"]
    assert int8["status"] == "accepted", int8
    assert int8["metric"] >= 0.9 and int8["extra_metrics"]["perplexity_increase"] <= 0.05
    assert int4["status"] == "rejected" and "agreement" in int4["reason"], int4
    assert int4["metric"] < int8["metric"]


def test_llm_benchmark_measures_ttft_itl_and_tokens_per_second(llm_run, airflow, storage):
    _reg, run_id, _ = llm_run
    spec = storage.read_json(airflow.xcom(DAG, run_id, "resolve")["spec_uri"])
    bench = storage.read_json(f"{spec['run_prefix']}/benchmark/result.json")
    assert set(bench["variants"]) == {"baseline", "ort_genai_int8"}  # the rejected INT4 is not benchmarked
    for variant, res in bench["variants"].items():
        assert res["status"] == "done", (variant, res.get("reason"))
        assert [p["concurrency"] for p in res["points"]] == spec["benchmark"]["concurrency"]
        for point in res["points"]:
            assert point["errors"] == 0 and point["output_tokens"] > 0
            assert point["throughput"] > 0 and 0 < point["ttft_p50_ms"] <= point["ttft_p99_ms"]
            assert point["itl_p50_ms"] > 0
    selection = storage.read_json(f"{spec['run_prefix']}/select/result.json")
    assert selection["chosen"] == "ort_genai_int8" and selection["generative"] is True
    assert selection["slo_ms"] == spec["ttft_slo_ms"]


def test_llm_deployment_is_published_routed_and_streams(llm_run, airflow, storage, settings, stack):
    from modelops.evaluation.llm_perf import triton_stream
    from modelops.serving.publish import verify_deployment
    from modelops.serving.routes import read_routes

    reg, run_id, _ = llm_run
    summary = airflow.xcom(DAG, run_id, "record")
    assert summary["deployment"] == f"{reg['name']}--v{reg['version']}-ort_genai_int8".lower()
    manifest = verify_deployment(storage, f"s3://{settings.triton_bucket}/{summary['deployment']}")
    assert manifest["variant"] == "ort_genai_int8" and manifest["backend"] == "python/onnxruntime-genai"
    assert "1/model/genai_config.json" in manifest["files"]
    assert read_routes(storage, settings.triton_bucket, reg["name"]).weights() == {summary["deployment"]: 100}
    deploy = airflow.xcom(DAG, run_id, "deploy")
    assert deploy["smoke"]["text"].strip() and deploy["smoke"]["finish_reason"] in ("stop", "length")
    events = list(triton_stream(stack["triton"]["http"], summary["deployment"],
                                [{"role": "user", "content": "What is the capital of France?"}],
                                {"max_tokens": 24, "temperature": 0}))  # fmt: skip
    assert "".join(e.text for e in events).strip()
    assert events[-1].finish_reason in ("stop", "length")


def test_llm_answers_through_the_gateway_openai_api(llm_run, stack):
    import openai

    from modelops.serving.gateway.keys import KeyStore

    reg, _run_id, _ = llm_run
    _, key = KeyStore(stack["gateway"]["keys_db"]).create(f"it-llm-{uuid.uuid4().hex[:6]}", reg["name"])
    client = openai.OpenAI(base_url=f"{stack['gateway']['url']}/v1", api_key=key, timeout=120)
    answer = client.chat.completions.create(model=reg["name"], messages=[{"role": "user", "content": "Say hi."}],
                                            max_tokens=16, temperature=0)  # fmt: skip
    assert answer.choices[0].message.content.strip()
    assert answer.usage.completion_tokens > 0


def test_mlflow_records_the_llm_run(llm_run, mlflow_client):
    reg, _run_id, _ = llm_run
    mv = mlflow_client.get_model_version(reg["name"], reg["version"])
    assert mv.tags["modelops.status"] == "deployed"
    assert mv.tags["modelops.variant"] == "ort_genai_int8"
    run = mlflow_client.get_run(mv.tags["modelops.run_id"])
    assert run.data.metrics["ort_genai_int8.metric"] >= 0.9
    assert "ort_genai_int8.perplexity" in run.data.metrics and "baseline.c1.itl_p50_ms" in run.data.metrics
