"""``up`` / ``down`` / ``status`` of the embedded stack (the Python API behind ``modelops stack``)."""

from __future__ import annotations

import fcntl
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from modelops.local.stack import process
from modelops.local.stack.endpoints import LABELS, OPTIONAL_SERVICES, SERVICES, build_status, log_path
from modelops.local.stack.services import SPECS, Context
from modelops.local.stack.state import (
    ServiceRecord,
    StackError,
    StackState,
    allocate_ports,
    check_ports_free,
    make_private,
    port_offset_from_env,
)
from modelops.settings import Settings

_ALIASES = {
    "seaweedfs": "s3",
    "seaweed": "s3",
    "s3": "s3",
    "mlflow": "mlflow",
    "triton": "triton",
    "airflow": "airflow",
    "gateway": "gateway",
    "prometheus": "prometheus",
    "reconciler": "reconciler",
    "openwebui": "openwebui",
    "open-webui": "openwebui",
}


# how long `up` waits for the ports of a service that just died to be released (SIGKILL, reaping)
PORT_RELEASE_WAIT_S = 10.0


def _normalize(services: Iterable[str] | None) -> list[str]:
    if services is None:
        return list(SERVICES)
    names = []
    for raw in services:
        name = _ALIASES.get(raw.strip().lower())
        if name is None:
            raise StackError(f"unknown service {raw!r}; choose from {', '.join(SERVICES)}")
        names.append(name)
    return names


def with_requirements(services: Iterable[str] | None) -> list[str]:
    """``services`` plus everything they need, in start order (None = all)."""
    wanted: set[str] = set()

    def add(name: str) -> None:
        if name not in wanted:
            wanted.add(name)
            for dep in SPECS[name].requires:
                add(dep)

    for name in _normalize(services):
        add(name)
    return [name for name in SERVICES if name in wanted]


def with_dependents(services: Iterable[str] | None) -> list[str]:
    """``services`` plus everything that needs them, in start order (None = all)."""
    wanted = set(_normalize(services))
    changed = True
    while changed:
        changed = False
        for name in SERVICES:
            if name not in wanted and wanted & set(SPECS[name].requires):
                wanted.add(name)
                changed = True
    return [name for name in SERVICES if name in wanted]


@contextmanager
def _locked(stack_dir: Path) -> Iterator[None]:
    """Serialize ``up``/``down`` on one stack directory (a second caller waits)."""
    with open(stack_dir / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _running(state: StackState) -> dict[str, bool]:
    return {name: process.is_running(state.services.get(name) or ServiceRecord()) for name in SERVICES}


def _load_for_up(stack_dir: Path, offset: int) -> StackState:
    state = StackState.load(stack_dir)
    if state is None:
        return StackState.new(stack_dir, offset)
    if state.port_offset != offset:
        alive = [name for name, up_ in _running(state).items() if up_]
        if alive:
            raise StackError(
                f"the stack in {stack_dir} is running with MODELOPS_PORT_OFFSET={state.port_offset} "
                f"({', '.join(alive)}); run `modelops stack down` first or use that offset"
            )
        state.port_offset, state.ports = offset, allocate_ports(offset)
    return state


def _probe(ctx: Context, name: str) -> bool:
    try:
        return bool(SPECS[name].health(ctx))
    except Exception:  # noqa: BLE001 - a failing probe means "not healthy"
        return False


def _ensure(ctx: Context, name: str) -> None:
    spec, state = SPECS[name], ctx.state
    log = log_path(state, name)
    record = state.record(name)
    if process.is_running(record):
        if not _probe(ctx, name):
            process.say(f"{spec.name} (pid {record.pid}) is running but not healthy yet; waiting ...")
            process.wait_healthy(spec.name, record, lambda: spec.health(ctx), spec.timeout_s, log)
        process.say(f"{spec.name} already running (pid {record.pid})")
        if spec.configure:
            spec.configure(ctx)
        return
    # What a dead instance left behind (e.g. Triton's python-backend stubs outlive a killed tritonserver, holding
    # its accepted connections: the gateway's pooled connection then hangs instead of being refused) goes first.
    for pid in process.stop_leftovers(process.stack_id(state.stack_dir), [name]):
        process.say(f"{spec.name}: stopped leftover process {pid} of its previous run")
    check_ports_free({key: state.ports[key] for key in spec.ports}, wait_s=PORT_RELEASE_WAIT_S)
    spec.prepare(ctx)
    process.say(f"starting {spec.name} ...")
    # each service runs in a work dir of its own: in the stack dir itself, Triton's python stubs (whose sys.path
    # starts with the cwd) imported the stack's `triton/` data folder as the `triton` package torch looks for
    workdir = state.stack_dir / "work" / spec.name
    workdir.mkdir(parents=True, exist_ok=True)
    record = process.spawn(spec.name, spec.command(ctx), spec.env(ctx), log, cwd=workdir,
                           mark=process.marker(state.stack_dir, name))
    state.services[name] = record
    state.save()
    try:
        waited = process.wait_healthy(spec.name, record, lambda: spec.health(ctx), spec.timeout_s, log)
    except StackError:
        process.stop(spec.name, record, grace_s=5)
        state.services[name] = ServiceRecord()
        state.save()
        raise
    process.say(f"{spec.name} healthy in {waited:.1f} s (pid {record.pid})")
    if spec.configure:
        spec.configure(ctx)


def up(settings: Settings | None = None, services: Iterable[str] | None = None) -> dict[str, Any]:
    """Start the stack (or the given services and what they need); already-healthy services are left alone.

    Returns the status dict (see :func:`status`). Raises :class:`StackError` with a one-line reason.
    """
    settings = settings or Settings.from_env()
    offset = port_offset_from_env()
    stack_dir = settings.stack_dir
    stack_dir.mkdir(parents=True, exist_ok=True)
    make_private(stack_dir)  # whatever existed before: the folder holds credentials and data
    start = time.monotonic()
    with _locked(stack_dir):
        state = _load_for_up(stack_dir, offset)
        state.logs_dir.mkdir(parents=True, exist_ok=True)
        state.save()
        ctx = Context(state, settings)
        wanted = with_requirements(services)
        info = ctx.status
        for name in [n for n in wanted if n in OPTIONAL_SERVICES and not info[n].get("installed", True)]:
            process.say(f"{LABELS[name]} skipped: not installed; {OPTIONAL_SERVICES[name]}")
            wanted.remove(name)
        # Fail before starting anything when a port of a service to start is taken.
        to_start = [name for name in wanted if not process.is_running(state.record(name))]
        check_ports_free({key: state.ports[key] for name in to_start for key in SPECS[name].ports},
                         wait_s=PORT_RELEASE_WAIT_S)
        for name in wanted:
            _ensure(ctx, name)
        make_private(stack_dir)  # and what the services created
    process.say(f"stack up in {time.monotonic() - start:.1f} s ({stack_dir})")
    return status(settings)


def down(
    settings: Settings | None = None, services: Iterable[str] | None = None, purge: bool = False
) -> dict[str, Any]:
    """Stop the stack's recorded processes (or the given services and what needs them); data is kept.

    Pids recorded in ``stack.json`` (and confirmed by their start time) are signalled: SIGTERM to the process
    group, SIGKILL after 15 s, then anything left in the service's session; last, every process that still
    carries the stack's marker (``MODELOPS_STACK_ID``, set on each service) is stopped. ``purge=True`` (all
    services only) also deletes the stack directory.
    Returns the status dict after stopping.
    """
    settings = settings or Settings.from_env()
    stack_dir = settings.stack_dir
    if purge and services is not None:
        raise StackError("--purge stops the whole stack; do not name services with it")
    state = StackState.load(stack_dir) if stack_dir.exists() else None
    if state is None:
        process.say(f"no stack in {stack_dir}")
        return status(settings)
    with _locked(stack_dir):
        for name in reversed(with_dependents(services)):
            record = state.services.get(name) or ServiceRecord()
            started = time.monotonic()
            if process.stop(LABELS[name], record, grace_s=SPECS[name].stop_grace_s):
                process.say(f"stopped {LABELS[name]} (pid {record.pid}) in {time.monotonic() - started:.1f} s")
            state.services[name] = ServiceRecord()
            state.save()
        # what escaped the services' sessions (double forks, setsid) still carries the stack's marker
        names = None if services is None else with_dependents(services)
        for pid in process.stop_leftovers(process.stack_id(stack_dir), names):
            process.say(f"stopped leftover process {pid}")
        if purge:
            if not (stack_dir / "stack.json").is_file():
                raise StackError(f"{stack_dir} does not look like a stack directory; not deleting it")
            shutil.rmtree(stack_dir)
            process.say(f"deleted {stack_dir}")
    return status(settings)


def status(settings: Settings | None = None) -> dict[str, Any]:
    """Endpoints, credentials and processes of the stack in ``settings.stack_dir``.

    Keys: ``stack_dir``, ``port_offset``, ``initialized``, ``ports`` and one object per service: ``s3``
    (endpoint, access_key, secret_key, region, *_bucket), ``mlflow`` (url), ``triton`` (http, grpc, metrics,
    repository, admin_header, admin_token), ``gateway`` (url, metrics, keys_db, routes), ``prometheus`` (url,
    config, data_dir), ``reconciler`` (interval_s), ``openwebui`` (url, admin_email, admin_password, data_dir,
    installed), ``airflow`` (url, username, password); each also has pid, log, running and state. Before the
    first ``up`` the secrets are None.
    """
    settings = settings or Settings.from_env()
    state = StackState.load(settings.stack_dir) if settings.stack_dir.exists() else None
    if state is None:
        blank = build_status(StackState.new(settings.stack_dir, port_offset_from_env()), settings, running={})
        blank["s3"].update(access_key=None, secret_key=None)
        blank["airflow"].update(password=None)
        blank["triton"].update(admin_token=None)
        blank["openwebui"].update(admin_password=None)
        return {**blank, "initialized": False}
    return {**build_status(state, settings, _running(state)), "initialized": True}
