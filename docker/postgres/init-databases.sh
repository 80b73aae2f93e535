#!/bin/sh
# Runs once, when the PostgreSQL volume is first initialised (docker-entrypoint-initdb.d): create
# each service's role and database with roles.sql. Names and passwords come from the environment
# (docker/.env through compose.yaml); a missing password stops the first start.
set -eu
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER}" --dbname "${POSTGRES_DB:-postgres}" \
    -v airflow_db="${AIRFLOW_DB:-airflow}" \
    -v airflow_user="${AIRFLOW_DB_USER:-airflow}" \
    -v airflow_password="${AIRFLOW_DB_PASSWORD:?AIRFLOW_DB_PASSWORD is not set}" \
    -v mlflow_db="${MLFLOW_DB:-mlflow}" \
    -v mlflow_auth_db="${MLFLOW_AUTH_DB:-mlflow_auth}" \
    -v mlflow_user="${MLFLOW_DB_USER:-mlflow}" \
    -v mlflow_password="${MLFLOW_DB_PASSWORD:?MLFLOW_DB_PASSWORD is not set}" \
    -v feedback_db="${FEEDBACK_DB:-lmrecsys_feedback}" \
    -v pipeline_user="${PIPELINE_DB_USER:-lmrecsys_pipeline}" \
    -v pipeline_password="${PIPELINE_DB_PASSWORD:?PIPELINE_DB_PASSWORD is not set}" \
    -v serving_user="${SERVING_DB_USER:-lmrecsys_serving}" \
    -v serving_password="${SERVING_DB_PASSWORD:?SERVING_DB_PASSWORD is not set}" \
    -f "${LMRECSYS_ROLES_SQL:-/opt/lmrecsys/roles.sql}"
