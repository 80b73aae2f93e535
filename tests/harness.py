"""Test-side names for the local server helpers (the implementation lives in components.localstack)."""

from components.localstack import (  # noqa: F401
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
