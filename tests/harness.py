"""Test-side names for the local server helpers (the implementation lives in devtools.stack)."""

from contextlib import contextmanager

from devtools.stack import (  # noqa: F401
    TELEMETRY_OFF,
    VENV_BIN,
    AirflowStack,
    BentoServer,
    ManagedProcess,
    MlflowServer,
    free_port,
    http_ok,
    wait_for,
)


@contextmanager
def restored_mlflow_state():
    """Undo what ``components.registry.configure`` sets for the whole process (tracking URI,
    active experiment and their environment variables) when a test's registry goes away."""
    import os

    import mlflow
    import mlflow.tracking._tracking_service.utils as tracking_utils
    import mlflow.tracking.fluent as fluent

    saved_env = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")}
    saved_uri = tracking_utils._tracking_uri
    try:
        yield
    finally:
        if mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(saved_uri)
        fluent._active_experiment_id = None
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
