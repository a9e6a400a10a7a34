"""The local development stack, the demo and the ``modelops`` CLI: not part of the core library.

Production runs the same core (steps, serving, tracking) under Airflow and Kubernetes; this package starts
SeaweedFS, MLflow, Triton and Airflow on 127.0.0.1 for one machine (``modelops stack up``).
"""
