"""ModelOps on Airflow: the plugin (MLflow webhook receiver), hooks and the registry poll trigger.

Installed with the project and registered through the ``airflow.plugins`` entry point
(``modelops_airflow.plugin:ModelOpsPlugin``), so Airflow loads it once, from the package, in every
process. Nothing is imported here: the DAG processor, the triggerer and tasks import only what they use.

- :mod:`modelops_airflow.hooks`: ``MlflowHook``, ``TritonHook`` (``HttpHook``), ``ModelOpsS3Hook``
  (``S3Hook``) and ``AirflowApiHook`` (public REST API v2), each with a selectable connection id.
- :mod:`modelops_airflow.triggers`: ``RegistryPollTrigger`` for the ``registry_reconcile`` AssetWatcher.
- :mod:`modelops_airflow.webhook`: the FastAPI app mounted at ``/modelops`` on the API server.
- :mod:`modelops_airflow.plugin`: the ``AirflowPlugin`` class.
"""
