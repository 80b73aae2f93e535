#!/bin/sh
# Entrypoint of the Airflow, serving and MLflow images: refuse placeholder secrets, then run the command.
set -eu

# docker/.env.example ships "change-me" for every secret. Starting with one would leave a
# service reachable with a published password, so stop and name what still needs a value.
placeholders=$(env | grep -F 'change-me' | cut -d= -f1 | sort | tr '\n' ' ' || true)
if [ -n "${placeholders}" ]; then
    echo "refusing to start: these variables still hold the 'change-me' placeholder from docker/.env.example: ${placeholders}" >&2
    echo "set real values in docker/.env (see docs/deployment.md, 'Secrets')" >&2
    exit 64
fi

# Airflow's simple auth manager reads its users' passwords from a JSON file; write it from the
# environment so the admin password lives only in docker/.env (or a Kubernetes secret).
if [ -n "${AIRFLOW_ADMIN_PASSWORD:-}" ] && [ -n "${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-}" ]; then
    python - <<'PY'
import json, os, pathlib
path = pathlib.Path(os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
path.parent.mkdir(parents=True, exist_ok=True)
tmp = path.with_suffix(".tmp")
tmp.write_text(json.dumps({"admin": os.environ["AIRFLOW_ADMIN_PASSWORD"]}))
tmp.chmod(0o600)
tmp.replace(path)
PY
fi

# MLflow's auth app reads its user store's URL from a config file, which cannot refer to the
# environment; write a private copy of the image's template with MLFLOW_AUTH_DATABASE_URI in it
# (the URL holds the database password, so the copy is mode 600 and never part of the image).
if [ -n "${MLFLOW_AUTH_CONFIG_TEMPLATE:-}" ] && [ -n "${MLFLOW_AUTH_CONFIG_PATH:-}" ]; then
    python - <<'PY'
import configparser, os, pathlib
config = configparser.ConfigParser(interpolation=None)
config.read(os.environ["MLFLOW_AUTH_CONFIG_TEMPLATE"])
url = os.environ.get("MLFLOW_AUTH_DATABASE_URI")
if url:  # else the template's own store (a file in the container: one container only)
    config["mlflow"]["database_uri"] = url.replace("%", "%%")  # MLflow reads it with %-interpolation
path = pathlib.Path(os.environ["MLFLOW_AUTH_CONFIG_PATH"])
path.parent.mkdir(parents=True, exist_ok=True)
tmp = path.with_suffix(".tmp")
with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
    config.write(handle)
tmp.chmod(0o600)
tmp.replace(path)
PY
fi

exec "$@"
