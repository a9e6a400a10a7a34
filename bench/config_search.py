"""Our configuration search vs Triton Model Analyzer 1.58's brute sweep over the same space, same run.

Run with the worker environment (Model Analyzer in its own venv, ``.venv-ma``: ``make model-analyzer``)::

    flock /tmp/modelops-bench.lock .venv-worker/bin/python bench/config_search.py [--models digits,minilm]

Per model (digits_cnn ``ort_fp32``, MiniLM ``ort_int8_dynamic``) the candidate is built with the real step CLIs
(export -> optimize), then:

1. **ours**: a Triton serving the default configuration, measured in full, then :func:`search_configs` (what the
   benchmark step runs: coordinate descent, reloads through the repository API, short perf_analyzer windows, the
   winner measured again in full); wall time from Triton's start to the end.
2. **Model Analyzer**: ``model-analyzer profile`` in remote mode (``cpu_only``, DCGM off) against a tritonserver
   with explicit model control, ``run_config_search_disable`` + lists = a brute sweep of the same space at the same
   concurrency levels; wall time from that server's start to the end. Its best = the highest throughput whose p99
   meets the SLO among what it measured (its checkpoint; also after ``--ma-timeout-s`` interrupts it).
3. **same run check**: both winners served in one Triton, alternating rounds, full perf settings.

Writes ``bench/results/config_search.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from results_io import host_info, write_results

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from modelops.evaluation.config_search import SearchSpace, ServingConfig
from modelops.evaluation.perf import PerfSettings, run_perf_analyzer
from modelops.evaluation.selection import best_point
from modelops.evaluation.triton_bench import Target, TritonMeasure, perf_shapes, search_configs
from modelops.serving.triton.config_proto import parse
from modelops.serving.triton.local_server import TritonProcess, free_port, triton_env
from modelops.serving.triton.model_dir import build_model_dir, render_config
from modelops.settings import Settings
from modelops.steps.benchmark import json_ready

MA = REPO / ".venv-ma" / "bin" / "model-analyzer"
MODELS = {"digits": ("ort_fp32", 64), "minilm": ("ort_int8_dynamic", 64)}
SLO_MS = 100.0
PERF = {"concurrency": [1, 4], "measurement_interval_ms": 1000, "max_trials": 6, "threads": 2}
# the space both search: instances x threads on 2 cores and the queue delay (12 points)
SPACE = SearchSpace(placements=((1, 1), (1, 2), (2, 1), (2, 2)), max_queue_delay_us=(0, 500, 2000),
                    preferred_batch_sizes=((),), max_batch_size=(64,))  # fmt: skip


def build_candidate(key: str, work: Path) -> dict[str, Any]:
    """Save the demo model, run export and optimize (the step CLIs); the candidate's model dir inputs."""
    from modelops.recipes import select_recipe

    variant, _ = MODELS[key]
    model_dir = work / "model"
    if (model_dir / "MLmodel").exists():
        pass
    elif key == "digits":
        from model_recipes.demo_models import save_local

        save_local("digits", str(model_dir))
    else:
        from model_recipes.text_embedding import save_local

        save_local(str(model_dir))
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    spec = {"model_name": key, "model_version": "1", "model_uri": f"file://{model_dir}", "source_uri": str(model_dir),
            "flavor": min(mlmodel["flavors"]), "recipe": select_recipe(mlmodel), "mlmodel": mlmodel,
            "variants": [variant], "run_id": "bench", "run_prefix": str(work / "run")}  # fmt: skip
    (work / "spec.json").write_text(json.dumps(spec))
    for step in ("export", "optimize"):
        if (work / f"{step}.json").exists():  # a --workdir kept from an earlier run
            continue
        subprocess.run([sys.executable, "-m", f"modelops.steps.{step}", "--spec", str(work / "spec.json"), "--result",
                        str(work / f"{step}.json")], check=True, cwd=work, capture_output=True)  # fmt: skip
    export, optimize = (json.loads((work / f"{s}.json").read_text()) for s in ("export", "optimize"))
    text = bool(export.get("serving_io"))
    io = export.get("serving_io") or export["io"]
    with np.load(export["outputs"]["serving_samples" if text else "samples"]) as npz:  # what the step warms up with
        samples = {t["name"]: json_ready(npz[t["name"]]) for t in io["inputs"]}
    return {"variant": variant, "samples": samples, "onnx": Path(optimize["candidates"][variant]["onnx"]),
            "kind": "onnxruntime_text" if text else "onnxruntime", "io": io,
            "assets": Path(export["outputs"]["serving_assets"]) if text else None,
            "input_data": export["outputs"]["perf_input_data"] if text else "random"}  # fmt: skip


def model_repo(cand: dict[str, Any], repo: Path, name: str, config: ServingConfig) -> Path:
    build_model_dir(repo / name, name=name, kind=cand["kind"], model_path=cand["onnx"], io=cand["io"],
                    max_batch_size=config.max_batch_size, instance_count=config.instance_count, threads=config.threads,
                    assets=cand["assets"])  # fmt: skip
    return repo


def best_of(points: list[dict[str, Any]]) -> dict[str, Any] | None:
    return best_point(points, SLO_MS)


def run_ours(cand: dict[str, Any], work: Path, perf: PerfSettings, name: str) -> dict[str, Any]:
    """The benchmark step's flow: default measured in full, then the search (same code), in one Triton."""
    default = ServingConfig(threads=perf.threads, max_batch_size=64)
    repo = model_repo(cand, work / "repo", name, default)
    t0 = time.monotonic()
    with TritonProcess(repo, [name], log_path=work / "triton.log") as triton:
        url = triton.http_url
        points = run_perf_analyzer(model=name, url=url, settings=perf, csv_path=work / "perf.csv",
                                   shapes=perf_shapes(cand["io"]), log_path=work / "perf_analyzer.log")  # fmt: skip
        out = {"points": points, "config": default.as_dict(), "configs": [{"config": default.as_dict(),
               "points": points}], "log_paths": [], "csv_path": work / "perf.csv", "notes": []}  # fmt: skip
        target = Target(cand["variant"], cand["kind"], cand["onnx"], assets=cand["assets"])
        search_configs(out, triton, target, name=name, model_dir=repo / name, io=cand["io"], perf=perf, url=url,
                       tools=None, work=work, budget_s=1800.0, slo_ms=SLO_MS, space=SPACE,
                       warm_inputs=cand["samples"])  # fmt: skip
    seconds = time.monotonic() - t0
    best = best_of(out["points"])
    return {"seconds": round(seconds, 1), "best_config": out["config"], "best_key": ServingConfig.from_dict(
            out["config"]).key(), "best": best, "measured": out["config_search"]["measured"],
            "reloads": out["config_search"]["reloads"], "stopped": out["config_search"]["stopped"],
            "search_points": [{k: t[k] for k in ("key", "throughput", "p99_ms", "seconds", "dominated_by", "error")}
                              for t in out["config_search"]["points"]], "notes": out["notes"]}  # fmt: skip


def ma_config(cand: dict[str, Any], name: str, repo: Path, work: Path, ports: tuple[int, int, int],
              perf: PerfSettings, tools: Settings) -> Path:  # fmt: skip
    http, grpc, metrics = ports
    flags: dict[str, Any] = {}
    if cand["input_data"] != "random":
        flags["input-data"] = cand["input_data"]
    shapes = perf_shapes(cand["io"]) or {}
    if shapes:
        flags["shape"] = [f"{k}:{','.join(map(str, v))}" for k, v in shapes.items()]
    cfg = {
        "model_repository": str(repo), "triton_launch_mode": "remote", "client_protocol": "http",
        "triton_http_endpoint": f"127.0.0.1:{http}", "triton_grpc_endpoint": f"127.0.0.1:{grpc}",
        "triton_metrics_url": f"http://127.0.0.1:{metrics}/metrics", "perf_analyzer_path": str(tools.perf_analyzer_bin),
        "dcgm_disable": True, "run_config_search_disable": True, "override_output_model_repository": True,
        "output_model_repository_path": str(work / "ma_out"), "export_path": str(work / "ma_export"),
        "checkpoint_directory": str(work / "ma_ckpt"), "perf_output": False, "collect_cpu_metrics": False,
        "profile_models": {name: {
            "cpu_only": True,
            "parameters": {"concurrency": list(perf.concurrency), "batch_sizes": [1]},
            "model_config_parameters": {
                "max_batch_size": [64],
                "dynamic_batching": {"max_queue_delay_microseconds": list(SPACE.max_queue_delay_us)},
                "instance_group": [{"kind": "KIND_CPU", "count": sorted({i for i, _ in SPACE.placements})}],
                "parameters": {"intra_op_threads": {"string_value": [str(t) for t in sorted({t for _, t in
                                                                                          SPACE.placements})]}},
            },
            **({"perf_analyzer_flags": flags} if flags else {}),
        }},
    }  # fmt: skip
    path = work / "ma.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_ma(cand: dict[str, Any], work: Path, perf: PerfSettings, name: str, timeout_s: float) -> dict[str, Any]:
    """Model Analyzer's brute sweep in remote mode against our own explicit-mode tritonserver; interrupted after
    ``timeout_s`` (then its best is among the configurations it measured, ``finished: false``)."""
    tools = Settings.from_env()
    repo = model_repo(cand, work / "repo", name, ServingConfig(threads=perf.threads, max_batch_size=64))
    ports = (free_port(), free_port(), free_port())
    env = triton_env(tools)
    cmd = [str(tools.tritonserver_bin), f"--model-repository={repo}", "--model-control-mode=explicit",
           "--disable-auto-complete-config", f"--backend-directory={tools.triton_backends_dir}", "--http-address=127.0.0.1", f"--http-port={ports[0]}",
           "--grpc-address=127.0.0.1", f"--grpc-port={ports[1]}", "--metrics-address=127.0.0.1",
           f"--metrics-port={ports[2]}", "--log-verbose=0"]  # fmt: skip
    config = ma_config(cand, name, repo, work, ports, perf, tools)
    ma_env = dict(os.environ)
    ma_env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (tools.tool_library_path, ma_env.get("LD_LIBRARY_PATH"))
                                                if p)  # fmt: skip
    t0 = time.monotonic()
    with (work / "triton_ma.log").open("wb") as logf:
        server = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    finished = True
    try:
        time.sleep(2)
        with (work / "ma.log").open("wb") as malog:  # cwd: perf_analyzer's <model>-results.csv lands there
            ma = subprocess.Popen([str(MA), "profile", "-f", str(config)], env=ma_env, stdout=malog,
                                  stderr=subprocess.STDOUT, cwd=work, start_new_session=True)  # fmt: skip
            try:
                rc = ma.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:  # interrupted: Model Analyzer checkpoints what it measured
                finished, rc = False, None
                os.killpg(ma.pid, signal.SIGINT)
                try:
                    ma.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(ma.pid, signal.SIGKILL)
                    ma.wait()
        seconds = time.monotonic() - t0
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
    configs = ma_measurements(work, name)
    out: dict[str, Any] = {"seconds": round(seconds, 1), "finished": finished, "exit_code": rc,
                           "measured": len(configs)}  # fmt: skip
    if not configs:
        tail = (work / "ma.log").read_text(errors="replace").strip().splitlines()[-5:]
        return {**out, "error": f"model-analyzer measured nothing (exit {rc}): {' | '.join(tail)}"}
    ranked = [(p, k) for k, c in configs.items() if (p := best_of(c["points"])) is not None]
    point, key = max(ranked, key=lambda pk: pk[0]["throughput"]) if ranked else (None, None)
    return {**out, "best_key": key, "best": point, "best_config": configs[key]["config"] if key else None,
            "configs": {k: c["points"] for k, c in configs.items()}}  # fmt: skip


def ma_measurements(work: Path, name: str) -> dict[str, dict[str, Any]]:
    """Every (configuration, concurrency) Model Analyzer measured, from its checkpoint (also after an interrupt)."""
    ckpts = sorted((work / "ma_ckpt").glob("*.ckpt"))
    if not ckpts:
        return {}
    results = json.loads(ckpts[-1].read_text())["ResultManager.results"]["_results"].get(name, {})
    configs: dict[str, dict[str, Any]] = {}
    for variant, runs in results.items():
        cfg = parse((work / "ma_out" / variant / "config.pbtxt").read_text())
        sc = ServingConfig(instance_count=cfg.instance_group[0].count,
                           threads=int(cfg.parameters["intra_op_threads"].string_value or 0),
                           max_queue_delay_us=cfg.dynamic_batching.max_queue_delay_microseconds,
                           max_batch_size=cfg.max_batch_size)  # fmt: skip
        entry = configs.setdefault(sc.key(), {"config": sc.as_dict(), "points": [], "variants": []})
        entry["variants"].append(variant)
        for measurement in (runs[1] if len(runs) > 1 else {}).values():
            m = measurement["_model_config_measurements"][0]
            data = m["_non_gpu_data_from_tag"]
            entry["points"].append({"concurrency": int(m["_model_specific_pa_params"]["concurrency-range"]),
                                    "throughput": float(data["perf_throughput"][1]["_value"]),
                                    "p99_ms": float(data["perf_latency_p99"][1]["_value"])})  # fmt: skip
    return {k: c for k, c in configs.items() if c["points"]}


def same_run(cand: dict[str, Any], work: Path, perf: PerfSettings, name: str, configs: dict[str, dict],
             rounds: int = 2) -> dict[str, Any]:  # fmt: skip
    """Both winners in one Triton, alternating rounds with the full perf settings: best throughput under the SLO."""
    start = ServingConfig.from_dict(next(iter(configs.values())))
    repo = model_repo(cand, work / "repo", name, start)

    def render(c: ServingConfig) -> str:
        return render_config(name=name, kind=cand["kind"], io=cand["io"], max_batch_size=c.max_batch_size,
                             instance_count=c.instance_count, threads=c.threads,
                             preferred_batch_sizes=list(c.preferred_batch_sizes),
                             max_queue_delay_us=c.max_queue_delay_us)  # fmt: skip

    out: dict[str, list[float | None]] = {who: [] for who in configs}
    with TritonProcess(repo, [name], log_path=work / "triton.log") as triton:
        measure = TritonMeasure(triton, name=name, model_dir=repo / name, render=render, work=work,
                                run_perf=lambda c, p: run_perf_analyzer(model=name, url=triton.http_url, settings=perf,
                                                                        csv_path=p, shapes=perf_shapes(cand["io"])))
        for _ in range(rounds):
            for who, cfg in configs.items():
                best = best_of(measure(ServingConfig.from_dict(cfg)))
                out[who].append(round(best["throughput"], 1) if best else None)
    return out


def run_model(key: str, work: Path, skip_ma: bool, ma_timeout_s: float) -> dict[str, Any]:
    perf = PerfSettings.from_spec(PERF)
    t0 = time.monotonic()
    cand = build_candidate(key, work / "build")
    if cand["input_data"] != "random":
        perf = perf.model_copy(update={"input_data": cand["input_data"]})
    name = key
    res: dict[str, Any] = {"variant": cand["variant"], "space_size": SPACE.size, "build_s": round(time.monotonic() - t0)}
    load = os.getloadavg()
    res["ours"] = run_ours(cand, work / "ours", perf, name)
    print(f"{key} ours: {json.dumps(res['ours'])[:600]}", flush=True)
    if not skip_ma:
        res["model_analyzer"] = run_ma(cand, work / "ma", perf, name, ma_timeout_s)
        print(f"{key} MA: {json.dumps(res['model_analyzer'])[:600]}", flush=True)
    winners = {"ours": res["ours"]["best_config"]}
    if (res.get("model_analyzer") or {}).get("best_config"):
        winners["model_analyzer"] = res["model_analyzer"]["best_config"]
    res["same_run_throughput"] = same_run(cand, work / "check", perf, name, winners)
    res["loadavg_before_after"] = [round(x, 2) for x in (*load, *os.getloadavg())]
    return res


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="digits,minilm")
    parser.add_argument("--skip-ma", action="store_true", help="only our search (no Model Analyzer)")
    parser.add_argument("--workdir")
    parser.add_argument("--ma-timeout-s", type=float, default=3600.0, help="interrupt Model Analyzer after this")
    args = parser.parse_args()
    if not args.skip_ma and not MA.exists():
        raise SystemExit(f"{MA} missing: make model-analyzer (pip install 'triton-model-analyzer==1.58.*' in .venv-ma)")
    results: dict[str, Any] = {"host": host_info(), "slo_ms": SLO_MS, "perf": PERF, "space": {"placements": SPACE.placements,
                               "max_queue_delay_us": SPACE.max_queue_delay_us, "size": SPACE.size}, "models": {}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="modelops-config-search-") as tmp:
        work = Path(args.workdir).resolve() if args.workdir else Path(tmp)
        for key in [m.strip() for m in args.models.split(",") if m.strip()]:
            results["models"][key] = run_model(key, work / key, args.skip_ma, args.ma_timeout_s)
    print(f"wrote {write_results('config_search', results)}")


if __name__ == "__main__":
    main()
