# Airflow image for a cluster deployment (KubernetesExecutor or Celery): the orchestrator environment.
# Not built in CI: this workplace has no Docker engine.
FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:root requirements.txt pyproject.toml /opt/modelops/
RUN pip install --no-cache-dir -r /opt/modelops/requirements.txt
COPY --chown=airflow:root modelops /opt/modelops/modelops
COPY --chown=airflow:root model_recipes /opt/modelops/model_recipes
COPY --chown=airflow:root operators /opt/modelops/operators
COPY --chown=airflow:root modelops_airflow /opt/modelops/modelops_airflow
COPY --chown=airflow:root triton_repo_templates /opt/modelops/triton_repo_templates
COPY --chown=airflow:root dags /opt/airflow/dags
COPY --chown=airflow:root plugins /opt/airflow/plugins
RUN pip install --no-cache-dir --no-deps -e /opt/modelops
ENV MODELOPS_EXECUTION=kubernetes
