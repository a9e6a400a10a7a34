"""Chatting with a real LLM through Open WebUI on the real stack (issue 11): streamed API and a headless browser.

A SmolLM2 chat model ``it_owchat_<hex>`` is registered from the demo CLI (tags ``modelops.task=chat``,
``openwebui.groups=demo-users``), published as its decoupled ``hf_eager`` deployment, loaded and routed 100%
(:func:`tests.integration.helpers.deploy_chat_llm`); Open WebUI is refreshed from the registry
(``modelops openwebui refresh``). A user in ``demo-users`` sees it and gets a streamed answer (Open WebUI's
``POST /api/chat/completions``, server-sent events, Open WebUI -> gateway ``/v1`` -> Triton ``generate_stream``);
a user outside the group neither sees it nor may ask it. Then Debian's chromium, headless and driven by selenium,
logs in as the member, picks the model, sends a message and waits for the answer in the page (on failure a
screenshot and the page source are kept in the test's tmp dir).

Skipped when Open WebUI is not installed (``make openwebui``); chromium + chromedriver come with ``make tools``.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.integration.browser import dom_click, evidence
from tests.integration.helpers import REPO, deploy_chat_llm, undeploy_chat_llm

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (REPO / ".venv-openwebui" / "bin" / "open-webui").exists(),
                       reason="Open WebUI is not installed (.venv-openwebui missing; run `make openwebui`)"),
]

GROUP = "demo-users"
PROMPT = "What is the capital of France? Answer in one sentence."
MAX_TOKENS = 24
ANSWER_TIMEOUT_S = 300  # a CPU model behind one Triton instance; Open WebUI's own follow-up tasks queue up too


def _client(url: str, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url, headers=headers, timeout=ANSWER_TIMEOUT_S, trust_env=False)


def _signin(url: str, email: str, password: str) -> str:
    from modelops.serving.openwebui import signin

    with _client(url) as client:
        return signin(client, email, password)


def _model_ids(url: str, token: str) -> set[str]:
    with _client(url, token) as client:  # chat finds a model only after this call
        resp = client.get("/api/models")
        resp.raise_for_status()
        return {m["id"] for m in resp.json()["data"]}


@pytest.fixture(scope="module")
def chat(stack, settings, storage, triton, register):
    """The routed LLM published in Open WebUI, a member of ``demo-users`` and an outsider."""
    from modelops.local.openwebui_cli import refresh_stack
    from modelops.serving.openwebui import ensure_user

    info = stack["openwebui"]
    assert info["running"], f"openwebui is installed but not running; see {info['log']}"
    started = time.monotonic()
    llm = deploy_chat_llm(stack, settings, storage, triton, register, f"it_owchat_{uuid.uuid4().hex[:6]}")
    try:
        print(f"\n{llm['deployment']} registered, published, loaded and routed in {time.monotonic() - started:.0f} s")
        assert llm["name"] in refresh_stack(stack, settings, check_running=False)["models"]
        users = {}
        for who, groups in (("member", [GROUP]), ("outsider", [])):
            email, password = f"{who}-{uuid.uuid4().hex[:6]}@modelops.example", uuid.uuid4().hex
            user_id = ensure_user(info["url"], info["admin_email"], info["admin_password"], name=who, email=email,
                                  password=password, groups=groups)  # fmt: skip
            users[who] = {"id": user_id, "email": email, "password": password}
        yield {"url": info["url"], "model": llm["name"], "users": users, "log": Path(info["log"])}
    finally:
        undeploy_chat_llm(settings, storage, triton, llm)
        refresh_stack(stack, settings, check_running=False)  # Open WebUI forgets the model


def _sse_chunks(response: httpx.Response) -> tuple[list[dict], bool]:
    """The JSON chunks of an OpenAI-style event stream, and whether it ended with ``data: [DONE]``."""
    chunks, done = [], False
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue
        data = line[len("data:"):].strip()
        if data == "[DONE]":
            done = True
            break
        chunks.append(json.loads(data))
    return chunks, done


def test_a_member_gets_a_streamed_answer_through_openwebui(chat):
    member = chat["users"]["member"]
    token = _signin(chat["url"], member["email"], member["password"])
    assert chat["model"] in _model_ids(chat["url"], token)

    body = {"model": chat["model"], "stream": True, "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": MAX_TOKENS, "temperature": 0}
    started = time.monotonic()
    with _client(chat["url"], token) as client, client.stream("POST", "/api/chat/completions", json=body) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        chunks, done = _sse_chunks(resp)
    elapsed = time.monotonic() - started
    choices = [c["choices"][0] for c in chunks if c.get("choices")]
    pieces = [ch.get("delta", {}).get("content") or "" for ch in choices]
    text = "".join(pieces)
    print(f"\n{sum(1 for p in pieces if p)} content chunks in {elapsed:.1f} s: {text!r}")
    assert done, "the stream did not end with data: [DONE]"
    assert sum(1 for p in pieces if p) >= 3, chunks  # streamed: the answer arrives in several chunks
    assert text.strip()
    finishes = [ch.get("finish_reason") for ch in choices if ch.get("finish_reason")]
    assert len(finishes) == 1 and finishes[0] in ("stop", "length"), choices
    assert choices[-1].get("finish_reason") == finishes[-1], "the finish comes after the last piece of text"
    assert all(c.get("model") == chat["model"] for c in chunks if c.get("choices"))


def test_an_outsider_neither_sees_nor_may_ask_the_model(chat):
    outsider = chat["users"]["outsider"]
    token = _signin(chat["url"], outsider["email"], outsider["password"])
    assert chat["model"] not in _model_ids(chat["url"], token)
    body = {"model": chat["model"], "stream": True, "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": MAX_TOKENS}
    with _client(chat["url"], token) as client:
        resp = client.post("/api/chat/completions", json=body)
    # Open WebUI answers a denied model as an unknown one (400 "Model not found": its existence is not told);
    # its log says it was the access check on this user and model
    assert (resp.status_code, resp.json()) == (400, {"detail": "Model not found"}), resp.text[:300]
    denied = f"Model access denied: user_id={outsider['id']!r} model_id={chat['model']!r} reason=model_read_denied"
    assert denied in chat["log"].read_text(errors="replace")


def test_a_member_chats_in_a_headless_browser(chat, browser, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    member = chat["users"]["member"]
    # Svelte re-renders the message list while the chat starts: an element found a moment ago may be gone when its
    # text is read; the waits then look again instead of failing
    stale = (StaleElementReferenceException,)
    wait = WebDriverWait(browser, 90, ignored_exceptions=stale)
    with evidence(browser, tmp_path):
        browser.get(f"{chat['url']}/auth")
        wait.until(ec.visibility_of_element_located((By.ID, "email"))).send_keys(member["email"])
        password = wait.until(ec.visibility_of_element_located((By.ID, "password")))
        password.send_keys(member["password"])
        password.send_keys(Keys.ENTER)
        wait.until(lambda d: "/auth" not in d.current_url)

        selector = wait.until(ec.element_to_be_clickable((By.ID, "model-selector-model-button")))
        dom_click(browser, selector)
        option = wait.until(ec.presence_of_element_located(
            (By.CSS_SELECTOR, f'#model-selector-list [role="option"][data-value="{chat["model"]}"]')))
        dom_click(browser, option)
        wait.until(lambda d: chat["model"] in (d.find_element(By.ID, "model-selector-model-button")
                                               .get_attribute("aria-label") or ""))

        box = wait.until(ec.element_to_be_clickable((By.ID, "chat-input")))
        box.click()
        box.send_keys(PROMPT)
        send = wait.until(ec.element_to_be_clickable((By.ID, "send-message-button")))
        started = time.monotonic()
        dom_click(browser, send)

        wait.until(lambda d: PROMPT in " ".join(e.text for e in d.find_elements(By.CSS_SELECTOR, ".chat-user")))
        long_wait = WebDriverWait(browser, ANSWER_TIMEOUT_S, ignored_exceptions=stale)
        # the answer is done when its actions (copy, regenerate; only assistant messages have them) render
        long_wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#messages-container .copy-response-button")))
        answer = browser.find_elements(By.CSS_SELECTOR, ".chat-assistant #response-content-container")
        text = answer[-1].text.strip() if answer else ""
        print(f"\nanswer in the page after {time.monotonic() - started:.1f} s: {text!r}")
        assert text, "the assistant's message is empty"
        assert chat["model"] in browser.page_source


def test_the_gateway_caps_max_tokens_and_ends_a_stream_whose_key_is_revoked(chat, stack):
    """The real gateway in front of the real SmolLM2: ``max_tokens`` 10^9 is 400 naming the cap, before Triton; a
    key revoked while its answer streams ends that stream with a 401 event, within the key recheck (1 s)."""
    from modelops.serving.gateway.keys import KeyStore

    keys, name = KeyStore(stack["gateway"]["keys_db"]), f"it-stream-{uuid.uuid4().hex[:6]}"
    _, key = keys.create(name, chat["model"])
    url = stack["gateway"]["url"]
    ask = {"model": chat["model"], "messages": [{"role": "user", "content": "Count from 1 to 300, one number per "
                                                                             "line."}]}  # fmt: skip
    with _client(url, key) as client:
        resp = client.post("/v1/chat/completions", json={**ask, "max_tokens": 10**9})
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert error["param"] == "max_tokens" and error["message"] == (
            f"invalid 'max_tokens': 1000000000 is over model {chat['model']!r}'s cap of 4096 tokens")
        body = {**ask, "stream": True, "max_tokens": 400, "temperature": 0}
        with client.stream("POST", "/v1/chat/completions", json=body) as stream:
            assert stream.status_code == 200, stream.read()
            events = (line.removeprefix("data:").strip() for line in stream.iter_lines() if line.startswith("data:"))
            seen = [next(events) for _ in range(4)]  # the role, then the first tokens: it is generating
            keys.revoke(name)
            revoked = time.monotonic()
            rest = list(events)
        ended_s = time.monotonic() - revoked
    assert all(json.loads(e).get("choices") for e in seen)
    assert rest and rest[-1] != "[DONE]", rest[-3:]
    assert json.loads(rest[-1])["error"]["message"] == f"API key {name!r} was revoked during the request"
    assert ended_s < 5, f"the stream went on {ended_s:.1f} s after the revocation"
    with _client(url, key) as client:
        assert client.post("/v1/chat/completions", json={**ask, "max_tokens": 4}).status_code == 401
