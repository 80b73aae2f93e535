"""MLflow tracking: pointing MLflow at the backend, the two aliases, and settings as run params.

Every other registry module reaches MLflow through :func:`configure` and reads aliases through
:func:`get_alias_version`; :func:`registry_errors` turns MLflow client failures into
:class:`~components.errors.RegistryError`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from pathlib import Path

import filelock
import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pydantic import SecretBytes, SecretStr

from components.errors import RegistryError
from components.settings import Settings, redact_url

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
CHAMPION, CHALLENGER = "champion", "challenger"
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
"""MLflow's own defaults (7 retries, factor 2, 120 s) keep a caller waiting for minutes when the
tracking server is down; these give up after about 10 s on a refused connection. Set the
variables in the environment to override them."""
SECRET_MASK = "***"
"""What a secret becomes in logged settings."""
SECRET_KEY_WORDS = ("token", "password", "secret")
"""A non-empty string setting whose key contains one of these is masked whatever its type."""


def plain_text(value):
    """The string behind a setting that may be a ``str``, a :class:`pydantic.SecretStr` or None."""
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def configure(settings: Settings) -> MlflowClient:
    """Point MLflow at the configured backend and make sure the experiment exists.

    For a tracking server (``http(s)://``) the client's retries are bounded first
    (:data:`HTTP_RETRY_DEFAULTS`), so a server that is down gives a :class:`RegistryError` in
    seconds rather than minutes.
    """
    tracking_uri = plain_text(settings.tracking_uri)
    if tracking_uri.startswith(("http://", "https://")):
        for name, value in HTTP_RETRY_DEFAULTS.items():
            os.environ.setdefault(name, value)
    mlflow.set_tracking_uri(tracking_uri)
    try:
        with _first_use_lock(tracking_uri):
            client = MlflowClient(tracking_uri)  # its first call creates and migrates a SQLite store
            experiment = client.get_experiment_by_name(settings.registry.experiment_name)
            if experiment is None:
                artifact_location = None
                if not tracking_uri.startswith("http"):
                    Path(settings.artifact_root).mkdir(parents=True, exist_ok=True)
                    artifact_location = Path(settings.artifact_root).resolve().as_uri()
                client.create_experiment(settings.registry.experiment_name, artifact_location=artifact_location)
    except MlflowException as exc:
        retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "the default")
        raise RegistryError(
            f"cannot use the MLflow tracking store at {redact_url(tracking_uri)} "
            f"(gave up after {retries} retries for a server): {exc}. "
            "Check that the tracking server or database is running and LMRECSYS_REGISTRY__TRACKING_URI is right."
        ) from exc
    mlflow.set_experiment(settings.registry.experiment_name)
    return client


def _first_use_lock(tracking_uri: str):
    """For a SQLite store, an exclusive lock on a file beside the database while it is first used.

    MLflow creates and migrates a SQLite store's tables on first use; two processes doing that at once
    (two Celery workers starting tasks on a fresh data root) collide, and the loser's half-done
    migration (a leftover ``_alembic_tmp_*`` table) breaks every later attempt. Under the lock the
    first process migrates and the others find the tables made. Other stores need no lock."""
    if not tracking_uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    return filelock.FileLock(f"{database}.init.lock", timeout=LOCK_WAIT_S)


LOCK_WAIT_S = 300.0
"""How long a process waits for another's first use of a SQLite store (a migration takes seconds)."""


def get_alias_version(client: MlflowClient, name: str, alias: str):
    """The model version behind an alias, or None when the model or alias does not exist."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise RegistryError(f"cannot read alias {alias!r} of {name!r}: {exc}") from exc


def aliased_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version number behind an alias as a string, or None."""
    found = get_alias_version(client, name, alias)
    return None if found is None else str(found.version)


def registry_errors(function):
    """Turn MLflow client failures (server down after retries, store errors) into RegistryError."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except MlflowException as exc:
            raise RegistryError(f"{function.__name__} failed against the MLflow registry: {exc}") from exc

    return wrapper


def utc_now() -> str:
    """The current UTC time as the registry records it (``2026-11-27T21:32:30Z``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _masked(value, raw, key: str = ""):
    """``value`` (JSON-mode dump) with secrets masked; ``raw`` is the same place in the Python-mode dump.

    A :class:`pydantic.SecretStr` (or ``SecretBytes``) is masked by its type, a non-empty string
    under a secret-sounding key by its name, and a URL's password by :func:`redact_url`.
    """
    if isinstance(raw, SecretStr) and "://" in raw.get_secret_value():
        return redact_url(raw.get_secret_value())  # a URL: its password is the secret, the rest says where data lives
    if isinstance(raw, (SecretStr, SecretBytes)):
        return SECRET_MASK
    if isinstance(value, dict):
        raws = raw if isinstance(raw, dict) else {}
        return {k: _masked(v, raws.get(k), k) for k, v in value.items()}
    if isinstance(value, list):
        raws = list(raw) if isinstance(raw, (list, tuple)) else []
        return [_masked(v, raws[i] if i < len(raws) else None, key) for i, v in enumerate(value)]
    if isinstance(value, str):
        if value and any(word in key.lower() for word in SECRET_KEY_WORDS):
            return SECRET_MASK
        return redact_url(value)
    return value


def settings_for_logging(settings: Settings) -> dict:
    """The full settings as JSON-ready data with secrets (secret fields, tokens, URL passwords) masked."""
    data = _masked(settings.model_dump(mode="json"), settings.model_dump())
    data["resolved"] = {
        "tracking_uri": _masked(settings.tracking_uri, settings.tracking_uri),
        "artifact_root": settings.artifact_root,
        "data_root": str(settings.root),
    }
    return data


def flatten_params(data: dict, prefix: str = "") -> dict[str, str]:
    """Nested settings as flat MLflow params (``train.seed`` -> ``42``), values cut to 500 chars."""
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten_params(value, name + "."))
        else:
            out[name] = (json.dumps(value) if isinstance(value, (list, dict)) else str(value))[:500]
    return out
