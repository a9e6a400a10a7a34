"""The settings tree: defaults, environment overrides, blank values, errors, Kubernetes placement, README table."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from modelops.settings import (
    REPO_ROOT,
    Settings,
    SettingsError,
    get_settings,
)
from modelops.settings_docs import TABLE_END, TABLE_START, main, readme_with_table, settings_table


def test_defaults_without_any_variable() -> None:
    s = Settings.from_env({})
    assert s.repo_root == REPO_ROOT
    assert s.stack_dir == REPO_ROOT / ".stack" and s.stack_file == REPO_ROOT / ".stack" / "stack.json"
    assert s.tools_dir == REPO_ROOT / ".tools"
    assert s.worker_python == REPO_ROOT / ".venv-worker" / "bin" / "python"
    assert (s.execution, s.artifacts_bucket, s.triton_bucket, s.mlflow_bucket) == (
        "local", "modelops-artifacts", "triton", "mlflow")
    assert s.benchmark_pool == ""
    assert s.tritonserver_bin == REPO_ROOT / ".tools/pytriton/pytriton/tritonserver/bin/tritonserver"
    assert s.triton_backends_dir == REPO_ROOT / ".tools/pytriton/pytriton/tritonserver/backends"
    assert s.perf_analyzer_bin == REPO_ROOT / ".tools/tritonclient/tritonclient-2.51.0.data/data/bin/perf_analyzer"
    assert s.kubernetes.node_selector == {"nvidia.com/gpu.present": "true"}
    assert (s.kubernetes.gpu_count, s.kubernetes.pool) == (1, "gpu")
    assert s.triggers.aliases == ("champion", "production") and s.triggers.reconcile_interval_s == 60
    assert s.triggers.nightly_cron == "0 2 * * *" and not s.triggers.on_version_created
    assert s.stack.port_offset == 0 and s.webhook.secret is None and s.tools.modelopt_python is None
    assert not s.is_set("stack_dir")


def test_environment_is_read_at_call_time(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODELOPS_EXECUTION", "kubernetes")
    monkeypatch.setenv("MODELOPS_TOOLS_DIR", str(tmp_path))
    monkeypatch.setenv("MODELOPS_PERF_ANALYZER", "/opt/pa")
    monkeypatch.setenv("MODELOPS_TRIGGER_ALIASES", "gold, champion,gold")
    monkeypatch.setenv("MODELOPS_WEBHOOK_SECRET", " s3cret ")
    s = get_settings()
    assert s.execution == "kubernetes" and s.is_set("execution")
    assert s.tritonserver_bin == tmp_path / "pytriton/pytriton/tritonserver/bin/tritonserver"
    assert s.perf_analyzer_bin == Path("/opt/pa")
    assert s.triggers.aliases == ("gold", "champion")
    assert s.webhook.secret.get_secret_value() == "s3cret" and "s3cret" not in repr(s)
    monkeypatch.setenv("MODELOPS_EXECUTION", "local")
    assert get_settings().execution == "local"


def test_an_explicit_mapping_replaces_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELOPS_TRITON_BUCKET", "from-process")
    assert Settings.from_env({"MODELOPS_MLFLOW_BUCKET": "b"}).triton_bucket == "triton"
    assert Settings.from_env({"MODELOPS_MLFLOW_BUCKET": "b"}).mlflow_bucket == "b"
    assert Settings.from_env().triton_bucket == "from-process"


def test_blank_means_default() -> None:
    s = Settings.from_env({"MODELOPS_EXECUTION": "  ", "MODELOPS_K8S_GPU_COUNT": "", "MODELOPS_STACK_DIR": " ",
                           "MODELOPS_K8S_NODE_SELECTOR": "", "MODELOPS_PORT_OFFSET": "\t"})
    assert s.execution == "local" and s.kubernetes.gpu_count == 1 and s.stack_dir == REPO_ROOT / ".stack"
    assert s.kubernetes.node_selector == {"nvidia.com/gpu.present": "true"} and s.stack.port_offset == 0
    assert not s.is_set("stack_dir")


def test_relative_directories_resolve_against_the_working_directory(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    s = Settings.from_env({"MODELOPS_STACK_DIR": "st", "MODELOPS_TOOLS_DIR": "./tools", "MODELOPS_PORT_OFFSET": " 7 "})
    assert s.stack_dir == tmp_path / "st" and s.tools_dir == tmp_path / "tools" and s.stack.port_offset == 7


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"MODELOPS_EXECUTION": "foo"}, "MODELOPS_EXECUTION must be 'local' or 'kubernetes', got 'foo'"),
        ({"MODELOPS_PORT_OFFSET": "ten"}, "MODELOPS_PORT_OFFSET must be an integer, got 'ten'"),
        ({"MODELOPS_K8S_NODE_SELECTOR": "{gpu: yes"},
         'MODELOPS_K8S_NODE_SELECTOR must be a JSON object such as {"label": "value"}, got \'{gpu: yes\''),
        ({"MODELOPS_K8S_NODE_SELECTOR": "[1]"}, "MODELOPS_K8S_NODE_SELECTOR must be a valid dictionary, got [1]"),
        ({"MODELOPS_RECONCILE_INTERVAL_S": "0"}, "MODELOPS_RECONCILE_INTERVAL_S must be greater than 0, got '0'"),
        ({"MODELOPS_TRIGGER_SCOPE": "some"}, "MODELOPS_TRIGGER_SCOPE must be 'opted_in' or 'all', got 'some'"),
    ],
)
def test_bad_value_is_one_line_naming_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as err:
        Settings.from_env(environ)
    assert str(err.value) == message


def test_several_bad_values_are_all_named_on_one_line() -> None:
    with pytest.raises(ValueError) as err:  # SettingsError is a ValueError
        Settings.from_env({"MODELOPS_K8S_GPU_COUNT": "two", "MODELOPS_TRIGGER_ON_VERSION_CREATED": "maybe"})
    text = str(err.value)
    assert "\n" not in text and "MODELOPS_K8S_GPU_COUNT must be an integer, got 'two'" in text
    assert "MODELOPS_TRIGGER_ON_VERSION_CREATED must be a valid boolean" in text


def test_kubernetes_group_and_gpu_product_selector() -> None:
    k8s = Settings.from_env({
        "MODELOPS_K8S_NAMESPACE": "ml-serving",
        "MODELOPS_K8S_GPU_RESOURCE": "nvidia.com/mig-1g.10gb",
        "MODELOPS_K8S_GPU_COUNT": "2",
        "MODELOPS_K8S_GPU_PRODUCT": "NVIDIA-H100-80GB-HBM3",
    }).kubernetes
    assert (k8s.namespace, k8s.gpu_resource, k8s.gpu_count) == ("ml-serving", "nvidia.com/mig-1g.10gb", 2)
    assert k8s.node_selector == {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    custom = Settings.from_env({"MODELOPS_K8S_NODE_SELECTOR": '{"pool": "gpu-a"}',
                                "MODELOPS_K8S_GPU_PRODUCT": "NVIDIA-L4"}).kubernetes
    assert custom.node_selector == {"pool": "gpu-a", "nvidia.com/gpu.product": "NVIDIA-L4"}
    assert Settings.from_env({"MODELOPS_K8S_NODE_SELECTOR": "{}"}).kubernetes.node_selector == {}


def test_settings_are_immutable() -> None:
    s = Settings.from_env({})
    with pytest.raises(ValueError):
        s.execution = "kubernetes"  # type: ignore[misc]


def test_every_variable_is_declared_once_and_described() -> None:
    rows = [line.split("|") for line in settings_table().splitlines()[2:]]
    names = [row[1].strip().strip("`") for row in rows]
    assert len(names) == len(set(names)) and all(n.startswith("MODELOPS_") for n in names)
    assert {"MODELOPS_EXECUTION", "MODELOPS_K8S_GPU_PRODUCT", "MODELOPS_PORT_OFFSET", "MODELOPS_WEBHOOK_DB",
            "MODELOPS_NIGHTLY_CRON", "MODELOPS_MODELOPT_PYTHON", "MODELOPS_WORKER_VERSIONS_FILE"} <= set(names)
    assert all(row[3].strip() for row in rows)  # a description on every row


def _hand_read_variables(path: Path) -> list[str]:
    """``os.environ.get("MODELOPS_X")`` / ``os.getenv(...)`` / ``environ["MODELOPS_X"]`` reads in one file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "getenv"):
            args = node.args[:1]
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            args = [node.slice]
        else:
            continue
        found += [a.value for a in args if isinstance(a, ast.Constant) and str(a.value).startswith("MODELOPS_")]
    return found


def test_no_module_parses_modelops_variables_by_hand() -> None:
    folders = ("modelops", "modelops_airflow", "operators", "plugins", "dags", "bench")
    offenders = {
        str(path.relative_to(REPO_ROOT)): names
        for folder in folders
        for path in sorted((REPO_ROOT / folder).rglob("*.py"))
        if path.name != "settings.py" and (names := _hand_read_variables(path))
    }
    assert offenders == {}, f"read these through modelops.settings instead: {offenders}"


def test_readme_table_is_current() -> None:
    readme = (REPO_ROOT / "docs" / "configuration.md").read_text()
    assert TABLE_START in readme and TABLE_END in readme, "docs/configuration.md lost its settings-table markers"
    assert readme_with_table(readme) == readme, (
        "docs/configuration.md's settings table is stale: run `make docs` "
        "(.venv/bin/python -m modelops.settings_docs --update-readme docs/configuration.md)"
    )


def test_update_readme_rewrites_only_the_marked_block(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# T\n\nbefore\n{TABLE_START}\n| old | table |\n{TABLE_END}\nafter\n")
    assert main(["--update-readme", str(readme)]) == 0
    text = readme.read_text()
    assert text == f"# T\n\nbefore\n{TABLE_START}\n{settings_table()}{TABLE_END}\nafter\n"
    assert main(["--update-readme", str(readme)]) == 0 and readme.read_text() == text  # idempotent
    assert main(["--markdown"]) == 0 and capsys.readouterr().out == settings_table()
    readme.write_text("no markers\n")
    with pytest.raises(SettingsError, match="settings-table:start"):
        main(["--update-readme", str(readme)])
