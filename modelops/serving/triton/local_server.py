"""A tritonserver process on free loopback ports, for benchmarks and tests.

The python-backend stub embeds the interpreter tritonserver was linked against (Python 3.11) and
imports the model's libraries from the WORKER environment: PYTHONPATH = worker site-packages + repo
root (numpy<2, torch, onnxruntime, mlflow). ``LD_LIBRARY_PATH`` comes from the settings (libpython,
the pytriton wheel's libs).

Each server is private to its step: its model control (repository API), shared-memory, trace and logging APIs
are locked behind :data:`~modelops.serving.triton.admin.ADMIN_HEADER` with a random token of its own, which
only :meth:`TritonProcess.load_model`/:meth:`TritonProcess.unload_model` send. Its model-config API stays open
because perf_analyzer reads the config (a ``-H`` header would write the token into the uploaded perf log).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from modelops.process_tree import die_with_parent, python_shm_regions, remove_orphan_python_shm
from modelops.serving.triton import client as triton_client
from modelops.serving.triton.admin import ADMIN_HEADER, RESTRICTED_APIS, new_token, restricted_args, with_admin
from modelops.settings import Settings

log = logging.getLogger("modelops.serving.triton")

LOG_TAIL_LINES = 25
PROBE_TIMEOUT_S = 2.0  # one health/readiness probe while waiting for the server
UNLOAD_TIMEOUT_S = 120.0
# A benchmark server's locked API groups: all but model-config, which perf_analyzer reads (see the module doc).
LOCKED_APIS: tuple[str, ...] = tuple(api for api in RESTRICTED_APIS if api != "model-config")


class TritonStartError(RuntimeError):
    """tritonserver exited or its models did not become ready; ``reason`` is one line, str() adds the log tail."""

    def __init__(self, reason: str, log_tail: str = "") -> None:
        super().__init__(f"{reason}\n--- tritonserver log (tail) ---\n{log_tail}" if log_tail else reason)
        self.reason = reason
        self.log_tail = log_tail


class _Refused(Exception):
    """Triton refused a call (or could not be reached): the HTTP status (``"0"`` without one) and its message."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(f"({code}): {text}")
        self.code, self.text = code, text


def _answers(probe: Callable[..., bool], *args: str) -> bool:
    """A liveness/readiness probe's answer; False while the server cannot be reached or refuses."""
    try:
        return bool(probe(*args))
    except Exception:  # noqa: BLE001 - any failure of a probe means "not ready yet"
        return False


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def worker_site_packages(worker_python: Path) -> list[Path]:
    """site-packages of the worker venv that ``worker_python`` belongs to (``<venv>/bin/python``)."""
    venv = Path(worker_python).parent.parent
    return sorted(venv.glob("lib/python3*/site-packages"))


# Variables that make a non-interactive `bash -c` (how the python backend starts its stubs) read startup files.
_SHELL_STARTUP_VARS = ("BASH_ENV", "ENV", "SSH_CLIENT", "SSH2_CLIENT")


def triton_env(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for tritonserver whose python models must see the worker environment's packages."""
    env = dict(os.environ)
    venv = Path(settings.worker_python).parent.parent
    site = [str(p) for p in worker_site_packages(settings.worker_python)]
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    env["PYTHONPATH"] = os.pathsep.join([*site, str(settings.repo_root)])
    env["PYTHONNOUSERSITE"] = "1"
    for var in _SHELL_STARTUP_VARS:  # the stubs' `bash -c` must not run a user's shell startup files
        env.pop(var, None)
    libs = settings.tool_library_path
    if libs:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libs, env.get("LD_LIBRARY_PATH", "")) if p)
    env.update(extra or {})
    return env


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def failure_reason(log_text: str, default: str) -> str:
    """The most telling single line of a tritonserver log (a model load error if there is one)."""
    lines = log_text.splitlines()
    for marker in ("failed to load", "Error", "error:"):
        hits = [ln for ln in lines if marker in ln]
        if hits:
            line = hits[0]
            return line.split("] ", 1)[-1].strip()[:400]
    return default


class TritonProcess:
    """Run tritonserver with explicit model control on free 127.0.0.1 ports.

    Use as a context manager::

        with TritonProcess(repo, ["digits"], log_path=work / "triton.log") as triton:
            ... perf_analyzer -u {triton.http_url} ...

    Args:
        repository: local model repository (or an ``s3://host:port/bucket/prefix`` URL with AWS_* env).
        models: models to load at start (``--load-model``); the start waits until each is ready.
        log_path: where tritonserver's stdout/stderr go.
        settings: tool paths; default ``Settings.from_env()``.
        timeout_s: how long to wait for readiness.
        extra_env: more environment (e.g. AWS credentials for an S3 repository).
        extra_args: more tritonserver arguments.
    """

    def __init__(
        self,
        repository: Path | str,
        models: Iterable[str],
        *,
        log_path: Path,
        settings: Settings | None = None,
        timeout_s: float = 120.0,
        extra_env: dict[str, str] | None = None,
        extra_args: Iterable[str] = (),
    ) -> None:
        self.repository = str(repository)
        self.models = list(models)
        self.log_path = Path(log_path)
        self.settings = settings or Settings.from_env()
        self.timeout_s = timeout_s
        self.extra_env = extra_env or {}
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None
        self.http_port = self.grpc_port = self.metrics_port = 0
        self._admin_token = new_token()  # this server's own; never logged (the command line is not logged)

    # -- addresses ------------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def command(self) -> list[str]:
        s = self.settings
        cmd = [
            str(s.tritonserver_bin),
            f"--model-repository={self.repository}",
            "--model-control-mode=explicit",
            # our configs are complete; auto-completion made the python backend start (and wait out) a stub
            # process per load: a reload took 1.7-2.2 s with it and 0.3-0.5 s without (MiniLM INT8, threads changed)
            "--disable-auto-complete-config",
            f"--backend-directory={s.triton_backends_dir}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            "--exit-timeout-secs=10",
            "--log-verbose=0",
            *restricted_args(ADMIN_HEADER, self._admin_token, LOCKED_APIS),
        ]
        cmd += [f"--load-model={m}" for m in self.models]
        return cmd + self.extra_args

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> Self:
        """Start the server and wait until every model in ``models`` is ready.

        Raises:
            TritonStartError: the binary is missing, the server exited, or readiness timed out.
        """
        if not Path(self.settings.tritonserver_bin).exists():
            raise TritonStartError(f"tritonserver not found at {self.settings.tritonserver_bin} (see ENVIRONMENT.md)")
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        remove_orphan_python_shm()  # e.g. of a step killed with its server
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = triton_env(self.settings, self.extra_env)
        with self.log_path.open("ab") as logf:
            # own group (stop() kills its python stubs with it); SIGTERM (a graceful stop that ends the stubs) if
            # the step that started it dies without stopping it (killed: no finally/__exit__ runs)
            self.process = subprocess.Popen(
                # stdin /dev/null: the python backend starts its stubs with `bash -c`, and bash whose stdin is a
                # socket (an Airflow task's stdin is one) sources ~/.bashrc, whose PATH edits (pyenv shims) then
                # pick the stub's interpreter instead of the worker venv's
                self.command(), stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGTERM),  # noqa: PLW1509 - the preexec only calls prctl
            )
        log.info(
            "tritonserver pid %s http %s grpc %s, log %s", self.process.pid, self.http_url, self.grpc_url, self.log_path
        )
        try:
            self.wait_ready(self.models, self.timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _fail(self, default: str) -> TritonStartError:
        tail = log_tail(self.log_path)
        return TritonStartError(failure_reason(tail, default), tail)

    def wait_ready(self, models: Iterable[str], timeout_s: float) -> None:
        """Poll server liveness and each model's readiness until all are ready."""
        deadline = time.monotonic() + timeout_s
        pending = list(models)
        probe = triton_client.http_client(self.http_url, PROBE_TIMEOUT_S)
        try:
            while True:
                if self.process is not None and self.process.poll() is not None:
                    raise self._fail(f"tritonserver exited with code {self.process.returncode}")
                if _answers(probe.is_server_live):
                    pending = [m for m in pending if not _answers(probe.is_model_ready, m)]
                    if not pending:
                        return
                if time.monotonic() > deadline:
                    raise self._fail(f"models {pending} not ready after {timeout_s:.0f} s")
                time.sleep(0.2)
        finally:
            probe.close()

    def _call(self, timeout_s: float, call: Callable[[Any], Any], *, admin: bool = False) -> Any:
        """``call(client)`` on a ``tritonclient.http`` client with ``timeout_s`` (sending the admin header when
        ``admin``); refusals raise ``_Refused``."""
        from tritonclient.utils import InferenceServerException

        client = triton_client.http_client(self.http_url, timeout_s)
        if admin:
            client = with_admin(client, ADMIN_HEADER, self._admin_token)
        try:
            return call(client)
        except (InferenceServerException, *triton_client.UNREACHABLE) as exc:
            raise _Refused(triton_client.error_status(exc), triton_client.error_text(exc)[:400]) from None
        finally:
            client.close()

    def load_model(self, name: str, timeout_s: float | None = None) -> None:
        """Load (or reload) a model through the repository API and wait until it is ready."""
        try:
            self._call(timeout_s or self.timeout_s, lambda c: c.load_model(name), admin=True)
        except _Refused as exc:
            text = (exc.text.strip().splitlines() or [""])[0]  # one line (a python stub adds its traceback)
            raise TritonStartError(f"loading {name!r} failed ({exc.code}): {text}", log_tail(self.log_path)) from None
        self.wait_ready([name], timeout_s or self.timeout_s)

    def unload_model(self, name: str) -> None:
        try:
            self._call(UNLOAD_TIMEOUT_S, lambda c: c.unload_model(name), admin=True)
        except _Refused as exc:
            raise RuntimeError(f"unloading {name!r} failed ({exc.code}): {exc.text}") from None

    def infer(self, model: str, inputs: dict[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
        """One inference (numpy arrays in, numpy arrays out; BYTES outputs as bytes); for smoke checks, not speed."""
        try:
            return self._call(timeout_s, lambda c: triton_client.infer(c, model, inputs))
        except _Refused as exc:
            raise RuntimeError(f"inference on {model!r} failed ({exc.code}): {exc.text}") from None

    def stop(self, grace_s: float = 15.0) -> int | None:
        """SIGTERM, wait ``grace_s``, then SIGKILL the server's process group (its python stubs)."""
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver pid %s ignored SIGTERM for %.0f s; killing it", proc.pid, grace_s)
        self._kill_group(proc)
        return proc.returncode

    def kill(self) -> None:
        """Stop at once, for a caller that has what it needed from the server (a benchmark's measurements).

        SIGKILL the process group, then remove the python backend's shared-memory regions the server had mapped,
        which a graceful :meth:`stop` leaves to the server. :meth:`stop` waits for every python stub to exit and
        tritonserver polls for that once a second: 3.4 s at the end of digits' benchmark step.
        """
        proc = self.process
        if proc is None:
            return
        regions = python_shm_regions(proc.pid)
        self._kill_group(proc)
        for region in regions:
            region.unlink(missing_ok=True)

    def _kill_group(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL the server's process group (the python-backend stubs share the server's session: start_new_session)
        and reap the server."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait(timeout=10)
        self.process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
