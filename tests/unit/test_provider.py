"""The Airflow provider: entry point, connection types and their fields, as Airflow's ProvidersManager reads them."""

from __future__ import annotations

import importlib

from modelops_airflow.provider_info import get_provider_info


def test_every_connection_type_is_its_hooks_and_the_triton_token_is_a_secret():
    info = get_provider_info()
    assert info["package-name"] == "modelops" and info["versions"]
    for conn in info["connection-types"]:
        module, _, cls = conn["hook-class-name"].rpartition(".")
        hook = getattr(importlib.import_module(module), cls)
        assert hook.conn_type == conn["connection-type"], conn["hook-class-name"]
        assert module in info["hooks"][0]["python-modules"]
    fields = {c["connection-type"]: c.get("conn-fields", {}) for c in info["connection-types"]}
    assert fields["modelops_triton"]["admin_token"]["schema"]["format"] == "password"
    assert fields["modelops_openwebui"]["gateway_key"]["schema"]["format"] == "password"
    assert "format" not in fields["modelops_triton"]["grpc_port"]["schema"]


def test_airflow_discovers_the_provider_its_hooks_and_fields():
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    assert "modelops" in manager.providers
    hooks = manager.hooks
    assert hooks["modelops_triton"].hook_class_name == "modelops_airflow.hooks.triton.TritonHook"
    widgets = manager.connection_form_widgets
    assert widgets["extra__modelops_triton__admin_token"].is_sensitive
    assert not widgets["extra__modelops_triton__grpc_port"].is_sensitive
    assert "modelops_airflow.plugin.ModelOpsPlugin" in {p.plugin_class for p in manager.plugins}


def test_step_links_point_at_the_mlflow_run_and_its_report():
    from modelops_airflow.links import SERVING_LINKS, STEP_LINKS, mlflow_run_url, report_url
    from modelops_airflow.operators.step_operator import LocalStepOperator

    url = mlflow_run_url("http://mlflow:5000/", "7", "abc123")
    assert url == "http://mlflow:5000/#/experiments/7/runs/abc123"
    assert report_url(url, "abc123") == "http://mlflow:5000/get-artifact?path=report.html&run_uuid=abc123"
    assert {link.name for link in LocalStepOperator.operator_extra_links} == {"MLflow run", "Run report"}
    assert set(get_provider_info()["extra-links"]) == {f"{type(x).__module__}.{type(x).__name__}"
                                                       for x in STEP_LINKS + SERVING_LINKS}
