#!/bin/sh
# Runs once, when the PostgreSQL volume is first initialised: create the extra databases
# (MLflow's store and the feedback store) beside the one POSTGRES_DB names (Airflow's).
set -eu
for database in ${POSTGRES_EXTRA_DATABASES:-}; do
    echo "creating database ${database}"
    psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER}" --dbname "${POSTGRES_DB}" \
        -c "CREATE DATABASE \"${database}\" OWNER \"${POSTGRES_USER}\""
done
