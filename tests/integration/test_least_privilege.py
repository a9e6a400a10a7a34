"""Least privilege on the real stack (issue 14): MLflow refuses anonymous writes, each S3 identity reaches only
its buckets, and the gateway reads the registry with its read-only MLflow user.

Run against a chosen stack with ``MODELOPS_STACK_DIR`` / ``MODELOPS_PORT_OFFSET`` (see conftest.py).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import urllib.error
import urllib.request
import uuid

import pytest

pytestmark = pytest.mark.integration


def _mlflow(stack: dict, method: str, path: str, body: dict | None = None,
            login: tuple[str, str] | None = None) -> int:
    headers = {"Content-Type": "application/json"}
    if login:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(login).encode()).decode()
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{stack['mlflow']['url']}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture(scope="module")
def model_version(stack, mlflow_client) -> tuple[str, str]:
    """A registered model with one version (made by the admin, as a data scientist would register it)."""
    name = f"lp_{uuid.uuid4().hex[:6]}"
    mlflow_client.create_registered_model(name)
    run = mlflow_client.create_run("0")
    version = mlflow_client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    return name, str(version.version)


def _login(stack: dict, user: str) -> tuple[str, str]:
    entry = stack["mlflow"] if user == "admin" else stack["mlflow"]["users"][user]
    return entry["username"], entry["password"]


def test_anonymous_process_cannot_tag_a_model_version(stack, model_version):
    name, version = model_version
    tag = {"name": name, "version": version, "key": "modelops.optimize", "value": "true"}
    assert _mlflow(stack, "POST", "/api/2.0/mlflow/model-versions/set-tag", tag) == 401
    assert _mlflow(stack, "POST", "/api/2.0/mlflow/registered-models/alias",
                   {"name": name, "alias": "champion", "version": version}) == 401
    assert _mlflow(stack, "GET", "/api/2.0/mlflow/registered-models/search") == 401
    wrong = ("admin", "not-the-password")
    assert _mlflow(stack, "POST", "/api/2.0/mlflow/model-versions/set-tag", tag, wrong) == 401
    # the gateway's user reads, never writes; Airflow's user may tag (the pipeline records on the version)
    assert _mlflow(stack, "GET", f"/api/2.0/mlflow/registered-models/get?name={name}",
                   login=_login(stack, "gateway")) == 200
    assert _mlflow(stack, "POST", "/api/2.0/mlflow/model-versions/set-tag", tag, _login(stack, "gateway")) == 403
    assert _mlflow(stack, "POST", "/api/2.0/mlflow/model-versions/set-tag", {**tag, "key": "lp.probe"},
                   _login(stack, "airflow")) == 200
    # only the admin manages webhooks (they send registry events to the receiver that starts runs)
    hook = {"name": f"lp_{uuid.uuid4().hex[:6]}", "url": "http://127.0.0.1:9/x",
            "events": [{"entity": "model_version", "action": "created"}]}
    assert _mlflow(stack, "POST", "/api/2.0/mlflow/webhooks", hook, _login(stack, "airflow")) == 403


def test_a_changed_password_is_refused_at_once_despite_the_credentials_cache(stack):
    """The stack turns on MLflow's cache of verified credentials: a password change and a deleted user must still
    take effect on the next request (MLflow drops the user's cached entries)."""
    admin = _login(stack, "admin")
    user, old, new = f"lp_{uuid.uuid4().hex[:6]}", uuid.uuid4().hex, uuid.uuid4().hex
    assert _mlflow(stack, "POST", "/api/2.0/mlflow/users/create", {"username": user, "password": old}, admin) == 200
    probe = f"/api/2.0/mlflow/users/get?username={user}"
    try:
        assert _mlflow(stack, "GET", probe, login=(user, old)) == 200
        assert _mlflow(stack, "GET", probe, login=(user, old)) == 200  # now from the cache
        assert _mlflow(stack, "PATCH", "/api/2.0/mlflow/users/update-password", {"username": user, "password": new},
                       admin) == 200  # fmt: skip
        assert _mlflow(stack, "GET", probe, login=(user, old)) == 401
        assert _mlflow(stack, "GET", probe, login=(user, new)) == 200
    finally:
        assert _mlflow(stack, "DELETE", "/api/2.0/mlflow/users/delete", {"username": user}, admin) == 200
    assert _mlflow(stack, "GET", probe, login=(user, new)) == 401


def _s3(stack: dict, identity: str | None):
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    s3 = stack["s3"]
    config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                    **({"signature_version": UNSIGNED} if identity == "anonymous" else {}))
    keys = s3["identities"][identity] if identity not in (None, "anonymous") else s3
    return boto3.client("s3", endpoint_url=s3["endpoint"], region_name=s3["region"], config=config,
                        aws_access_key_id=keys["access_key"], aws_secret_access_key=keys["secret_key"])


def _put_status(client, bucket: str, key: str) -> str:
    from botocore.exceptions import ClientError

    try:
        client.put_object(Bucket=bucket, Key=key, Body=b"x")
    except ClientError as exc:
        return exc.response["Error"]["Code"]
    client.delete_object(Bucket=bucket, Key=key)
    return "ok"


def test_each_s3_identity_reaches_only_its_buckets(stack):
    s3 = stack["s3"]
    triton, artifacts, mlflow = s3["triton_bucket"], s3["artifacts_bucket"], s3["mlflow_bucket"]
    key = f"lp-probe/{uuid.uuid4().hex}"
    denied = {"AccessDenied", "403"}
    # Triton, the gateway and the reconciler read the model repository and cannot change it
    serving = _s3(stack, "serving")
    serving.list_objects_v2(Bucket=triton, MaxKeys=1)
    assert _put_status(serving, triton, key) in denied
    assert _put_status(serving, artifacts, key) in denied
    # the steps (untrusted model files) write run artifacts, never the model repository or MLflow's models
    worker = _s3(stack, "worker")
    assert _put_status(worker, artifacts, key) == "ok"
    assert _put_status(worker, triton, key) in denied
    assert _put_status(worker, mlflow, key) in denied
    worker.list_objects_v2(Bucket=mlflow, MaxKeys=1)
    # MLflow: its bucket only; publish/deploy (the pipeline identity): the model repository
    assert _put_status(_s3(stack, "mlflow"), mlflow, key) == "ok"
    assert _put_status(_s3(stack, "mlflow"), triton, key) in denied
    assert _put_status(_s3(stack, "pipeline"), triton, key) == "ok"
    assert _put_status(_s3(stack, "pipeline"), mlflow, key) in denied
    # no keys at all
    assert _put_status(_s3(stack, "anonymous"), triton, key) in denied


def test_the_gateway_reads_descriptions_with_its_mlflow_user(stack, mlflow_client, model_version):
    from modelops.serving.gateway.registry_info import RegistryInfo

    name, _ = model_version
    mlflow_client.update_registered_model(name, description="least privilege probe")

    async def lookup(auth: tuple[str, str] | None):
        info = RegistryInfo(stack["mlflow"]["url"], auth=auth)
        await info.start()
        try:
            return await info.get(name)
        finally:
            await info.close()

    found = asyncio.run(lookup(_login(stack, "gateway")))
    assert found is not None and found.description == "least privilege probe"
    assert asyncio.run(lookup(None)) is None, "anonymous lookups get 401, so no description"


def test_seaweedfs_filer_and_volume_ports_refuse_unsigned_requests(stack, storage):
    """JWT signing: only the S3 gateway (with an identity's keys) reaches the data; a local process talking
    to the filer, master or volume HTTP port directly gets 401, for writes and for reads."""
    ports, triton = stack["ports"], stack["s3"]["triton_bucket"]
    key = f"lp-probe/{uuid.uuid4().hex}.txt"
    storage.write_bytes(f"s3://{triton}/{key}", b"through S3")  # the same object through S3 works
    filer = f"http://127.0.0.1:{ports['seaweedfs_filer']}/buckets/{triton}"

    def plain(method: str, url: str, data: bytes | None = None) -> int:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method), timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        assert plain("PUT", f"{filer}/lp-probe/evil.txt", b"hack") == 401
        assert plain("GET", f"{filer}/{key}") == 401
        assert plain("DELETE", f"{filer}/{key}") == 401
        assert plain("POST", f"http://127.0.0.1:{ports['seaweedfs_volume']}/1,01637037d6", b"hack") == 401
        # the master's HTTP API assigns a file id but no write token for it: the volume refuses the write
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['seaweedfs_master']}/dir/assign", timeout=10) as resp:
            assigned = json.loads(resp.read())
        assert not assigned.get("auth")
        assert plain("POST", f"http://127.0.0.1:{ports['seaweedfs_volume']}/{assigned['fid']}", b"hack") == 401
        assert storage.read_bytes(f"s3://{triton}/{key}") == b"through S3"
        assert not storage.exists(f"s3://{triton}/lp-probe/evil.txt")
    finally:
        storage.delete(f"s3://{triton}/{key}")


@pytest.mark.skipif(os.geteuid() != 0, reason="the step user exists only when the step operator runs as root")
def test_a_hostile_pickle_runs_only_when_opted_in_and_then_as_the_step_user(stack, settings, mlflow_client):
    """A pickled module whose unpickling runs code: refused at resolve; opted in, the export step that loads it runs
    it as the step user, which can read neither stack.json nor its parent's (the task's) environment."""
    import pwd
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    from airflow.sdk.exceptions import AirflowFailException

    from modelops.local import stack as stack_mod
    from modelops_airflow.operators.step_operator import LocalStepOperator
    from tests.integration.helpers import REPO, resolve

    probe_dir = Path(tempfile.mkdtemp(prefix="modelops-probe-"))
    os.chmod(probe_dir, 0o777)  # world-writable: where the probe reports to (tmp_path is private to root)
    try:
        name = f"it_probe_{uuid.uuid4().hex[:6]}"
        proc = subprocess.run(
            [str(settings.worker_python), "-m", "tests.bad_models", "register", "probe", "--name", name,
             "--probe-dir", str(probe_dir), "--secret", str(settings.stack_dir / "stack.json")],
            env={**os.environ, **stack_mod.client_env(stack), "PYTHONPATH": str(REPO)},
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        version = json.loads(proc.stdout.strip().splitlines()[-1])["version"]
        with pytest.raises(AirflowFailException, match="runs code from its own files when loaded: its PyTorch module"):
            resolve({"model_name": name, "model_version": version, "variants": ["ort_fp32"]})
        step_uid = pwd.getpwnam(settings.step_user).pw_uid if settings.step_user != "-" else os.getuid()
        assert not (probe_dir / f"uid-{step_uid}.json").exists()  # refused before any step loaded it

        mlflow_client.set_model_version_tag(name, version, "modelops.allow_pickle", "true")  # an admin trusts it
        meta = resolve({"model_name": name, "model_version": version, "variants": ["ort_fp32"]})
        result = LocalStepOperator(task_id="export", step="export", spec=meta["spec_uri"]).execute(context={})
        assert result["status"] == "done"
        seen = json.loads((probe_dir / f"uid-{step_uid}.json").read_text())
        assert seen == {"uid": step_uid, "secret": "PermissionError", "parent_environ": "PermissionError"}
    finally:
        shutil.rmtree(probe_dir, ignore_errors=True)
