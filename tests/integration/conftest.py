"""The real stack (SeaweedFS, MLflow, Triton, Airflow), started once per test session.

It runs from its own state dir (.stack-test) on ports shifted by 100, so a demo stack can stay up
beside it. Set MODELOPS_TEST_KEEP_STACK=1 to leave it running after the session (faster reruns).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def stack():
    os.environ.setdefault("MODELOPS_STACK_DIR", str(REPO / ".stack-test"))
    os.environ.setdefault("MODELOPS_PORT_OFFSET", "100")
    from modelops.local import stack as stack_mod

    status = stack_mod.up()
    env = stack_mod.client_env(status)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield status
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if not os.environ.get("MODELOPS_TEST_KEEP_STACK"):
        stack_mod.down()


@pytest.fixture(scope="session")
def settings(stack):
    from modelops.settings import Settings

    return Settings.from_env()


@pytest.fixture(scope="session")
def storage(stack):
    from modelops.storage import Storage

    return Storage()


@pytest.fixture(scope="session")
def mlflow_client(stack):
    from mlflow import MlflowClient

    return MlflowClient(stack["mlflow"]["url"], registry_uri=stack["mlflow"]["url"])


@pytest.fixture(scope="session")
def triton(stack):
    import tritonclient.http as httpclient

    from modelops.serving.triton.admin import with_admin

    client = httpclient.InferenceServerClient(stack["triton"]["http"].removeprefix("http://"), network_timeout=120.0)
    # model control (load/unload in deploy) is locked behind the stack's admin header, as the pipeline's is
    return with_admin(client, stack["triton"]["admin_header"], stack["triton"]["admin_token"])


@pytest.fixture(scope="session")
def airflow(stack):
    from modelops.local.demo import airflow_client

    return airflow_client(stack)


@pytest.fixture(scope="session")
def register(stack, settings):
    """Train and register a demo model under a unique name; returns the registration record."""
    from modelops.local import stack as stack_mod
    from modelops.local.demo import register_demo_model

    def _register(kind: str, alias: str | None = "champion", serialization: str | None = None, name: str | None = None):
        name = name or f"it_{kind}_{uuid.uuid4().hex[:6]}"
        return register_demo_model(settings, stack_mod.client_env(stack), kind, name, alias, serialization)

    return _register
