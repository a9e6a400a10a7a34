"""quant_pre_process in optimize does not import torch (2.7 s of every optimize step) and still infers shapes.

A fresh interpreter (the optimize step's situation) pre-processes a small MatMul graph with a symbolic batch
dimension, then quantizes it: the symbolic shape inference ran (the intermediate tensor got its shape), torch was
never imported, and the quantized model runs in ONNX Runtime.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    tmp = Path(sys.argv[1])
    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"), helper.make_node("Relu", ["h"], ["y"], name="relu")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp / "src.onnx")

    from modelops.optimization.qdq_graph import pre_process
    ok = pre_process(tmp / "src.onnx", tmp / "pre.onnx")
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in onnx.load(tmp / "pre.onnx").graph.value_info}
    torch_after_pre_process = "torch" in sys.modules

    from onnxruntime.quantization import QuantType, quantize_dynamic
    import onnxruntime as ort
    quantize_dynamic(str(tmp / "pre.onnx"), str(tmp / "int8.onnx"), weight_type=QuantType.QInt8)
    session = ort.InferenceSession(str(tmp / "int8.onnx"), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"x": np.ones((3, 16), np.float32)})
    print("RESULT " + json.dumps({"ok": ok, "shapes": shapes, "torch": torch_after_pre_process,
                                  "out": list(out.shape), "ops": sorted({n.op_type for n in onnx.load(tmp / "int8.onnx").graph.node})}))
    """
)


def test_pre_process_infers_shapes_without_importing_torch(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=300,
                          check=False)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = json.loads(line.removeprefix("RESULT "))
    assert out["ok"] is True
    assert out["shapes"].get("h") == ["batch", 8]  # the symbolic batch dimension carried through MatMul
    assert out["torch"] is False
    assert out["out"] == [3, 8] and "MatMulInteger" in out["ops"]
