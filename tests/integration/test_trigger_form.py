"""optimize_model's trigger form in a real browser (Airflow 3's UI, headless chromium): what a user fills in.

The variants are a multi-select of the registry's names (``examples`` + ``values_display``), empty by default (the
recipe's family defaults), in the folded section "Candidates and gates"; picking one and triggering sends a run
whose conf holds exactly that choice. The model is one that does not exist, so the run stops at resolve.
"""

from __future__ import annotations

import time
import uuid

import pytest

from tests.integration.browser import dom_click, evidence

pytestmark = pytest.mark.integration
DAG = "optimize_model"


def _login(browser, stack, airflow) -> str:
    """The UI's session: the API's JWT in the ``_token`` cookie the UI reads (what its login page sets)."""
    url = stack["airflow"]["url"]
    airflow.request("GET", f"/dags/{DAG}")  # logs the API client in
    browser.get(f"{url}/auth/login")
    browser.add_cookie({"name": "_token", "value": airflow._token, "path": "/"})
    return url


def test_variants_are_a_multi_select_and_the_choice_reaches_the_run(browser, stack, airflow, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    airflow.wait_for_dag(DAG)
    wait = WebDriverWait(browser, 60)
    model = f"it_form_{uuid.uuid4().hex[:6]}"
    with evidence(browser, tmp_path):
        url = _login(browser, stack, airflow)
        browser.get(f"{url}/dags/{DAG}")
        trigger = wait.until(ec.element_to_be_clickable((By.XPATH, "//button[normalize-space()='Trigger']")))
        dom_click(browser, trigger)
        name = wait.until(ec.visibility_of_element_located((By.ID, "element_model_name")))
        name.send_keys(Keys.CONTROL, "a")
        name.send_keys(model)
        # the model and its data are open; the candidates section is folded until opened
        assert not any(e.is_displayed() for e in browser.find_elements(By.ID, "element_variants"))
        section = browser.find_element(By.CSS_SELECTOR, "[data-part='item'][id$=':item:Candidates and gates'] > button")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", section)
        section.click()  # a real click: the accordion opens on pointer events
        variants = wait.until(ec.visibility_of_element_located((By.ID, "element_variants")))
        assert not variants.find_elements(By.TAG_NAME, "textarea")  # not the free-text list Airflow falls back to
        combo = variants.find_element(By.CSS_SELECTOR, "input[role='combobox']")
        assert combo.get_attribute("aria-required") == "false"  # empty is allowed: the recipe's defaults
        dom_click(browser, combo)
        combo.send_keys("ort_int8_static")
        option = wait.until(ec.visibility_of_element_located(
            (By.XPATH, "//*[starts-with(normalize-space(), 'ort_int8_static: ONNX Runtime calibrated QDQ')]")))
        options = browser.find_elements(By.CSS_SELECTOR, "[id^='react-select'][id*='-option-']")
        assert options, "the multi-select lists no options"
        assert option.text.startswith("ort_int8_static: ")  # values_display: the name and what the variant is
        combo.send_keys(Keys.ENTER)  # picks the highlighted option, as a user's Enter does
        wait.until(lambda _: "ort_int8_static" in variants.find_element(
            By.CSS_SELECTOR, "input[name='element_variants']").get_attribute("value"))
        browser.save_screenshot(str(tmp_path / "form.png"))
        submit = browser.find_elements(By.XPATH, "//button[normalize-space()='Trigger']")[-1]  # the modal's own
        dom_click(browser, submit)
        deadline = time.monotonic() + 180  # the UI posts the run; a busy scheduler may take a while to list it
        runs = []
        while time.monotonic() < deadline and not runs:
            runs = [r for r in airflow.request("GET", f"/dags/{DAG}/dagRuns", params={"limit": 100,
                                                                                      "order_by": "-run_after"})["dag_runs"]
                    if (r.get("conf") or {}).get("model_name") == model]  # fmt: skip
            time.sleep(1)
    assert runs, f"no run of {model} was triggered from the form"
    conf = runs[0]["conf"]
    assert conf["variants"] == ["ort_int8_static"]
    assert conf["model_alias"] == "champion" and conf.get("model_version") in (None, "")
    state = airflow.wait_for_run(DAG, runs[0]["dag_run_id"], timeout_s=300)
    assert state == "failed"  # no such model: resolve says so
    assert airflow.task_states(DAG, runs[0]["dag_run_id"])["resolve"] == "failed"
