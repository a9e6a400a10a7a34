"""Every step leaves ``<run prefix>/<step>/reproduce.sh`` next to its exact spec; the script re-runs it by hand."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

from modelops.contracts import RunSpec
from modelops.steps._common import render_reproduce_script, run_step, write_reproduce_script
from modelops.storage import Storage

SECRET = "do-not-leak-0123456789"


def _spec(prefix: str) -> dict:
    return {
        "run_id": "r1", "model_name": "digits", "model_version": "3", "run_prefix": prefix, "recipe": "digits_cnn",
        "source_uri": f"{prefix}-source",
    }  # fmt: skip


# the smallest result that keeps validate's contract (modelops.contracts.results.ValidateResult)
VALIDATE_RESULT = {"source_metric": 1.0, "metric_name": "accuracy", "accuracy_tolerance": 0.01, "candidates": {}}


def test_s3_script_names_secrets_and_never_writes_their_values():
    env = {
        "MLFLOW_S3_ENDPOINT_URL": "http://user:pw@seaweed:8333",
        "AWS_ACCESS_KEY_ID": SECRET,
        "AWS_SECRET_ACCESS_KEY": SECRET,
    }
    spec = _spec("s3://artifacts/runs/digits/3/r1")
    script = render_reproduce_script(spec, "benchmark", "s3://artifacts/runs/digits/3/r1/benchmark/spec.json", env)
    assert SECRET not in script and "user:pw" not in script
    assert 'export AWS_ENDPOINT_URL="${AWS_ENDPOINT_URL:-http://seaweed:8333}"' in script
    assert 'export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:?set AWS_SECRET_ACCESS_KEY=' in script
    assert "#   export MODELOPS_PERF_ANALYZER=<path>" in script  # benchmark's optional tools, named only
    assert script.rstrip().endswith(
        "-m modelops.steps.benchmark --spec s3://artifacts/runs/digits/3/r1/benchmark/spec.json"
        ' --result ./result.json "$@"'
    )
    assert not any(word in script for word in ("pip ", "curl", "wget", "git clone"))
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_local_script_has_no_s3_block_and_quotes_paths(tmp_path):
    prefix = tmp_path / "a run"
    script = render_reproduce_script(_spec(str(prefix)), "export", str(prefix / "export" / "spec.json"), {})
    assert "AWS_" not in script
    assert f"--spec '{prefix / 'export' / 'spec.json'}'" in script


def test_run_step_writes_spec_and_script_that_reruns_the_step(tmp_path, monkeypatch):
    """run_step leaves spec.json + reproduce.sh; running the script by hand re-runs the same step."""
    prefix = tmp_path / "run"
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(_spec(str(prefix))))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    calls = []
    rc = run_step(
        "validate",
        lambda spec, storage: calls.append(spec) or dict(VALIDATE_RESULT),
        ["--spec", str(spec_path), "--result", str(tmp_path / "r.json")],
    )
    # the step gets the spec completed by its contract: every block at its defaults
    assert rc == 0 and calls == [RunSpec.parse(_spec(str(prefix))).to_json()]
    assert calls[0]["benchmark"]["concurrency"] == [1, 4] and calls[0]["engine"]["opt_batch"] == 8
    script = prefix / "validate" / "reproduce.sh"
    assert json.loads((prefix / "validate" / "spec.json").read_text()) == calls[0]
    assert os.access(script, os.X_OK) and SECRET not in script.read_text()
    # by hand: the real validate step, with the exact spec; it stops at the missing export result (exit 1)
    work = tmp_path / "by-hand"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | {"MODELOPS_WORKER_PYTHON": sys.executable}
    proc = subprocess.run([str(script)], cwd=work, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"validate: error: step 'export' has no result at {prefix / 'export' / 'result.json'}: run it first"
    )


def test_no_run_prefix_no_script(tmp_path):
    assert write_reproduce_script(Storage(), {"run_id": "x"}, "export") is None


EVIL_MODEL = "evil\n$(touch PWNED1)\ntouch PWNED2 `touch PWNED3`\r'\"; touch PWNED4 #"


def test_injected_names_stay_quoted_values_and_one_line_comments(tmp_path, monkeypatch):
    """A model name (and environment values) with newlines, ``$(...)``, backticks and quotes inject no line."""
    import modelops.settings

    repo = tmp_path / "repo $(touch PWNED5)"
    monkeypatch.setattr(modelops.settings, "REPO_ROOT", repo)
    prefix = tmp_path / "runs" / EVIL_MODEL / "3" / "r1"
    spec = {**_spec(str(prefix)), "model_name": EVIL_MODEL, "run_id": "r1\n$(touch PWNED6)", "source_uri": "s3://src/x"}
    spec_uri = str(prefix / "validate" / "spec.json")
    endpoint = "http://seaweed:8333/$(touch PWNED7)`touch PWNED8`\"'"
    script = render_reproduce_script(spec, "validate", spec_uri, {"AWS_ENDPOINT_URL": endpoint})
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    lines = script.split("\n")  # bash's lines (a carriage return does not end one)
    assert lines[1].startswith("# Re-run") and lines[2].startswith("# --spec") and lines[6] == "set -euo pipefail"
    escaped = "evil\\n$(touch PWNED1)\\ntouch PWNED2 `touch PWNED3`\\r'\"; touch PWNED4 #"
    assert escaped in lines[1] and escaped in lines[2] and escaped in lines[5] and "run r1\\n$(touch PWNED6)" in lines[1]
    # outside the comments every value is one shell word, quoted: no injected command word
    words = shlex.split("\n".join(line for line in lines if not line.startswith("#")))
    assert "touch" not in words and "`touch" not in words
    assert spec_uri in words and f"AWS_ENDPOINT_URL={endpoint}" in words and f"MODELOPS_REPO={repo}" in words
    assert shlex.quote(spec_uri) in script and shlex.quote(endpoint) in script and shlex.quote(str(repo)) in script

    # run it: the step gets exactly the values, and nothing in them ran
    fake_python = tmp_path / "fake-python"
    fake_python.write_text(f"#!{sys.executable}\nimport json, os, sys\njson.dump({{'argv': sys.argv[1:], "
                           "'endpoint': os.environ['AWS_ENDPOINT_URL'], 'path': os.environ['PYTHONPATH']}, "
                           "open(os.environ['OUT_JSON'], 'w'))\n")  # fmt: skip
    fake_python.chmod(0o755)
    script_path = tmp_path / "reproduce.sh"
    script_path.write_text(script)
    work = tmp_path / "work"
    work.mkdir()
    env = {"PATH": os.environ["PATH"], "MODELOPS_WORKER_PYTHON": str(fake_python), "OUT_JSON": str(tmp_path / "o.json"),
           "AWS_ACCESS_KEY_ID": "ak", "AWS_SECRET_ACCESS_KEY": "sk"}  # fmt: skip
    proc = subprocess.run(["bash", str(script_path)], cwd=work, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads((tmp_path / "o.json").read_text())
    assert seen == {"argv": ["-m", "modelops.steps.validate", "--spec", spec_uri, "--result", "./result.json"],
                    "endpoint": endpoint, "path": str(repo)}  # fmt: skip
    assert not list(tmp_path.rglob("PWNED*"))
