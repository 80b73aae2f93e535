"""MLflow tracking, the model registry, the champion/challenger gate, history and rollback.

The served artifact is a pyfunc (:class:`RecommenderPyfunc`) carrying a serving bundle. A new
version gets alias ``challenger``; ``champion`` moves only through :func:`promote_if_better` (the
gate), :func:`force_promote` or :func:`rollback` (humans). Each records its decision as tags on the
version, and every move of ``champion`` is appended to a durable promotion log kept as tags on the
registered model (``champion_log.000001``, ...), from which :func:`champion_history` answers
"which version was champion when, and why". Moves happen under a promotion lock (a PostgreSQL
advisory lock, or an ``fcntl`` file lock next to the SQLite store), so racing promotions leave
exactly one champion and a gap-free log.
"""

from __future__ import annotations

import fcntl
import functools
import getpass
import hashlib
import json
import logging
import math
import os
import re
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from components.errors import RegistryError
from components.settings import Settings

log = logging.getLogger(__name__)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
CHAMPION, CHALLENGER = "champion", "challenger"
LOG_TAG_PREFIX = "champion_log."
"""Registered-model tags ``champion_log.<seq>`` hold one JSON event per move of ``champion``."""
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
"""MLflow's own defaults (7 retries, factor 2, 120 s) keep a caller waiting for minutes when the
tracking server is down; these give up after about 10 s on a refused connection. Set the
variables in the environment to override them."""
LOCK_TIMEOUT_S = 120.0
"""Longest wait for the promotion lock; it is held only for a few registry calls."""
MAX_REASON_CHARS = 2000


class RecommenderPyfunc(mlflow.pyfunc.PythonModel):
    """A pyfunc over a serving bundle. ``predict`` takes rows of (user_id, k) and returns top-k.

    Fast paths (serving) call ``unwrap_python_model().engine`` directly.
    """

    def load_context(self, context):
        from components.engine import ServingEngine

        self.engine = ServingEngine(Path(context.artifacts["bundle"]))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        rows = []
        for record in model_input.to_dict("records"):
            user_id = self.engine.normalise_id(record["user_id"])
            k = int(record.get("k", 10) or 10)
            recs, source = self.engine.recommend_history(self.engine.history_for(user_id), k)
            rows += [{"user_id": user_id, "item_id": r.item_id, "title": r.title, "score": r.score, "rank": r.rank, "source": source} for r in recs]
        return pd.DataFrame(rows, columns=["user_id", "item_id", "title", "score", "rank", "source"])


def configure(settings: Settings) -> MlflowClient:
    """Point MLflow at the configured backend and make sure the experiment exists.

    For a tracking server (``http(s)://``) the client's retries are bounded first
    (:data:`HTTP_RETRY_DEFAULTS`), so a server that is down gives a :class:`RegistryError` in
    seconds rather than minutes.
    """
    if settings.tracking_uri.startswith(("http://", "https://")):
        for name, value in HTTP_RETRY_DEFAULTS.items():
            os.environ.setdefault(name, value)
    mlflow.set_tracking_uri(settings.tracking_uri)
    client = MlflowClient(settings.tracking_uri)
    try:
        experiment = client.get_experiment_by_name(settings.registry.experiment_name)
        if experiment is None:
            artifact_location = None
            if not settings.tracking_uri.startswith("http"):
                Path(settings.artifact_root).mkdir(parents=True, exist_ok=True)
                artifact_location = Path(settings.artifact_root).resolve().as_uri()
            client.create_experiment(settings.registry.experiment_name, artifact_location=artifact_location)
    except MlflowException as exc:
        raise RegistryError(
            f"cannot use the MLflow tracking store at {redact_url(settings.tracking_uri)} "
            f"(gave up after {os.environ.get('MLFLOW_HTTP_REQUEST_MAX_RETRIES', 'the default')} retries for a server): {exc}. "
            "Check that the tracking server or database is running and LMRECSYS_REGISTRY__TRACKING_URI is right."
        ) from exc
    mlflow.set_experiment(settings.registry.experiment_name)
    return client


def get_alias_version(client: MlflowClient, name: str, alias: str):
    """The model version behind an alias, or None when the model or alias does not exist."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise RegistryError(f"cannot read alias {alias!r} of {name!r}: {exc}") from exc


def log_bundle_model(bundle_dir: Path, registered_name: str) -> tuple[str, str]:
    """Log the bundle as a pyfunc in the active run, register it, return (version, model_uri)."""
    info = mlflow.pyfunc.log_model(
        name="recommender",
        python_model=RecommenderPyfunc(),
        artifacts={"bundle": str(bundle_dir)},
        registered_model_name=registered_name,
        pip_requirements=[],  # the lm-recsys package itself must be importable where the model loads
    )
    return str(info.registered_model_version), info.model_uri


def smoke_test(model_uri: str, tracking_uri: str, user_id=None, timeout_s: float = 300) -> tuple[bool, str]:
    """Load the logged pyfunc and predict in a fresh process: proves the artifact is complete."""
    code = (
        "import sys, json, mlflow, pandas as pd; "
        "mlflow.set_tracking_uri(sys.argv[2]); m = mlflow.pyfunc.load_model(sys.argv[1]); "
        "e = m.unwrap_python_model().engine; "
        "u = json.loads(sys.argv[3]) if sys.argv[3] != 'null' else next(iter(e.histories), 0); "
        "out = m.predict(pd.DataFrame([{'user_id': u, 'k': 5}])); "
        "assert len(out) > 0, 'no recommendations'; print('ok', len(out))"
    )
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, model_uri, tracking_uri, json.dumps(user_id)],
            capture_output=True, text=True, timeout=timeout_s, env=env,
        )
    except subprocess.TimeoutExpired:
        return False, f"smoke test timed out after {timeout_s}s"
    if done.returncode != 0:
        return False, "smoke test failed: " + (done.stderr.strip().splitlines() or ["no output"])[-1]
    return True, done.stdout.strip()


def record_decision(client: MlflowClient, name: str, version: str, decision: dict) -> None:
    for key, value in decision.items():
        client.set_model_version_tag(name, version, f"gate.{key}", str(value))


def promote_if_better(
    client: MlflowClient,
    settings: Settings,
    version: str,
    challenger_metric: float,
    champion_metric: float | None,
    popularity_metric: float | None,
    model_uri: str,
    *,
    expected_champion: str | None = None,
    smoke_user=None,
) -> dict:
    """The gate: move ``champion`` to ``version`` only if every condition holds; record why.

    ``expected_champion`` is the version the challenger was compared with; if the alias moved
    since, the comparison is stale and the challenger is rejected rather than promoted blindly.
    """
    name = settings.registry.model_name
    client.set_registered_model_alias(name, CHALLENGER, version)
    current = get_alias_version(client, name, CHAMPION)
    metric = settings.registry.gate_metric
    reasons = []
    if current is not None and str(current.version) == str(version):
        return {"decision": "promoted", "reason": f"version {version} is already the champion", "metric": metric}
    if current is not None and expected_champion is not None and str(current.version) != str(expected_champion):
        reasons.append(f"the champion moved from version {expected_champion} to {current.version} after evaluation; re-run to compare")
    elif current is not None and expected_champion is None:
        reasons.append(f"version {current.version} became champion after evaluation; re-run to compare")
    if challenger_metric is None or not math.isfinite(challenger_metric):
        reasons.append(f"the challenger's validation {metric} is {challenger_metric} (no evaluation users?)")
    elif current is not None and champion_metric is not None and challenger_metric < champion_metric - settings.registry.tolerance:
        reasons.append(f"validation {metric} {challenger_metric:.4f} is below the champion's {champion_metric:.4f} (tolerance {settings.registry.tolerance})")
    elif popularity_metric is not None and challenger_metric <= popularity_metric:
        reasons.append(f"validation {metric} {challenger_metric:.4f} does not beat popularity's {popularity_metric:.4f}")
    smoke_ok, smoke_msg = (False, "skipped") if reasons else smoke_test(model_uri, settings.tracking_uri, smoke_user)
    if not reasons and not smoke_ok:
        reasons.append(smoke_msg)
    promoted = not reasons
    decision = {
        "decision": "promoted" if promoted else "rejected",
        "reason": "; ".join(reasons) if reasons else (f"first champion" if current is None else f"at least as good as version {current.version}"),
        "metric": metric,
        "challenger_metric": f"{challenger_metric:.6f}",
        "champion_metric": "none" if champion_metric is None else f"{champion_metric:.6f}",
        "previous_champion": "none" if current is None else str(current.version),
        "smoke_test": smoke_msg,
        "decided_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "by": "gate",
    }
    record_decision(client, name, version, decision)
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
        client.set_model_version_tag(name, version, "champion_since", decision["decided_at"])
    log.info("version %s %s: %s", version, decision["decision"], decision["reason"])
    return decision


def load_champion_engine(settings: Settings):
    """The current champion's serving engine, or None when there is no champion."""
    client = configure(settings)
    current = get_alias_version(client, settings.registry.model_name, CHAMPION)
    if current is None:
        return None, None
    model = mlflow.pyfunc.load_model(f"models:/{settings.registry.model_name}@{CHAMPION}")
    return model.unwrap_python_model().engine, current.version


def champion_scores(engine, catalogue_ids: np.ndarray, histories) -> np.ndarray:
    """Score new-split histories with the champion, mapping between the two catalogues.

    Items the champion never saw score -inf, so the comparison is on the same split and items.
    """
    mapping = np.array([engine.catalogue.index.get(i.item() if hasattr(i, "item") else i, -1) for i in catalogue_ids])
    known = mapping >= 0
    from components.dataset import History

    translated = []
    for h in histories:
        champion_items = mapping[h.items]
        keep = champion_items >= 0
        translated.append(History(champion_items[keep], [e for e, k in zip(h.events, keep) if k], h.values[keep], h.timestamps[keep]))
    scores = np.full((len(histories), len(catalogue_ids)), -np.inf, dtype=np.float32)
    for start in range(0, len(histories), 256):
        block = engine.model.score(translated[start : start + 256]) if len(engine.catalogue) else np.zeros((0, 0))
        scores[start : start + 256, known] = block[:, mapping[known]]
    return scores
