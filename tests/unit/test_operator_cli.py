"""The operator commands against any deployment: what they need is named in one line before anything is called."""

from __future__ import annotations

import pytest

from modelops.local.cli import main

DEPLOYMENT_VARS = ("MLFLOW_TRACKING_URI", "MODELOPS_MLFLOW_URL", "MODELOPS_AIRFLOW_URL", "MODELOPS_GATEWAY_URL", "MODELOPS_OPENWEBUI_URL",
                   "MODELOPS_OPENWEBUI_ADMIN_EMAIL", "MODELOPS_OPENWEBUI_ADMIN_PASSWORD",
                   "MODELOPS_OPENWEBUI_GATEWAY_KEY", "MODELOPS_WEBHOOK_SECRET_FILE")


@pytest.fixture(autouse=True)
def no_deployment(monkeypatch, tmp_path):
    for name in DEPLOYMENT_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODELOPS_STACK_DIR", str(tmp_path / "no-stack"))


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_openwebui_refresh_of_a_deployment_names_every_missing_setting(monkeypatch, capsys):
    monkeypatch.setenv("MODELOPS_OPENWEBUI_URL", "http://webui.example.internal:8080")
    monkeypatch.setenv("MODELOPS_OPENWEBUI_ADMIN_EMAIL", "admin@example.com")
    assert main(["openwebui", "refresh"]) == 1
    err = _error(capsys)
    assert "http://webui.example.internal:8080" in err
    for name in ("MODELOPS_OPENWEBUI_ADMIN_PASSWORD", "MODELOPS_GATEWAY_URL", "MODELOPS_OPENWEBUI_GATEWAY_KEY",
                 "MLFLOW_TRACKING_URI"):
        assert name in err, name
    assert "ADMIN_EMAIL" not in err  # the one that is set is not asked for


def test_openwebui_refresh_without_a_deployment_or_a_stack_says_so(capsys):
    assert main(["openwebui", "refresh"]) == 1
    assert "stack" in _error(capsys)


def test_webhook_of_a_deployment_needs_its_mlflow_and_the_secret_file(monkeypatch, capsys, tmp_path):
    assert main(["webhook", "--airflow-url", "http://airflow.example.internal:8080", "status"]) == 1
    assert "--mlflow-url, MODELOPS_MLFLOW_URL or MLFLOW_TRACKING_URI" in _error(capsys)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example.internal:5000")
    assert main(["webhook", "--airflow-url", "http://airflow.example.internal:8080", "status"]) == 1
    assert "--secret-file or MODELOPS_WEBHOOK_SECRET_FILE" in _error(capsys)


def test_webhook_target_of_a_deployment_points_the_receiver_at_its_airflow(monkeypatch, tmp_path):
    from modelops.local.webhook_cli import RECEIVER_PATH, target

    monkeypatch.setenv("MODELOPS_AIRFLOW_URL", "https://airflow.example.internal/")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example.internal:5000")
    where = target(secret_file=str(tmp_path / "secret"))
    assert where.receiver_url == f"https://airflow.example.internal{RECEIVER_PATH}"
    assert where.secret_file == tmp_path / "secret" and not where.secret_file.exists()  # made on register only
    assert where.client.tracking_uri == "http://mlflow.example.internal:5000"


def test_webhook_register_of_a_deployment_without_a_receiver_is_refused_before_a_secret_is_made(monkeypatch,
                                                                                                   tmp_path, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example.internal:5000")
    secret = tmp_path / "secret"
    assert main(["webhook", "--secret-file", str(secret), "register"]) == 1
    assert "--url or --airflow-url" in _error(capsys)
    assert not secret.exists()
