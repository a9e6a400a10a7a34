"""The shared command-line frame of every step: spec in, result out, exit codes, one-line errors."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from modelops.contracts import ResultError, RunSpec, SpecError, Status, check_result
from modelops.steps import EXIT_SKIPPED
from modelops.storage import Storage, StorageError, is_s3, join

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


def download_source(storage: Storage, source_uri: str, dest: Path) -> Path:
    """The registered model's directory (``source_uri``) at ``dest``; a one-line :class:`StepError` if unreadable."""
    try:
        return storage.download_dir(source_uri, dest)
    except Exception as exc:
        raise StepError(f"cannot download model artifact from {source_uri}: {first_line(exc)}") from exc


def upload_measurement(storage: Storage, spec: dict[str, Any], variant: str, res: dict[str, Any]) -> dict[str, Any]:
    """A benchmark measurement's local logs and CSV uploaded to ``<run prefix>/<variant>/``; ``res`` with their URIs
    (``log_paths``/``csv_path`` replaced by ``csv`` and ``log``)."""
    vprefix = variant_prefix(spec, variant)
    for path in res.pop("log_paths"):
        if path.exists():
            storage.upload_file(path, join(vprefix, path.name))
    csv_local = res.pop("csv_path")
    res["csv"] = storage.upload_file(csv_local, join(vprefix, "perf.csv")) if csv_local else None
    res["log"] = join(vprefix, "triton.log")
    return res


def load_result(storage: Storage, spec: dict[str, Any], step: str) -> dict[str, Any]:
    """The result an earlier step wrote, checked against its contract; a clear error if it never ran."""
    uri = result_uri(spec, step)
    try:
        result = storage.read_json(uri)
    except FileNotFoundError:
        raise StepError(f"step {step!r} has no result at {uri}: run it first") from None
    try:
        return check_result(step, result)
    except ResultError as exc:
        raise StepError(f"{exc} ({uri})") from None


def write_spec(storage: Storage, spec: dict[str, Any], step: str) -> None:
    """Keep the exact spec a step ran with next to its outputs (``<run prefix>/<step>/spec.json``)."""
    if spec.get("run_prefix"):
        storage.write_json(spec_copy_uri(spec, step), spec)


def spec_copy_uri(spec: dict[str, Any], step: str) -> str:
    """Where :func:`write_spec` keeps the exact spec of ``step``."""
    return join(step_prefix(spec, step), "spec.json")


# Non-secret settings a re-run needs: name -> (variables to take the write-time value from, fallback).
_S3_SETTINGS = {
    "AWS_ENDPOINT_URL": (("AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"), ""),
    "AWS_DEFAULT_REGION": (("AWS_DEFAULT_REGION",), "us-east-1"),
}
# Secrets: only their names are ever written, as required placeholders.
_S3_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# Optional per-step tool locations (see modelops.settings); listed as comments for the user to set.
_STEP_TOOLS = {
    "benchmark": (
        "MODELOPS_TRITONSERVER",
        "MODELOPS_TRITON_BACKENDS",
        "MODELOPS_PERF_ANALYZER",
        "MODELOPS_TOOLS_LD_LIBRARY_PATH",
    ),
}


def _public_value(value: str) -> str:
    """``value`` without URL credentials (``http://user:pass@host`` -> ``http://host``)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(value)
    if parts.scheme and "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    return value


def _comment(value: object) -> str:
    """``value`` for a ``#`` comment: control and line-separator characters escaped, so the comment stays one line."""
    return "".join(
        ch.encode("unicode_escape").decode() if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch
        for ch in str(value)
    )


def _export_default(name: str, value: str, *, export: bool = True) -> list[str]:
    """Lines setting ``name`` to ``value`` unless the caller's environment sets it; ``value`` is shell-quoted."""
    keyword = "export " if export else ""
    if shlex.quote(value) == value:  # nothing a shell would read specially: the readable one-liner
        return [f'{keyword}{name}="${{{name}:-{value}}}"']
    return [f'[ -n "${{{name}:-}}" ] || {name}={shlex.quote(value)}', *([f"export {name}"] if export else [])]


def render_reproduce_script(
    spec: dict[str, Any], step: str, spec_uri: str, environ: dict[str, str] | None = None
) -> str:
    """A bash script that re-runs ``step`` by hand with the exact spec at ``spec_uri``.

    It sets the environment the step reads: non-secret settings default to their values at write time
    (credentials stripped from URLs), secrets are required placeholders (names only, never values). It
    installs and downloads nothing itself; the step reads what the spec's URIs point at, as it did.

    Args:
        spec: the run spec (for the header and to tell whether S3 settings are needed).
        step: a heavy step name (``modelops.steps.<step>``).
        spec_uri: the spec the script passes to ``--spec`` (normally the copy next to the outputs).
        environ: the environment to take non-secret defaults from (``os.environ`` when None).
    """
    from modelops.settings import REPO_ROOT

    env = os.environ if environ is None else environ
    q, c = shlex.quote, _comment
    lines = [
        "#!/usr/bin/env bash",
        f"# Re-run the {c(step)} step of modelops run {c(spec.get('run_id') or '?')} by hand"
        + f" (model {c(spec.get('model_name') or '?')} version {c(spec.get('model_version') or '?')}).",
        f"# --spec is the exact spec the step ran with: {c(spec_uri)}",
        "# Nothing is installed or downloaded implicitly: the step reads only the URIs in that spec.",
        "# Note: the step writes its result and outputs under the run prefix again (steps are idempotent);",
        f"# the local copy of the result goes to ./result.json. Run prefix: {c(spec.get('run_prefix') or '?')}",
        "set -euo pipefail",
        "",
    ]
    if any(is_s3(str(v or "")) for v in (spec_uri, spec.get("run_prefix"), spec.get("source_uri"))):
        lines.append("# Object storage (boto3). Secrets are never written here: export them before running.")
        for name, (sources, fallback) in _S3_SETTINGS.items():
            value = _public_value(next((env[k] for k in sources if env.get(k)), fallback))
            lines += _export_default(name, value) if value else [f'export {name}="${{{name}:?set {name}=<url>}}"']
        for name in _S3_SECRETS:
            lines.append(f'export {name}="${{{name}:?set {name}=<{name.lower()}>}}"')
        lines.append("")
    tools = _STEP_TOOLS.get(step, ())
    if tools:
        lines.append("# Optional tool locations (defaults: the repository's .tools directory):")
        lines.extend(f"#   export {name}=<path>" for name in tools)
        lines.append("")
    lines += [
        "# A checkout of the repository and its worker environment (`make worker`).",
        *_export_default("MODELOPS_REPO", str(REPO_ROOT), export=False),
        'PYTHON="${MODELOPS_WORKER_PYTHON:-$MODELOPS_REPO/.venv-worker/bin/python}"',
        'export PYTHONPATH="$MODELOPS_REPO${PYTHONPATH:+:$PYTHONPATH}"',
        "",
        f'exec "$PYTHON" -m {q(f"modelops.steps.{step}")} --spec {q(spec_uri)} --result ./result.json "$@"',
        "",
    ]
    return "\n".join(lines)


def write_reproduce_script(
    storage: Storage, spec: dict[str, Any], step: str, spec_uri: str | None = None
) -> str | None:
    """Write ``<run prefix>/<step>/reproduce.sh`` (see :func:`render_reproduce_script`); returns its URI.

    ``spec_uri`` defaults to the copy :func:`write_spec` keeps next to the outputs. Nothing is written
    without a run prefix.
    """
    if not spec.get("run_prefix"):
        return None
    uri = join(step_prefix(spec, step), "reproduce.sh")
    storage.write_bytes(uri, render_reproduce_script(spec, step, spec_uri or spec_copy_uri(spec, step)).encode())
    if not is_s3(uri):
        Path(uri).chmod(0o755)
    return uri


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
        spec = RunSpec.parse(storage.read_json(args.spec), step).to_json()
        from modelops.recipes.trust import loader_gate

        os.environ.update(loader_gate(spec.get("allow_pickle")))  # before anything loads the model
        write_spec(storage, spec, step)
        write_reproduce_script(storage, spec, step)
        result = fn(spec, storage)
        result.setdefault("status", Status.DONE)
        check_result(step, result)
    except StepSkipped as exc:
        result = {"status": Status.SKIPPED, "reason": str(exc)}
        _write(storage, args.result, spec if "spec" in locals() else None, step, result)
        _say_why(f"{step}: skipped: {exc}")
        return EXIT_SKIPPED
    except (StepError, SpecError, ResultError, StorageError) as exc:
        _say_why(f"{step}: error: {exc}")
        return 1
    except Exception as exc:
        log.exception("step %s failed", step)
        _say_why(f"{step}: error: {type(exc).__name__}: {exc}")
        return 1
    result["step"] = step
    result["seconds"] = round(time.time() - started, 3)
    _write(storage, args.result, spec, step, result)
    log.info("%s done in %.1f s", step, result["seconds"])
    return 0


TERMINATION_MESSAGE_BYTES = 4096  # what Kubernetes keeps of a container's termination message


def _say_why(line: str) -> None:
    """The step's one-line reason on stderr (the task log) and, in a pod, as its termination message
    (``MODELOPS_TERMINATION_LOG``): KubernetesPodOperator puts that in the task's error instead of a bare "failed"."""
    line = line.strip().splitlines()[0] if line.strip() else line
    print(line, file=sys.stderr)
    from modelops.settings import Settings

    path = Settings.from_env().termination_log
    if path:
        try:
            with open(path, "w", encoding="utf-8") as out:
                out.write(line.encode()[:TERMINATION_MESSAGE_BYTES].decode(errors="ignore"))
        except OSError as exc:
            log.warning("could not write the termination message to %s: %s", path, exc)


def main(step: str, fn: Callable[[dict[str, Any], Storage], dict[str, Any]]) -> NoReturn:
    """A step module's ``__main__``: :func:`run_step`, then the process ends at once with its exit code.

    By then the step owes nothing: its result is written and uploaded, its servers stopped, its temporary
    directories removed. What is left is the interpreter tearing down torch, MLflow, ONNX Runtime and GX: 0.3-2 s
    per step here (1.9 s with all of them loaded), on every run's critical path. So stdio and logging are
    flushed and the process exits without it (``os._exit``).
    """
    code = run_step(step, fn)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _write(storage: Storage, path: str, spec: dict[str, Any] | None, step: str, result: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2, sort_keys=True))
    if spec is not None and spec.get("run_prefix"):
        storage.write_json(result_uri(spec, step), result)
