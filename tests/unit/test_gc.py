"""``modelops gc`` on a real (local folder) Triton repository with real file times."""

from __future__ import annotations

import json
import os
import time

import pytest

from modelops.local.cli import main
from modelops.serving.gc import GcError, collect
from modelops.storage import Storage

HOUR = 3600.0


def put(root, rel: str, data: bytes = b"x", age_s: float = 0.0) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "triton"
    put(root, "m--v1-ort_fp32/config.pbtxt", age_s=5 * HOUR)  # complete, old: never touched
    put(root, "m--v1-ort_fp32/1/model.onnx", age_s=5 * HOUR)
    put(root, "m--v1-ort_fp32/manifest.json", b"{}", age_s=5 * HOUR)
    put(root, "m--v2-ort_fp32/config.pbtxt", age_s=3 * HOUR)  # partial, old, unrouted: garbage
    put(root, "m--v2-ort_fp32/publish-claim.json", age_s=3 * HOUR)
    put(root, "m--v3-ort_fp32/config.pbtxt", age_s=3 * HOUR)  # partial, but still being written
    put(root, "m--v3-ort_fp32/1/model.onnx", age_s=60)
    put(root, "m--v4-ort_fp32-0123abcd/config.pbtxt", age_s=3 * HOUR)  # partial, routed (weight 0 share)
    put(root, "m--v5-ort_fp32/config.pbtxt", age_s=3 * HOUR)  # partial, a rollout's stable deployment
    put(root, "n--v1-ort_int8/1/model.onnx", age_s=3 * HOUR)  # partial, in a rollout's history
    put(root, "locks/optimize/m.json", age_s=3 * HOUR)  # not deployments
    put(root, "tests/x.npz", age_s=3 * HOUR)
    routes = {"model": "m", "revision": 4, "routes": [{"deployment": "m--v1-ort_fp32", "weight": 90},
                                                      {"deployment": "m--v4-ort_fp32-0123abcd", "weight": 10}]}
    put(root, "routes/m.json", json.dumps(routes).encode(), age_s=3 * HOUR)
    rollout = {"model": "m", "deployment": "m--v4-ort_fp32-0123abcd", "stable": ["m--v5-ort_fp32"],
               "history": [{"deployment": "n--v1-ort_int8", "stable": []}]}
    put(root, "rollouts/m.json", json.dumps(rollout).encode(), age_s=3 * HOUR)
    return root


def test_dry_run_reports_and_removes_nothing(repo):
    before = sorted(p for p in repo.rglob("*") if p.is_file())
    found = {p.deployment: p.action for p in collect(Storage(), str(repo), grace_s=HOUR, dry_run=True)}
    assert found == {
        "m--v2-ort_fp32": "would remove",
        "m--v3-ort_fp32": "kept: younger than the grace period",
        "m--v4-ort_fp32-0123abcd": "kept: routed",
        "m--v5-ort_fp32": "kept: routed",
        "n--v1-ort_int8": "kept: routed",
    }
    assert sorted(p for p in repo.rglob("*") if p.is_file()) == before


def test_gc_removes_only_old_unrouted_partial_deployments(repo):
    found = collect(Storage(), str(repo), grace_s=HOUR)
    assert [(p.deployment, p.objects) for p in found if p.action == "removed"] == [("m--v2-ort_fp32", 2)]
    assert not list((repo / "m--v2-ort_fp32").rglob("*.*"))
    for kept in ("m--v1-ort_fp32/manifest.json", "m--v3-ort_fp32/1/model.onnx", "m--v4-ort_fp32-0123abcd/config.pbtxt",
                 "m--v5-ort_fp32/config.pbtxt", "n--v1-ort_int8/1/model.onnx", "locks/optimize/m.json", "tests/x.npz"):
        assert (repo / kept).is_file(), kept
    # a shorter grace period takes the young one too; a routed one never goes
    found = {p.deployment: p.action for p in collect(Storage(), str(repo), grace_s=10)}
    assert found["m--v3-ort_fp32"] == "removed" and found["m--v4-ort_fp32-0123abcd"] == "kept: routed"


def test_an_unreadable_routes_file_stops_the_collection(repo):
    (repo / "routes" / "broken.json").write_text("{not json")
    with pytest.raises(GcError, match=r"routes/broken.json is unreadable .*refusing to collect anything"):
        collect(Storage(), str(repo), grace_s=HOUR)
    assert (repo / "m--v2-ort_fp32" / "config.pbtxt").is_file()


def test_cli_dry_run_json_and_removal(repo, capsys):
    assert main(["gc", "--repo", str(repo), "--dry-run", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["dry_run"] and doc["grace_s"] == HOUR
    assert [p["deployment"] for p in doc["partial"] if p["action"] == "would remove"] == ["m--v2-ort_fp32"]
    assert (repo / "m--v2-ort_fp32" / "config.pbtxt").is_file()
    assert main(["gc", "--repo", str(repo), "--grace-s", "7200"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("removed\tm--v2-ort_fp32\t2 object(s)")
    assert "gc: removed 1 partial deployment(s)" in out.err
    assert not (repo / "m--v2-ort_fp32" / "config.pbtxt").exists()
    assert main(["gc", "--repo", str(repo), "--grace-s", "-1"]) == 1
    assert capsys.readouterr().err.strip() == "gc: error: --grace-s must be >= 0, got -1"
