"""Least privilege in the embedded stack: MLflow's basic-auth users and SeaweedFS's S3 identities.

MLflow runs as ``mlflow server --app-name basic-auth`` with ``default_permission = NO_PERMISSIONS``: an
anonymous request gets 401 and a user without a grant 403. Three users, their passwords generated once
(:class:`~modelops.local.stack.state.Credentials`):

=========  =====================================================================================
user       rights
=========  =====================================================================================
admin      MLflow admin (the stack, the operator: ``stack status --json`` -> ``mlflow.username``)
airflow    MANAGE on every experiment and registered model (``*`` grants: the models do not exist
           when the stack starts); not admin, so it cannot manage users or webhooks
gateway    READ on every registered model (the gateway's ``/v1/models`` descriptions)
=========  =====================================================================================

S3 (SeaweedFS) has one identity per role, each limited to the buckets it needs (:func:`s3_identities`).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from modelops.local.stack.state import Credentials, StackError, StackState, write_private
from modelops.settings import Settings

MLFLOW_ADMIN = "admin"
MLFLOW_DEFAULT_PERMISSION = "NO_PERMISSIONS"
# user -> (resource type, pattern, permission) grants, made through MLflow's REST API after it starts
MLFLOW_GRANTS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "airflow": (("experiment", "*", "MANAGE"), ("registered_model", "*", "MANAGE")),
    "gateway": (("registered_model", "*", "READ"),),
}
S3_ROLES = ("mlflow", "serving", "worker", "pipeline")
MLFLOW_AUTH_CACHE_TTL_S = 300


# -- MLflow -----------------------------------------------------------------------------------------
def mlflow_password(creds: Credentials, user: str) -> str:
    """The generated password of MLflow user ``user`` (admin, airflow or gateway)."""
    return {MLFLOW_ADMIN: creds.mlflow_admin_password, "airflow": creds.mlflow_airflow_password,
            "gateway": creds.mlflow_gateway_password}[user]


def mlflow_auth_config(state: StackState) -> Path:
    """``<stack>/config/mlflow-auth.ini`` (mode 600): MLflow's ``MLFLOW_AUTH_CONFIG_PATH``."""
    return state.stack_dir / "config" / "mlflow-auth.ini"


def write_mlflow_auth_config(state: StackState) -> Path:
    """Write the auth app's ini: user store next to MLflow's database, the generated admin, no default rights.

    MLflow creates the admin from it on the first start only; the password never changes afterwards
    (it is generated once and kept in ``stack.json``).
    """
    path = mlflow_auth_config(state)
    text = (
        "[mlflow]\n"
        f"default_permission = {MLFLOW_DEFAULT_PERMISSION}\n"
        f"database_uri = sqlite:///{state.stack_dir / 'mlflow' / 'basic_auth.db'}\n"
        f"admin_username = {MLFLOW_ADMIN}\n"
        f"admin_password = {state.credentials.mlflow_admin_password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # MLflow's own cache of verified credentials: without it every request re-checks a scrypt hash (0.12 s of
        # CPU here, 0.4-0.7 s on a busy 2-core box; resolve took 15-19 s and record 28 s). A password change or a
        # deleted user drops the user's entries at once (one server worker: no other process keeps stale ones).
        f"auth_cache_ttl_seconds = {MLFLOW_AUTH_CACHE_TTL_S}\n"
    )
    write_private(path, text)
    return path


def mlflow_server_env(state: StackState) -> dict[str, str]:
    """What ``mlflow server --app-name basic-auth`` needs: its ini and the Flask secret (CSRF, sessions)."""
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(mlflow_auth_config(state)),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": state.credentials.mlflow_flask_secret_key,
    }


def basic_auth_header(username: str, password: str) -> dict[str, str]:
    """``{"Authorization": "Basic ..."}``."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def mlflow_admin_headers(state: StackState) -> dict[str, str]:
    """The stack admin's basic-auth header for MLflow."""
    return basic_auth_header(MLFLOW_ADMIN, state.credentials.mlflow_admin_password)


HttpCall = Callable[..., tuple[int, bytes]]


def configure_mlflow_users(state: StackState, base_url: str, http: HttpCall) -> None:
    """Create (or reset the password of) the ``airflow`` and ``gateway`` users and make their grants.

    Idempotent: an existing user gets its generated password again, an existing grant is kept.

    Raises:
        StackError: MLflow refused a call (one line: the call and its status).
    """
    headers = mlflow_admin_headers(state)

    def call(path: str, body: dict[str, Any], ok: tuple[int, ...] = (200,)) -> tuple[int, bytes]:
        code, raw = http("POST", f"{base_url}{path}", body=body, headers=headers, timeout=10.0)
        if code not in ok and not (code == 400 and b"RESOURCE_ALREADY_EXISTS" in raw):
            raise StackError(f"mlflow: {path} failed: HTTP {code} {raw[:200]!r}")
        return code, raw

    for user, grants in MLFLOW_GRANTS.items():
        password = mlflow_password(state.credentials, user)
        code, _ = call("/api/2.0/mlflow/users/create", {"username": user, "password": password})
        if code != 200:  # it exists (an earlier `up`): make sure it has this stack's password
            http("PATCH", f"{base_url}/api/2.0/mlflow/users/update-password",
                 body={"username": user, "password": password}, headers=headers, timeout=10.0)
        for resource_type, pattern, permission in grants:
            call("/api/3.0/mlflow/users/permissions/grant", {"username": user, "resource_type": resource_type,
                                                           "resource_id": pattern, "permission": permission})


def mlflow_users_status(creds: Credentials) -> dict[str, dict[str, str]]:
    """``status["mlflow"]["users"]``: login of each non-admin user."""
    return {user: {"username": user, "password": mlflow_password(creds, user)} for user in MLFLOW_GRANTS}


def use_mlflow_credentials(status: Mapping[str, Any], user: str = MLFLOW_ADMIN,
                           environ: dict[str, str] | None = None) -> None:
    """Set ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` (what every ``MlflowClient`` sends) to ``user``'s login.

    ``status`` is ``modelops stack status --json``; ``environ`` defaults to ``os.environ``. A status without
    MLflow users (an older stack) leaves the environment alone.
    """
    import os

    mlflow = status.get("mlflow", {})
    login = mlflow if user == MLFLOW_ADMIN else (mlflow.get("users") or {}).get(user, {})
    if not login.get("username"):
        return
    target = os.environ if environ is None else environ
    target["MLFLOW_TRACKING_USERNAME"] = login["username"]
    target["MLFLOW_TRACKING_PASSWORD"] = login["password"]


# -- S3 (SeaweedFS) ---------------------------------------------------------------------------------
def s3_keys(creds: Credentials, role: str | None) -> tuple[str, str]:
    """``(access key, secret key)`` of identity ``role`` (None: the stack's admin identity)."""
    if role is None:
        return creds.s3_access_key, creds.s3_secret_key
    if role not in S3_ROLES:
        raise ValueError(f"unknown S3 identity {role!r}; known: {', '.join(S3_ROLES)}")
    return getattr(creds, f"s3_{role}_access_key"), getattr(creds, f"s3_{role}_secret_key")


def s3_actions(settings: Settings) -> dict[str, list[str]]:
    """SeaweedFS actions of each identity (``Action:bucket`` limits an action to one bucket).

    - ``admin``: everything (the stack itself: bucket creation, health; the operator's CLI).
    - ``mlflow``: its artifact bucket.
    - ``serving`` (Triton, gateway, reconciler): read the Triton model repository.
    - ``worker`` (heavy steps, which load untrusted model files): read MLflow's models, write run artifacts.
    - ``pipeline`` (Airflow's light tasks: resolve, select, publish, deploy, record): read MLflow's models,
      run artifacts, the Triton repository (publish, routes, locks).
    """
    mlflow, artifacts, triton = settings.mlflow_bucket, settings.artifacts_bucket, settings.triton_bucket

    def rw(bucket: str) -> list[str]:
        return [f"Read:{bucket}", f"Write:{bucket}", f"List:{bucket}", f"Tagging:{bucket}"]

    def ro(bucket: str) -> list[str]:
        return [f"Read:{bucket}", f"List:{bucket}"]

    return {
        "admin": ["Admin", "Read", "Write", "List", "Tagging"],
        "mlflow": rw(mlflow),
        "serving": ro(triton),
        "worker": [*ro(mlflow), *rw(artifacts)],
        "pipeline": [*ro(mlflow), *rw(artifacts), *rw(triton)],
    }


def s3_identities(creds: Credentials, settings: Settings) -> dict[str, Any]:
    """The content of SeaweedFS's ``-s3.config`` file: one identity per role."""
    identities = []
    for role, actions in s3_actions(settings).items():
        access, secret = s3_keys(creds, None if role == "admin" else role)
        name = "modelops" if role == "admin" else f"modelops-{role}"
        identities.append({"name": name, "credentials": [{"accessKey": access, "secretKey": secret}],
                           "actions": actions})
    return {"identities": identities}


def write_s3_identities(path: Path, creds: Credentials, settings: Settings) -> None:
    """Write :func:`s3_identities` to ``path`` (mode 600)."""
    write_private(path, json.dumps(s3_identities(creds, settings), indent=2) + "\n")


def seaweedfs_jwt_env(creds: Credentials) -> dict[str, str]:
    """SeaweedFS's JWT signing keys (the ``WEED_JWT_*`` form of ``security.toml``'s ``[jwt.signing]``,
    ``[jwt.signing.read]``, ``[jwt.filer_signing]`` and ``[jwt.filer_signing.read]``).

    With them the volume and filer HTTP ports answer 401 to any read or write that the master or the S3
    gateway did not sign: only S3, with an identity's keys, reaches the data.
    """
    return {
        "WEED_JWT_SIGNING_KEY": creds.seaweedfs_jwt_key,
        "WEED_JWT_SIGNING_READ_KEY": creds.seaweedfs_jwt_read_key,
        "WEED_JWT_FILER_SIGNING_KEY": creds.seaweedfs_jwt_filer_key,
        "WEED_JWT_FILER_SIGNING_READ_KEY": creds.seaweedfs_jwt_filer_read_key,
    }


def s3_identities_status(creds: Credentials) -> dict[str, dict[str, str]]:
    """``status["s3"]["identities"]``: the keys of each role."""
    return {role: dict(zip(("access_key", "secret_key"), s3_keys(creds, role), strict=True)) for role in S3_ROLES}
