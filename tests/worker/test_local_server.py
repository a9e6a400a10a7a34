"""TritonProcess against a real tritonserver: readiness, inference, load/unload errors (tritonclient.http),
model control locked behind the server's own admin token."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("tritonclient.http")

from modelops.serving.triton.local_server import TritonProcess, TritonStartError
from modelops.serving.triton.model_dir import build_model_dir
from modelops.settings import Settings

pytestmark = pytest.mark.skipif(not Settings.from_env().tritonserver_bin.exists(), reason="tritonserver not installed")


def _plus_one(path: Path) -> Path:
    """``y = x + 1`` on float32 ``[batch, 4]``."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph([helper.make_node("Add", ["x", "one"], ["y"])], "plus_one", [x], [y], [one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _status(method: str, url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, data=b"{}" if method == "POST" else None, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_triton_process_serves_infers_and_reports_refusals(tmp_path):
    io = {
        "inputs": [{"name": "x", "dtype": "float32", "dims": [4]}],
        "outputs": [{"name": "y", "dtype": "float32", "dims": [4]}],
    }
    repo = tmp_path / "repo"
    build_model_dir(
        repo / "plus_one", name="plus_one", kind="onnxruntime", model_path=_plus_one(tmp_path / "m.onnx"),
        io=io, max_batch_size=8,
    )  # fmt: skip
    with TritonProcess(repo, ["plus_one"], log_path=tmp_path / "triton.log", timeout_s=90) as server:
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        got = server.infer("plus_one", {"x": x})
        assert set(got) == {"y"} and got["y"].dtype == np.float32
        np.testing.assert_array_equal(got["y"], x + 1)
        with pytest.raises(RuntimeError, match=r"^inference on 'nope' failed \(\d+\): "):
            server.infer("nope", {"x": x})
        with pytest.raises(TritonStartError, match=r"^loading 'missing' failed \(\d+\): ") as err:
            server.load_model("missing", timeout_s=30)
        assert "\n" not in err.value.reason
        # model control without this server's token is refused, and the model keeps serving
        base = f"http://{server.http_url}"
        for action in ("unload", "load"):
            code, body = _status("POST", f"{base}/v2/repository/models/plus_one/{action}")
            assert code == 403 and "X-ModelOps-Admin" in body, (action, code, body)
        code, _ = _status("POST", f"{base}/v2/repository/models/plus_one/unload", {"X-ModelOps-Admin": "guess"})
        assert code == 403
        assert _status("POST", f"{base}/v2/repository/index")[0] == 403
        assert _status("GET", f"{base}/v2/models/plus_one/ready")[0] == 200
        assert _status("GET", f"{base}/v2/models/plus_one/config")[0] == 200, "perf_analyzer reads the config"
        np.testing.assert_array_equal(server.infer("plus_one", {"x": x})["y"], x + 1)
        server.unload_model("plus_one")  # with the token: accepted
        with pytest.raises(RuntimeError, match="inference on 'plus_one' failed"):
            server.infer("plus_one", {"x": x})
        server.load_model("plus_one", timeout_s=60)  # reload waits until ready again
        np.testing.assert_array_equal(server.infer("plus_one", {"x": x})["y"], x + 1)
    assert server.process is None
    assert server._admin_token not in (tmp_path / "triton.log").read_text(), "the token is never logged"


def test_start_fails_with_the_log_reason(tmp_path):
    with pytest.raises(TritonStartError) as err:
        TritonProcess(tmp_path / "empty", ["absent"], log_path=tmp_path / "triton.log", timeout_s=30).start()
    assert err.value.reason and "\n" not in err.value.reason


def _group_members(pgid: int) -> set[int]:
    """The pids of process group ``pgid`` (``/proc/<pid>/stat``'s fifth field)."""
    members = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            members.add(int(stat.parent.name))
    return members


def _alive(pids: set[int]) -> set[int]:
    """The pids still running (a zombie waits for its reaper; it runs nothing)."""
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def test_kill_ends_the_server_and_its_stubs_and_frees_their_shared_memory(tmp_path):
    """kill(): the whole process group is gone at once and the python backend's /dev/shm regions with it (a SIGKILL
    alone would leave them behind: the server removes them only in a graceful shutdown)."""
    from modelops.process_tree import python_shm_regions

    io = {
        "inputs": [{"name": "x", "dtype": "float32", "dims": [4]}],
        "outputs": [{"name": "y", "dtype": "float32", "dims": [4]}],
    }
    repo = tmp_path / "repo"
    build_model_dir(repo / "plus_one", name="plus_one", kind="onnxruntime", model_path=_plus_one(tmp_path / "m.onnx"),
                    io=io, max_batch_size=8)  # fmt: skip
    server = TritonProcess(repo, ["plus_one"], log_path=tmp_path / "triton.log", timeout_s=90).start()
    pid = server.process.pid
    group = _group_members(pid)
    assert len(group) >= 2, "the server and its model's stub"
    regions = python_shm_regions(pid)
    assert regions and all(r.exists() for r in regions), "the python backend maps one region per stub"
    server.kill()
    assert server.process is None
    deadline = time.monotonic() + 10
    while _alive(group) and time.monotonic() < deadline:  # SIGKILL is delivered at once; init reaps the stubs
        time.sleep(0.05)
    assert not _alive(group), "no stub outlives the server"
    assert not [r for r in regions if r.exists()]
    server.kill()  # a second call is a no-op
    server.stop()
