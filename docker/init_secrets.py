"""Write the secrets and env files ``docker/compose.yaml`` reads: random values, files mode 0600, git-ignored.

``python docker/init_secrets.py [--dir docker]`` writes ``secrets/*`` and ``env/*.env`` under ``--dir``; a file
that exists is kept (re-running never rotates a secret a database already holds). Nothing is printed but the
paths: read a value from its file when you need it (``cat docker/secrets/grafana_admin_password``).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path

S3_ENDPOINT = "http://seaweedfs:8333"
ADMIN_HEADER = "X-ModelOps-Admin"  # modelops.serving.triton.admin.ADMIN_HEADER


def _token(n: int = 32) -> str:
    return secrets.token_urlsafe(n)


def _fernet_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def plan(values: dict[str, str]) -> dict[str, Callable[[], str]]:
    """File (relative to the output folder) -> function of its content; ``values`` holds the shared secrets."""
    v = values
    aws = f"[default]\naws_access_key_id = {v['s3_access_key']}\naws_secret_access_key = {v['s3_secret_key']}\n"
    identities = {"identities": [{"name": "modelops", "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                                  "credentials": [{"accessKey": v["s3_access_key"], "secretKey": v["s3_secret_key"]}]}]}
    connections = {
        "mlflow_default": {"conn_type": "modelops_mlflow", "host": "mlflow", "port": 5000, "schema": "http"},
        "s3_default": {"conn_type": "aws", "login": v["s3_access_key"], "password": v["s3_secret_key"],
                       "extra": {"endpoint_url": S3_ENDPOINT, "region_name": "us-east-1",
                                 "config_kwargs": {"s3": {"addressing_style": "path"}}}},
        "triton_default": {"conn_type": "modelops_triton", "host": "triton", "port": 8000, "schema": "http",
                           "extra": {"grpc_port": 8001, "metrics_port": 8002, "admin_header": ADMIN_HEADER,
                                     "admin_token": v["triton_admin_token"]}},
        "gateway_default": {"conn_type": "modelops_gateway", "host": "gateway", "port": 9000, "schema": "http"},
        "prometheus_default": {"conn_type": "modelops_prometheus", "host": "prometheus", "port": 9090, "schema": "http"},
        # as a browser reaches it: the run page's "Grafana dashboard" link (compose publishes 127.0.0.1:3000)
        "grafana_default": {"conn_type": "modelops_grafana", "host": "127.0.0.1", "port": 3000, "schema": "http"},
        # gateway_key: create one with `modelops keys create` in the gateway container, then add it here.
        "openwebui_default": {"conn_type": "modelops_openwebui", "host": "open-webui", "port": 8080, "schema": "http",
                              "login": v["openwebui_admin_email"], "password": v["openwebui_admin_password"],
                              "extra": {"gateway_url": "http://gateway:9000", "gateway_key": ""}},
    }
    return {
        "secrets/postgres_password": lambda: v["postgres_password"],
        "secrets/airflow_db_password": lambda: v["airflow_db_password"],
        "secrets/mlflow_db_password": lambda: v["mlflow_db_password"],
        "secrets/airflow_db_conn": lambda: f"postgresql+psycopg2://airflow:{v['airflow_db_password']}@postgres:5432/airflow",
        "secrets/airflow_fernet_key": _fernet_key,
        "secrets/airflow_api_secret_key": _token,
        "secrets/airflow_jwt_secret": _token,
        "secrets/airflow_connections.json": lambda: json.dumps(connections, indent=2),
        "secrets/aws_credentials": lambda: aws,
        "secrets/s3_identities.json": lambda: json.dumps(identities, indent=2),
        "secrets/triton_admin_token": lambda: v["triton_admin_token"],
        "secrets/grafana_admin_password": _token,
        "env/mlflow.env": lambda: f"MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY={_fernet_key()}\n",
        "env/openwebui.env": lambda: (f"WEBUI_SECRET_KEY={_token()}\nWEBUI_ADMIN_EMAIL={v['openwebui_admin_email']}\n"
                                      f"WEBUI_ADMIN_PASSWORD={v['openwebui_admin_password']}\nWEBUI_ADMIN_NAME=ModelOps admin\n"),
    }


def write(out: Path) -> list[Path]:
    """Write every missing file under ``out``; return the paths written."""
    values = {name: _token(24) for name in ("postgres_password", "airflow_db_password", "mlflow_db_password",
                                           "s3_secret_key", "triton_admin_token", "openwebui_admin_password")}
    values["s3_access_key"] = "modelops" + secrets.token_hex(6)
    values["openwebui_admin_email"] = "admin@modelops.local"
    if any((out / rel).exists() for rel in plan(values)):
        # a partial earlier run: the files that share a value must agree, so keep all or write all
        missing = [rel for rel in plan(values) if not (out / rel).exists()]
        if missing:
            raise SystemExit(f"init_secrets: {out} holds some of the files but not {', '.join(missing)}; "
                             "remove its secrets/ and env/ folders and run again")
        return []
    written = []
    for rel, content in plan(values).items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(content())
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command line: ``--dir`` (default: this script's folder)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    written = write(args.dir)
    for path in written:
        print(path)
    if not written:
        print(f"init_secrets: every file exists under {args.dir}; nothing written", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
