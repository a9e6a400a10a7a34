"""Persistent state of the embedded stack: ports, generated credentials and ``stack.json``.

Everything here is pure (no server is started): port allocation with ``MODELOPS_PORT_OFFSET``, busy-port
detection, credential generation and the atomic, owner-only (mode 600) writes of the state file.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import socket
import stat
import string
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from modelops.settings import Settings, SettingsError

HOST = "127.0.0.1"
STATE_VERSION = 1

# Every port a stack listens on, before the offset. The seaweedfs internal ports (master, volume, filer,
# their gRPC ports, the admin server) are pinned too, so that two stacks with different offsets never
# collide; its Iceberg and Lance catalogs are disabled (port 0).
DEFAULT_PORTS: dict[str, int] = {
    "s3": 8333,
    "s3_grpc": 18333,
    "seaweedfs_master": 9333,
    "seaweedfs_master_grpc": 19333,
    "seaweedfs_volume": 9340,
    "seaweedfs_volume_grpc": 19340,
    "seaweedfs_filer": 8888,
    "seaweedfs_filer_grpc": 18888,
    "seaweedfs_admin": 23646,
    "seaweedfs_admin_grpc": 33646,
    "mlflow": 5000,
    "triton_http": 8000,
    "triton_grpc": 8001,
    "triton_metrics": 8002,
    "airflow": 8080,
    "airflow_worker_log": 8793,
    "airflow_trigger_log": 8794,
    "gateway": 9000,
    "prometheus": 9090,
    # Open WebUI: not 8180 (the Airflow of a stack with offset 100 listens there)
    "openwebui": 3000,
}


class StackError(RuntimeError):
    """A stack operation failed; the message is one line meant for the user."""


class PortBusyError(StackError):
    """A port the stack needs is taken by a process the stack did not start."""


# -- ports ------------------------------------------------------------------------------------------
def port_offset_from_env(environ: Mapping[str, str] | None = None) -> int:
    """``MODELOPS_PORT_OFFSET`` as an int (default 0); a clear error when it is not a usable integer."""
    try:
        offset = Settings.from_env(environ).stack.port_offset
    except SettingsError as err:
        raise StackError(str(err)) from None
    allocate_ports(offset)  # validates the range
    return offset


def allocate_ports(offset: int = 0) -> dict[str, int]:
    """All stack ports shifted by ``offset``; raises :class:`StackError` if one falls outside 1024-65535."""
    ports = {name: port + offset for name, port in DEFAULT_PORTS.items()}
    bad = {name: port for name, port in ports.items() if not 1024 <= port <= 65535}
    if bad:
        name, port = next(iter(bad.items()))
        raise StackError(f"MODELOPS_PORT_OFFSET={offset} puts port {name} at {port}, outside 1024-65535")
    return ports


def port_in_use(port: int, host: str = HOST) -> bool:
    """True when something listens on ``host:port`` (a bind attempt fails with EADDRINUSE).

    SO_REUSEADDR makes sockets lingering in TIME_WAIT (e.g. after a ``down``) not count as busy, while a
    listener on the port (on ``host`` or on all interfaces) still does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def busy_port_message(port: int, name: str, host: str = HOST) -> str:
    """The one-line error for a port held by a foreign process."""
    return f"port {port} ({name}) on {host} is in use by another process; stop it or set MODELOPS_PORT_OFFSET"


def check_ports_free(ports: Mapping[str, int], host: str = HOST, wait_s: float = 0.0) -> None:
    """Raise :class:`PortBusyError` for the first port of ``ports`` (name -> port) still in use after ``wait_s``.

    A server killed with SIGKILL can hold its socket for a moment while the kernel reaps it and its
    children; ``up`` restarting such a service waits that out instead of failing.
    """
    import time

    deadline = time.monotonic() + wait_s
    for name, port in ports.items():
        while port_in_use(port, host):
            if time.monotonic() >= deadline:
                raise PortBusyError(busy_port_message(port, name, host))
            time.sleep(0.25)


# -- credentials ------------------------------------------------------------------------------------
_ALNUM = string.ascii_letters + string.digits


def _token(length: int, alphabet: str = _ALNUM) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def fernet_key() -> str:
    """A new Fernet key (32 random bytes, url-safe base64), as Airflow and MLflow expect."""
    import base64

    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def _s3_key_pair() -> dict[str, str]:
    return {"access_key": "MO" + _token(18, string.ascii_uppercase + string.digits), "secret_key": _token(40)}


@dataclass(frozen=True)
class Credentials:
    """Secrets of one stack, generated once with :mod:`secrets` and reused on every later ``up``."""

    s3_access_key: str
    s3_secret_key: str
    airflow_username: str
    airflow_password: str
    airflow_fernet_key: str
    airflow_jwt_secret: str
    airflow_api_secret_key: str
    mlflow_webhook_encryption_key: str
    triton_admin_token: str  # the value of Triton's admin header (model control, config, shm, trace, logging)
    openwebui_secret_key: str  # Open WebUI's WEBUI_SECRET_KEY (signs its sessions)
    openwebui_admin_email: str
    openwebui_admin_password: str
    mlflow_admin_password: str  # MLflow basic-auth users (modelops.local.stack.auth): admin, airflow, gateway
    mlflow_airflow_password: str
    mlflow_gateway_password: str
    mlflow_flask_secret_key: str  # MLFLOW_FLASK_SERVER_SECRET_KEY of the auth app
    # one S3 identity per role besides the admin one above (modelops.local.stack.auth.s3_actions)
    s3_mlflow_access_key: str
    s3_mlflow_secret_key: str
    s3_serving_access_key: str
    s3_serving_secret_key: str
    s3_worker_access_key: str
    s3_worker_secret_key: str
    s3_pipeline_access_key: str
    s3_pipeline_secret_key: str
    # SeaweedFS JWT signing (WEED_JWT_*): its filer and volume HTTP ports refuse what S3 did not sign
    seaweedfs_jwt_key: str
    seaweedfs_jwt_read_key: str
    seaweedfs_jwt_filer_key: str
    seaweedfs_jwt_filer_read_key: str

    @classmethod
    def generate(cls) -> Credentials:
        """Fresh random credentials."""
        return cls(
            s3_access_key="MO" + _token(18, string.ascii_uppercase + string.digits),
            s3_secret_key=_token(40),
            airflow_username="admin",
            airflow_password=_token(24),
            airflow_fernet_key=fernet_key(),
            airflow_jwt_secret=secrets.token_urlsafe(48),
            airflow_api_secret_key=secrets.token_urlsafe(48),
            mlflow_webhook_encryption_key=fernet_key(),
            triton_admin_token=secrets.token_urlsafe(32),
            openwebui_secret_key=secrets.token_urlsafe(48),
            openwebui_admin_email="admin@modelops.example",
            openwebui_admin_password=_token(24),
            mlflow_admin_password=_token(24),
            mlflow_airflow_password=_token(24),
            mlflow_gateway_password=_token(24),
            mlflow_flask_secret_key=secrets.token_urlsafe(48),
            **{f"s3_{role}_{kind}": value for role in ("mlflow", "serving", "worker", "pipeline")
               for kind, value in _s3_key_pair().items()},
            seaweedfs_jwt_key=secrets.token_urlsafe(32),
            seaweedfs_jwt_read_key=secrets.token_urlsafe(32),
            seaweedfs_jwt_filer_key=secrets.token_urlsafe(32),
            seaweedfs_jwt_filer_read_key=secrets.token_urlsafe(32),
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Credentials:
        """Load from ``stack.json``; fields missing there (an older file) are generated."""
        fresh = asdict(cls.generate())
        return cls(**{key: str(data.get(key) or fresh[key]) for key in fresh})

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def __repr__(self) -> str:
        shown = {name: value if name in _NOT_SECRET else "***" for name, value in asdict(self).items()}
        return "Credentials(" + ", ".join(f"{name}={value!r}" for name, value in shown.items()) + ")"

    __str__ = __repr__


_NOT_SECRET = frozenset({"airflow_username", "openwebui_admin_email"})  # the rest prints as *** in reprs


# -- state file -------------------------------------------------------------------------------------
@dataclass
class ServiceRecord:
    """What the stack knows about one started service process."""

    pid: int | None = None
    start_ticks: int | None = None  # /proc/<pid>/stat starttime: guards against pid reuse
    started_at: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ServiceRecord:
        data = data or {}
        return cls(pid=data.get("pid"), start_ticks=data.get("start_ticks"), started_at=data.get("started_at"))


@dataclass
class StackState:
    """The content of ``stack.json``: ports, credentials and the processes of a stack directory."""

    stack_dir: Path
    port_offset: int
    ports: dict[str, int]
    credentials: Credentials
    services: dict[str, ServiceRecord] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.stack_dir / "stack.json"

    @property
    def logs_dir(self) -> Path:
        return self.stack_dir / "logs"

    @property
    def triton_admin_token_file(self) -> Path:
        """The current Triton admin token (mode 600); the reconciler, the CLI and Airflow read it at each use."""
        return self.stack_dir / "triton" / "admin-token"

    def rotate_triton_admin_token(self) -> str:
        """A fresh Triton admin token (before each Triton start), saved in ``stack.json`` and the token file."""
        token = secrets.token_urlsafe(32)
        self.credentials = replace(self.credentials, triton_admin_token=token)
        self.save()
        write_private(self.triton_admin_token_file, token + "\n")
        return token

    @classmethod
    def new(cls, stack_dir: Path, port_offset: int) -> StackState:
        """A state with fresh credentials and the ports of ``port_offset`` (not yet saved)."""
        return cls(Path(stack_dir), port_offset, allocate_ports(port_offset), Credentials.generate())

    @classmethod
    def load(cls, stack_dir: Path) -> StackState | None:
        """Read ``stack_dir/stack.json``; None when there is none."""
        path = Path(stack_dir) / "stack.json"
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise StackError(f"{path} is not valid JSON ({exc}); fix or delete it") from None
        offset = int(data.get("port_offset", 0))
        return cls(
            stack_dir=Path(stack_dir),
            port_offset=offset,
            ports={**allocate_ports(offset), **{k: int(v) for k, v in data.get("ports", {}).items()}},
            credentials=Credentials.from_dict(data.get("credentials", {})),
            services={name: ServiceRecord.from_dict(rec) for name, rec in data.get("services", {}).items()},
        )

    def record(self, name: str) -> ServiceRecord:
        """The (possibly empty) record of service ``name``."""
        return self.services.setdefault(name, ServiceRecord())

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "stack_dir": str(self.stack_dir),
            "port_offset": self.port_offset,
            "ports": dict(self.ports),
            "credentials": self.credentials.to_dict(),
            "services": {name: asdict(rec) for name, rec in self.services.items()},
        }

    def save(self) -> None:
        """Write ``stack.json`` atomically with mode 600 (it holds the credentials)."""
        write_private(self.path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


def make_private(root: Path) -> None:
    """Owner-only access to ``root`` and everything under it, whatever modes they had.

    Folders get 700; files lose every group and other bit (600, or 700 for an executable). Symlinks are
    left alone (their targets may lie outside the stack).
    """
    root = Path(root)
    os.chmod(root, 0o700)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            try:
                mode = path.lstat().st_mode
                if stat.S_ISLNK(mode):
                    continue
                private = 0o700 if stat.S_ISDIR(mode) else stat.S_IMODE(mode) & 0o700
                if stat.S_IMODE(mode) != private:
                    os.chmod(path, private)
            except FileNotFoundError:  # a service removed it meanwhile
                continue


def write_private(path: Path, text: str) -> None:
    """Atomically write ``text`` to ``path`` readable by the owner only (mode 600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
