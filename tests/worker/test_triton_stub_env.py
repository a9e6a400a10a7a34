"""Triton's python stubs run in the worker environment even when the caller's stdin is a socket.

An Airflow 3 task's stdin is a socket to its supervisor. The python backend starts each stub with ``bash -c``,
and a non-interactive bash whose stdin is a socket (SHLVL < 2) sources ``~/.bashrc``: on a machine whose
``.bashrc`` runs ``pyenv init``, the stub then found pyenv's interpreter first on PATH and the baseline model
failed with "No module named 'mlflow'". Real tritonserver; the caller is a subprocess whose fd 0 is one end of a
socketpair, with a HOME whose ``.bashrc`` leaves a marker.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from modelops.settings import Settings

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not Settings.from_env().tritonserver_bin.exists(), reason="tritonserver not installed")

MODEL = """
import os, sys
class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime  # only in the worker environment
        with open(os.environ["STUB_REPORT"], "w") as f:
            f.write(sys.executable + "\\n" + onnxruntime.__file__)
    def execute(self, requests):
        return []
"""
CONFIG = """
backend: "python"
max_batch_size: 0
input [{ name: "x" data_type: TYPE_FP32 dims: [1] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [1] }]
instance_group [{ kind: KIND_CPU count: 1 }]
"""
CALLER = """
import sys
from pathlib import Path
from modelops.serving.triton.local_server import TritonProcess
repo, log = Path(sys.argv[1]), Path(sys.argv[2])
with TritonProcess(repo, ["probe"], log_path=log):
    print("loaded")
"""


def test_stub_ignores_the_users_bashrc_when_stdin_is_a_socket(tmp_path):
    model = tmp_path / "repo" / "probe"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text(MODEL)
    (model / "config.pbtxt").write_text(CONFIG)
    home = tmp_path / "home"
    home.mkdir()
    marker = tmp_path / "bashrc-ran"
    (home / ".bashrc").write_text(textwrap.dedent(f"""\
        touch {marker}
        export PATH=/nonexistent-python-first:$PATH
    """))
    ours, theirs = socket.socketpair()
    env = {**os.environ, "HOME": str(home), "SHLVL": "0", "PYTHONPATH": str(REPO),
           "STUB_REPORT": str(tmp_path / "stub.txt")}
    try:
        proc = subprocess.run([sys.executable, "-c", CALLER, str(tmp_path / "repo"), str(tmp_path / "triton.log")],
                              check=False, stdin=theirs.fileno(), env=env, capture_output=True, text=True, timeout=180)
    finally:
        ours.close()
        theirs.close()
    log = (tmp_path / "triton.log").read_text(errors="replace") if (tmp_path / "triton.log").exists() else ""
    assert proc.returncode == 0 and "loaded" in proc.stdout, (proc.stderr[-2000:], log[-2000:])
    assert not marker.exists(), "the stub's bash sourced ~/.bashrc"
    _executable, ort = (tmp_path / "stub.txt").read_text().splitlines()
    assert Path(ort).is_relative_to(Path(Settings.from_env().worker_python).parent.parent), ort
