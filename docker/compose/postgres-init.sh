#!/bin/bash
# First start of the compose Postgres: one database and one owner each for Airflow and MLflow, with the
# passwords of the docker secrets (never in the compose file or the image).
set -euo pipefail
airflow_pw=$(cat /run/secrets/airflow_db_password)
mlflow_pw=$(cat /run/secrets/mlflow_db_password)
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" \
  -v airflow_pw="$airflow_pw" -v mlflow_pw="$mlflow_pw" <<'SQL'
CREATE USER airflow WITH PASSWORD :'airflow_pw';
CREATE DATABASE airflow OWNER airflow;
CREATE USER mlflow WITH PASSWORD :'mlflow_pw';
CREATE DATABASE mlflow OWNER mlflow;
SQL
