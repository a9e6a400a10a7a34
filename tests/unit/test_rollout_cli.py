"""``modelops rollout status``: routes and the rollout state read from the Triton bucket, text and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelops.local import rollout_cli
from modelops.local.cli import build_parser
from modelops.storage import Storage


class _DirStorage(Storage):
    """``s3://<bucket>/<key>`` mapped onto ``<root>/<bucket>/<key>``; the ETag is the file's mtime."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def _path(self, uri: str) -> Path:
        return self.root / uri.removeprefix("s3://")

    def read_with_etag(self, uri: str) -> tuple[bytes, str | None]:
        path = self._path(uri)
        return (path.read_bytes(), str(path.stat().st_mtime_ns)) if path.exists() else (b"", None)


def _write(root: Path, key: str, doc: dict) -> None:
    path = root / "triton" / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


ROUTES = {"model": "m", "revision": 7, "updated_at": "2026-01-01T00:01:00+00:00", "updated_by": "rollout__m--v2-a",
          "routes": [{"deployment": "m--v1-a", "weight": 50}, {"deployment": "m--v2-a", "weight": 50}]}
STATE = {"model": "m", "deployment": "m--v2-a", "stable": ["m--v1-a"], "steps": [10, 50, 100], "step_index": 1,
         "mode": "canary", "status": "rolled_back", "run_id": "rollout__m--v2-a",
         "started_at": "2026-01-01T00:00:00+00:00", "updated_at": "2026-01-01T00:02:00+00:00",
         "thresholds": {"min_success_rate": 0.99}, "interval_s": 60.0, "routes_revision": 7,
         "analysis": [
             {"step_index": 0, "weight": 10, "at": "t0", "passed": True, "reasons": [],
              "canary": {"deployment": "m--v2-a", "requests": 55.0, "success_rate": 1.0, "p99_ms": 11.5},
              "stable": {"deployment": "m--v1-a", "requests": 500.0, "success_rate": 1.0, "p99_ms": 10.0}},
             {"step_index": 1, "weight": 50, "at": "t1", "passed": False,
              "reasons": ["canary success rate 0.8000 < 0.99"],
              "canary": {"deployment": "m--v2-a", "requests": 120.0, "success_rate": 0.8, "p99_ms": None},
              "stable": None}],
         "error": "step 2/3 (50%): canary success rate 0.8000 < 0.99",
         "history": [{"run_id": "old", "status": "promoted"}]}


def test_status_text_names_routes_step_numbers_and_error(tmp_path, capsys):
    _write(tmp_path, "routes/m.json", ROUTES)
    _write(tmp_path, "rollouts/m.json", STATE)
    assert rollout_cli.run(_DirStorage(tmp_path), "triton", "m", as_json=False) == 0
    out = capsys.readouterr().out
    assert "routes: revision 7: m--v1-a 50%, m--v2-a 50% (by rollout__m--v2-a" in out
    assert "status rolled_back, step 2/3 at 50%" in out
    assert "step 1 (10%) passed: canary 55 req, success 1.0000, p99 11.5 ms; stable p99 10.0 ms" in out
    assert "step 2 (50%) FAILED: canary 120 req, success 0.8000, p99 - ms; stable p99 - ms; canary success" in out
    assert "error: step 2/3 (50%)" in out


def test_status_json(tmp_path, capsys):
    _write(tmp_path, "routes/m.json", ROUTES)
    _write(tmp_path, "rollouts/m.json", STATE)
    assert rollout_cli.run(_DirStorage(tmp_path), "triton", "m", as_json=True) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["routes"] == {"revision": 7, "weights": {"m--v1-a": 50, "m--v2-a": 50},
                             "updated_at": ROUTES["updated_at"], "updated_by": "rollout__m--v2-a"}
    rollout = doc["rollout"]
    assert (rollout["step"], rollout["step_count"], rollout["weight"]) == (2, 3, 50)
    assert rollout["analysis"][1]["passed"] is False and rollout["error"].startswith("step 2/3")
    assert rollout["history"] == [{"run_id": "old", "status": "promoted"}]


def test_routes_without_rollout(tmp_path, capsys):
    _write(tmp_path, "routes/m.json", ROUTES)
    assert rollout_cli.run(_DirStorage(tmp_path), "triton", "m", as_json=False) == 0
    assert capsys.readouterr().out.strip().endswith("rollout: none")


def test_unknown_model_is_one_line_and_exit_1(tmp_path, capsys):
    assert rollout_cli.run(_DirStorage(tmp_path), "triton", "nope", as_json=True) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "error: no routes and no rollout for model 'nope' in s3://triton\n"


def test_registered_in_the_modelops_cli():
    args = build_parser().parse_args(["rollout", "status", "digits_cnn", "--json"])
    assert (args.model, args.json, args.func) == ("digits_cnn", True, rollout_cli._cmd_status)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["rollout", "status"])


def test_repo_reads_another_deployments_repository_without_the_stack(monkeypatch, tmp_path):
    from modelops.local.stack.state import StackError

    monkeypatch.setenv("MODELOPS_STACK_DIR", str(tmp_path / "no-stack"))  # no stack here: --repo must not need one
    seen = {}
    monkeypatch.setattr(rollout_cli, "run", lambda storage, bucket, model, as_json: seen.update(
        bucket=bucket, model=model, json=as_json) or 0)  # fmt: skip
    args = build_parser().parse_args(["rollout", "status", "chat", "--repo", "s3://prod-triton/", "--json"])
    assert args.func(args) == 0 and seen == {"bucket": "prod-triton", "model": "chat", "json": True}
    bad = build_parser().parse_args(["rollout", "status", "chat", "--repo", "/srv/triton"])
    with pytest.raises(StackError, match=r"--repo must be s3://<bucket>"):
        bad.func(bad)
