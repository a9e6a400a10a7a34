"""GPU deployments in the S3 Triton repository: TensorRT engines as ``1/model.plan`` (several compute capabilities with
``cc_model_filenames``), rendered for ``tensorrt_plan`` on KIND_GPU, the manifest naming the real backend and device;
an engine is never half-published for a CPU Triton; ``publish_llm`` renders the spec's device.

Storage is the in-memory S3 with conditional writes of conftest.py; config.pbtxt is parsed back with Triton's
``model_config`` protobuf.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelops.serving.publish import MANIFEST, PublishError, publish_candidate, verify_deployment
from modelops.serving.triton.config_proto import parse, pb2
from modelops.serving.triton.llm_dir import publish_llm
from modelops.serving.triton.model_dir import engine_max_batch

BUCKET = "triton"
RUN = "s3://artifacts/runs/clf/4/r1"
IO = {"inputs": [{"name": "x", "dtype": "float32", "dims": [4]}],
      "outputs": [{"name": "y", "dtype": "float32", "dims": [2]}]}  # fmt: skip
EXPORT = {"io": IO, "max_batch_size": 64, "outputs": {}, "versions": {"onnx": "1.19"}}


def _spec(device: str = "gpu") -> dict:
    return {"model_name": "clf", "model_version": "4", "recipe": "pytorch_generic", "model_uri": "models:/clf/4",
            "source_uri": "s3://mlflow/clf", "run_id": "r1", "run_prefix": RUN, "serving_device": device,
            "variants": ["trt_fp16"]}  # fmt: skip


def _compiled(s3, plans: dict[str, bytes], max_batch: int = 32) -> None:
    """A compile result whose trt_fp16 was built on one GPU product per compute capability."""
    uris = {}
    for cc, data in plans.items():
        uris[cc] = f"{RUN}/trt_fp16/gpu-{cc}/model.plan"
        s3.write_bytes(uris[cc], data)
    last = list(uris)[-1]
    engine = {"status": "done", "plan": uris[last], "plans": uris, "compute_capability": last,
              "gpu_product": "NVIDIA-H100-80GB-HBM3", "profiles": {"x": [[1, 4], [8, 4], [max_batch, 4]]}}  # fmt: skip
    s3.write_bytes(f"{RUN}/compile/result.json", json.dumps({"status": "done", "engines": {"trt_fp16": engine}}).encode())


def test_an_engine_is_published_as_model_plan_for_tensorrt_on_gpu(s3):
    _compiled(s3, {"9.0": b"h100-plan"})
    out = publish_candidate(s3, _spec(), "trt_fp16", EXPORT, {"candidates": {}}, BUCKET)
    manifest = verify_deployment(s3, out["uri"])
    assert out["deployment"] == "clf--v4-trt_fp16"
    assert (manifest["backend"], manifest["target_device"]) == ("tensorrt/tensorrt", "gpu")
    assert set(manifest["files"]) == {"config.pbtxt", "1/model.plan"}
    assert s3.read_bytes(f"{out['uri']}/1/model.plan") == b"h100-plan"
    config = parse(s3.read_bytes(f"{out['uri']}/config.pbtxt").decode())
    assert (config.platform, config.backend, config.default_model_filename) == ("tensorrt_plan", "tensorrt", "model.plan")
    assert config.instance_group[0].kind == pb2().ModelInstanceGroup.KIND_GPU
    assert config.max_batch_size == 32  # capped by the engine's optimization profile, not the model's 64
    assert not config.cc_model_filenames


def test_several_compute_capabilities_use_cc_model_filenames(s3):
    _compiled(s3, {"8.0": b"a100-plan", "9.0": b"h100-plan"})
    out = publish_candidate(s3, _spec(), "trt_fp16", EXPORT, {"candidates": {}}, BUCKET)
    config = parse(s3.read_bytes(f"{out['uri']}/config.pbtxt").decode())
    assert dict(config.cc_model_filenames) == {"8.0": "model_8.0.plan", "9.0": "model_9.0.plan"}
    assert s3.read_bytes(f"{out['uri']}/1/model_8.0.plan") == b"a100-plan"
    assert s3.read_bytes(f"{out['uri']}/1/model_9.0.plan") == b"h100-plan"
    assert s3.read_bytes(f"{out['uri']}/1/model.plan") == b"h100-plan"  # the default: the last one built
    assert set(verify_deployment(s3, out["uri"])["files"]) == {
        "config.pbtxt", "1/model.plan", "1/model_8.0.plan", "1/model_9.0.plan"}  # fmt: skip


def test_an_engine_is_not_published_for_a_cpu_triton_nor_without_a_plan(s3):
    _compiled(s3, {"9.0": b"h100-plan"})
    with pytest.raises(PublishError, match="trt_fp16 runs on tensorrt .*not served by a cpu Triton"):
        publish_candidate(s3, _spec("cpu"), "trt_fp16", EXPORT, {"candidates": {}}, BUCKET)
    assert not [k for k in s3.objects if k.startswith(f"s3://{BUCKET}/")]  # nothing half-published
    s3.write_bytes(f"{RUN}/compile/result.json", json.dumps({"status": "done", "engines": {
        "trt_fp16": {"status": "failed", "reason": "EngineBuildError: ...", "plan": None}}}).encode())  # fmt: skip
    with pytest.raises(PublishError, match="has no optimized model to publish"):
        publish_candidate(s3, _spec(), "trt_fp16", EXPORT, {"candidates": {}}, BUCKET)
    s3.delete(f"{RUN}/compile/result.json")
    with pytest.raises(PublishError, match="cannot publish trt_fp16: step 'compile' has no result"):
        publish_candidate(s3, _spec(), "trt_fp16", EXPORT, {"candidates": {}}, BUCKET)
    assert not [k for k in s3.objects if k.startswith(f"s3://{BUCKET}/")]


def test_an_onnx_candidate_on_gpu_is_rendered_for_onnxruntime_onnx(s3, tmp_path):
    s3.write_bytes(f"{RUN}/modelopt_int8/model.onnx", b"qdq-onnx")
    optimize = {"candidates": {"modelopt_int8": {"status": "done", "onnx": f"{RUN}/modelopt_int8/model.onnx"}}}
    out = publish_candidate(s3, _spec(), "modelopt_int8", EXPORT, optimize, BUCKET)
    manifest = verify_deployment(s3, out["uri"])
    assert (manifest["backend"], manifest["target_device"]) == ("onnxruntime/tensorrt", "gpu")
    config = parse(s3.read_bytes(f"{out['uri']}/config.pbtxt").decode())
    assert (config.platform, config.max_batch_size) == ("onnxruntime_onnx", 64)
    (accel,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accel.name == "tensorrt" and accel.parameters["precision_mode"] == "INT8"


def test_engine_max_batch():
    assert engine_max_batch({"profiles": {"a": [[1, 8], [8, 8], [16, 8]], "b": [[1], [8], [32]]}}, 64) == 16
    assert engine_max_batch({}, 64) == 64 and engine_max_batch({"profiles": {"a": [[1], [1], [1]]}}, 0) == 0


def _genai_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    for name, text in {"genai_config.json": "{}", "model.onnx": "g", "tokenizer.json": "{}"}.items():
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_publish_llm_renders_the_spec_device(s3, tmp_path, device):
    out = publish_llm(s3, model_dir=_genai_folder(tmp_path / "int8"), model_name="chat", model_version=2,
                      triton_bucket=BUCKET, variant="ort_genai_int8", run_id="r", device=device)  # fmt: skip
    manifest = json.loads(s3.read_bytes(f"{out['uri']}/{MANIFEST}"))
    assert manifest["target_device"] == device
    kind = parse(s3.read_bytes(f"{out['uri']}/config.pbtxt").decode()).instance_group[0].kind
    assert kind == getattr(pb2().ModelInstanceGroup, f"KIND_{device.upper()}")


def test_publish_llm_refuses_a_device_the_variant_is_not_served_on(s3, tmp_path):
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        publish_llm(s3, model_dir=_genai_folder(tmp_path / "int8"), model_name="chat", model_version=2,
                    triton_bucket=BUCKET, variant="ort_genai_int8", device="tpu")  # fmt: skip
    assert not s3.objects
