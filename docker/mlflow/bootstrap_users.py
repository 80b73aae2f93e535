"""Create the MLflow service users and their grants, as the MLflow admin; safe to run again.

Runs once per ``docker compose up`` (the ``mlflow-init`` service) against the MLflow server
started with ``--app-name basic-auth``. It signs in as the admin (``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD``) and makes sure that

* the pipeline user (``MLFLOW_PIPELINE_USER`` / ``MLFLOW_PIPELINE_PASSWORD``: Airflow's tasks and
  the ``lmrecsys`` command) has MANAGE on experiments and registered models: it logs runs,
  registers versions, sets tags and moves (and deletes) aliases;
* the serving user (``MLFLOW_SERVING_USER`` / ``MLFLOW_SERVING_PASSWORD``: the BentoML service)
  has READ only: it reads the ``champion`` alias and downloads the bundle, and can change nothing.

Every other authenticated user gets the server's ``default_permission`` (NO_PERMISSIONS in
docker/mlflow/basic_auth.ini). A user that exists already gets its password set to the
configured one, so rotating a password is: change docker/.env, run ``mlflow-init`` again.
"""

from __future__ import annotations

import os
import sys
import time

GRANTS = {
    "MLFLOW_PIPELINE": "MANAGE",
    "MLFLOW_SERVING": "READ",
}
"""Service user (env prefix) -> permission on every experiment and registered model."""
RESOURCE_TYPES = ("experiment", "registered_model")
WAIT_S = 120


def client():
    from mlflow.server import get_app_client

    return get_app_client("basic-auth", tracking_uri=os.environ["MLFLOW_TRACKING_URI"])


def wait_for_server(auth) -> None:
    """The server answers (and the admin can sign in), or exit non-zero after WAIT_S."""
    from mlflow.exceptions import MlflowException

    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            auth.get_user(os.environ["MLFLOW_TRACKING_USERNAME"])
            return
        except (MlflowException, OSError) as exc:
            if time.monotonic() > deadline:
                sys.exit(f"the MLflow server did not accept the admin within {WAIT_S}s: {exc}")
            time.sleep(2)


def ensure_user(auth, username: str, password: str) -> str:
    from mlflow.exceptions import RestException

    try:
        auth.create_user(username, password)
        return "created"
    except RestException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    auth.update_user_password(username, password)
    return "password set"


def grant(auth, username: str, resource_type: str, permission: str) -> None:
    """``permission`` on every resource of the type ("*"), replacing an earlier grant."""
    from mlflow.exceptions import RestException

    try:
        auth.grant_user_permission(username, resource_type, "*", permission)
    except RestException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        auth.revoke_user_permission(username, resource_type, "*")
        auth.grant_user_permission(username, resource_type, "*", permission)


def main() -> int:
    auth = client()
    wait_for_server(auth)
    for prefix, permission in GRANTS.items():
        username, password = os.environ[f"{prefix}_USER"], os.environ[f"{prefix}_PASSWORD"]
        if username == os.environ["MLFLOW_TRACKING_USERNAME"]:
            sys.exit(f"{prefix}_USER must not be the admin user")
        done = ensure_user(auth, username, password)
        for resource_type in RESOURCE_TYPES:
            grant(auth, username, resource_type, permission)
        print(f"{username}: {done}; {permission} on every {' and '.join(RESOURCE_TYPES)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
