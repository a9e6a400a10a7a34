"""One optimization run's light steps, without Airflow: resolve (:mod:`modelops.runs.resolve`), select and publish
(:mod:`modelops.runs.outcome`), and :func:`modelops.runs.local.optimize`, which runs a whole optimization from a
notebook, a CI job or ``modelops optimize`` with the heavy steps as local subprocesses. The Airflow tasks
(``operators/pipeline_tasks.py``) call the same functions with clients built by their hooks.
"""
