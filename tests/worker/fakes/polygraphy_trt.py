"""A fake ``polygraphy.backend.trt`` (``EngineFromBytes``, ``TrtRunner``) per Polygraphy's documented API.

No GPU here, so the "engine" is what the fake ``tensorrt`` of ``test_compile_fake_trt.py`` serializes with
``embed_onnx=True``: :data:`FAKE_PLAN_MAGIC` + the ONNX bytes it was built from. ``TrtRunner`` deserializes that when
activated and computes through ONNX Runtime, so what validate gates is a real computation of the model the engine was
built from; a real TensorRT plan (or anything else) is refused as TensorRT would refuse a foreign plan.
"""

from __future__ import annotations

import sys
import types
from collections import OrderedDict
from typing import Any, ClassVar, Self

import numpy as np

FAKE_PLAN_MAGIC = b"FAKEPLAN\0"


def onnx_bytes(plan: bytes) -> bytes:
    """The ONNX model inside a fake plan.

    Raises:
        RuntimeError: not a fake plan (as ``deserialize_cuda_engine`` fails on a foreign plan).
    """
    if not bytes(plan).startswith(FAKE_PLAN_MAGIC):
        raise RuntimeError("IRuntime::deserializeCudaEngine: Error Code 1: Serialization (magic tag does not match)")
    return bytes(plan)[len(FAKE_PLAN_MAGIC) :]


class EngineFromBytes:
    """Loader: ``EngineFromBytes(serialized_engine)()`` -> an engine (here: an ONNX Runtime session)."""

    calls: ClassVar[list[int]] = []

    def __init__(self, serialized_engine: bytes, runtime: Any = None) -> None:
        self.serialized_engine = bytes(serialized_engine)

    def __call__(self) -> Any:
        import onnxruntime as ort

        EngineFromBytes.calls.append(len(self.serialized_engine))
        return ort.InferenceSession(onnx_bytes(self.serialized_engine), providers=["CPUExecutionProvider"])


class TrtRunner:
    """``with TrtRunner(engine_or_loader) as runner: runner.infer(feed_dict)`` -> OrderedDict of numpy arrays."""

    batches: ClassVar[list[int]] = []

    def __init__(self, engine: Any, name: str | None = None, optimization_profile: int | None = None) -> None:
        self._engine, self.is_active = engine, False

    def __enter__(self) -> Self:
        self.session = self._engine() if callable(self._engine) else self._engine
        self.is_active = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.is_active = False

    def infer(self, feed_dict: dict[str, np.ndarray], check_inputs: bool = True) -> OrderedDict:
        assert self.is_active, "TrtRunner.infer() before activation"
        names = [i.name for i in self.session.get_inputs()]
        if check_inputs and sorted(feed_dict) != sorted(names):
            raise KeyError(f"feed_dict has {sorted(feed_dict)}; the engine's inputs are {names}")
        TrtRunner.batches.append(int(next(iter(feed_dict.values())).shape[0]))
        outs = self.session.run(None, feed_dict)
        return OrderedDict((o.name, v) for o, v in zip(self.session.get_outputs(), outs, strict=True))


def install(monkeypatch: Any) -> None:
    """Make ``from polygraphy.backend.trt import EngineFromBytes, TrtRunner`` import this fake (for one test)."""
    EngineFromBytes.calls.clear()
    TrtRunner.batches.clear()
    trt_mod = types.ModuleType("polygraphy.backend.trt")
    trt_mod.EngineFromBytes, trt_mod.TrtRunner = EngineFromBytes, TrtRunner
    backend = types.ModuleType("polygraphy.backend")
    backend.trt = trt_mod
    root = types.ModuleType("polygraphy")
    root.backend = backend
    for name, module in (("polygraphy", root), ("polygraphy.backend", backend), ("polygraphy.backend.trt", trt_mod)):
        monkeypatch.setitem(sys.modules, name, module)
