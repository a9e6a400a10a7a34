"""The shared command-line frame of every step: spec in, result out, exit codes, one-line errors."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelops.steps import EXIT_SKIPPED
from modelops.storage import Storage, join

log = logging.getLogger("modelops.steps")


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` — the one-line reason steps report."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


class StepSkipped(Exception):
    """The step does not apply here (e.g. TensorRT without a GPU): exit 99."""


class StepError(Exception):
    """A failure with a message meant for users: printed as the one-line reason."""


def result_uri(spec: dict[str, Any], step: str) -> str:
    return join(spec["run_prefix"], step, "result.json")


def step_prefix(spec: dict[str, Any], step: str) -> str:
    return join(spec["run_prefix"], step)


def variant_prefix(spec: dict[str, Any], variant: str) -> str:
    """Where a variant's artifacts live: ``runs/<model>/<version>/<run id>/<variant>/`` (ARCHITECTURE.md)."""
    return join(spec["run_prefix"], variant)


def load_result(storage: Storage, spec: dict[str, Any], step: str) -> dict[str, Any]:
    """The result an earlier step wrote; a clear error if it never ran."""
    uri = result_uri(spec, step)
    try:
        return storage.read_json(uri)
    except FileNotFoundError:
        raise StepError(f"step {step!r} has no result at {uri}: run it first") from None


def write_spec(storage: Storage, spec: dict[str, Any], step: str) -> None:
    """Keep the exact spec a step ran with next to its outputs (``<run prefix>/<step>/spec.json``)."""
    if spec.get("run_prefix"):
        storage.write_json(join(step_prefix(spec, step), "spec.json"), spec)


def workdir(step: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"modelops-{step}-"))


def run_step(step: str, fn: Callable[[dict[str, Any], Storage], dict[str, Any]], argv: list[str] | None = None) -> int:
    """Parse ``--spec/--result``, call ``fn(spec, storage)``, write the result, map outcomes to exit codes."""
    parser = argparse.ArgumentParser(prog=f"python -m modelops.steps.{step}")
    parser.add_argument("--spec", required=True, help="run spec: JSON file or s3:// URI")
    parser.add_argument("--result", required=True, help="where to write the result JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {step} %(levelname)s %(message)s", stream=sys.stdout)
    storage = Storage()
    started = time.time()
    try:
        spec = storage.read_json(args.spec)
        write_spec(storage, spec, step)
        result = fn(spec, storage)
        result.setdefault("status", "done")
    except StepSkipped as exc:
        result = {"status": "skipped", "reason": str(exc)}
        _write(storage, args.result, spec if "spec" in locals() else None, step, result)
        print(f"{step}: skipped: {exc}", file=sys.stderr)
        return EXIT_SKIPPED
    except StepError as exc:
        print(f"{step}: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        log.exception("step %s failed", step)
        print(f"{step}: error: {type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        return 1
    result["step"] = step
    result["seconds"] = round(time.time() - started, 3)
    _write(storage, args.result, spec, step, result)
    log.info("%s done in %.1f s", step, result["seconds"])
    return 0


def _write(storage: Storage, path: str, spec: dict[str, Any] | None, step: str, result: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2, sort_keys=True))
    if spec is not None and spec.get("run_prefix"):
        storage.write_json(result_uri(spec, step), result)
