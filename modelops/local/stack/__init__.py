"""The embedded ModelOps stack: SeaweedFS (S3), MLflow, Triton, the gateway, Prometheus, the reconciler and Airflow.

Python API (used by ``modelops stack``, the demo and the test fixtures)::

    from modelops.local import stack
    info = stack.up()                 # start what is not running; returns the status dict
    env = stack.client_env(info)      # AWS_*, MLFLOW_TRACKING_URI, AIRFLOW_CONN_*, MODELOPS_STACK_DIR
    stack.down()                      # stop (data kept); stack.down(purge=True) also deletes the state

State lives in ``Settings.stack_dir`` (``MODELOPS_STACK_DIR``); ports shift with ``MODELOPS_PORT_OFFSET``.
"""

from __future__ import annotations

from modelops.local.stack.endpoints import SERVICES, client_env, s3_config
from modelops.local.stack.manager import down, status, up
from modelops.local.stack.state import PortBusyError, StackError

__all__ = ["SERVICES", "PortBusyError", "StackError", "client_env", "down", "s3_config", "status", "up"]
