"""ModelOps core library: MLflow registry -> optimized Triton deployments. Importable without Airflow."""

__version__ = "0.1.0"
