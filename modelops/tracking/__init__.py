"""MLflow: resolving registry versions, the run record (metrics, plots, HTML report) and model-version tags."""
