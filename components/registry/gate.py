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


import mlflow
import numpy as np
import pandas as pd
import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from components.errors import ChampionUnreadable, RegistryError
from components.settings import Settings, redact_url

log = logging.getLogger(__name__)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
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
    """Write a gate decision onto the version as ``gate.<key>`` tags."""
    for key, value in decision.items():
        client.set_model_version_tag(name, version, f"gate.{key}", str(value))


def _registry_errors(function):
    """Turn MLflow client failures (server down after retries, store errors) into RegistryError."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except MlflowException as exc:
            raise RegistryError(f"{function.__name__} failed against the MLflow registry: {exc}") from exc

    return wrapper


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# -- the promotion lock ----------------------------------------------------------------------------


def promotion_lock_target(settings: Settings) -> str:
    """Where the promotion lock lives: a ``postgresql://`` URL or a lock-file path.

    In order: ``registry.lock_url`` when set (a shared PostgreSQL for several hosts behind one
    tracking server); the tracking store itself when it is PostgreSQL; a file next to the SQLite
    store; otherwise (a tracking server with no lock URL) a file under the data root, which
    serialises promotions on this host only.
    """
    configured = getattr(settings.registry, "lock_url", None)
    if configured:
        return configured
    uri = settings.tracking_uri
    if uri.startswith("postgresql"):
        return uri
    if uri.startswith("sqlite:///"):
        return uri[len("sqlite:///"):] + ".promotion.lock"
    return str(settings.root / "registry.promotion.lock")


def _advisory_key(name: str) -> int:
    """A stable signed 64-bit key per registered model for pg_advisory_lock."""
    return int.from_bytes(hashlib.sha256(f"lm-recsys-promotion:{name}".encode()).digest()[:8], "big", signed=True)


@contextmanager
def _postgres_lock(url: str, key: int, timeout_s: float):
    import psycopg2

    dsn = re.sub(r"^postgresql\+\w+://", "postgresql://", url)
    try:
        connection = psycopg2.connect(dsn, connect_timeout=10)
    except psycopg2.Error as exc:
        raise RegistryError(f"cannot reach the promotion lock database {redact_url(url)}: {exc}") from exc
    connection.autocommit = True
    try:
        deadline = time.monotonic() + timeout_s
        with connection.cursor() as cursor:
            while True:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", (key,))
                if cursor.fetchone()[0]:
                    break
                if time.monotonic() > deadline:
                    raise RegistryError(f"another promotion has held the PostgreSQL advisory lock {key} for over {timeout_s:.0f}s; try again")
                time.sleep(0.1)
        try:
            yield
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", (key,))
    finally:
        connection.close()  # a session-level advisory lock also ends with its connection


@contextmanager
def _file_lock(path: Path, timeout_s: float):
    path.parent.mkdir(parents=True, exist_ok=True)
    # flock locks belong to the open file description, so two threads of one process exclude
    # each other as well as two processes; the kernel drops the lock when the holder dies.
    with open(path, "a+") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RegistryError(f"another promotion has held the lock file {path} for over {timeout_s:.0f}s; try again") from None
                time.sleep(0.05)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {_now()}\n")
            handle.flush()
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextmanager
def promotion_lock(settings: Settings, timeout_s: float = LOCK_TIMEOUT_S):
    """Hold the lock that serialises every move of ``champion`` and ``challenger``."""
    target = promotion_lock_target(settings)
    if target.startswith("postgresql"):
        with _postgres_lock(target, _advisory_key(settings.registry.model_name), timeout_s):
            yield
    else:
        with _file_lock(Path(target), timeout_s):
            yield


# -- the promotion log -----------------------------------------------------------------------------


def _read_events(client: MlflowClient, name: str) -> list[dict]:
    """The recorded moves of ``champion``, oldest first (empty when the model does not exist)."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    events = []
    for key, value in (model.tags or {}).items():
        if key.startswith(LOG_TAG_PREFIX):
            try:
                events.append(json.loads(value))
            except json.JSONDecodeError:
                events.append({"seq": int(key[len(LOG_TAG_PREFIX):]), "action": "unreadable", "raw": value})
    return sorted(events, key=lambda event: int(event["seq"]))


def _append_event(client: MlflowClient, name: str, events: list[dict], event: dict) -> dict:
    """Append one event to the log; the caller holds the promotion lock, so seq is unique."""
    seq = (int(events[-1]["seq"]) if events else 0) + 1
    event = {"seq": seq, "at": _now(), **event}
    event["reason"] = str(event.get("reason", ""))[:MAX_REASON_CHARS]
    client.set_registered_model_tag(name, f"{LOG_TAG_PREFIX}{seq:06d}", json.dumps(event, sort_keys=True))
    events.append(event)
    return event


def _alias(client: MlflowClient, name: str, alias: str) -> str | None:
    found = get_alias_version(client, name, alias)
    return None if found is None else str(found.version)


def _reconcile(client: MlflowClient, name: str, events: list[dict]) -> None:
    """Record an alias move the log does not know about (interrupted move, or set by hand in the UI)."""
    current = _alias(client, name, CHAMPION)
    logged = str(events[-1]["version"]) if events and events[-1].get("version") is not None else None
    if current != logged:
        _append_event(client, name, events, {
            "action": "untracked", "by": "unknown", "version": current, "previous": logged,
            "reason": "the champion alias was " + ("removed" if current is None else f"moved to version {current}")
            + " outside a recorded promotion (an interrupted promotion, or a change made by hand)",
        })


def _champion_stack(events: list[dict]) -> list[str]:
    """Replay the log into the chain of champions that rollback walks back along."""
    stack: list[str] = []
    for event in events:
        version = event.get("version")
        if event.get("action") == "rollback":
            while stack and stack[-1] != str(version):
                stack.pop()
            if not stack and version is not None:
                stack.append(str(version))
        elif version is None:
            stack.clear()  # the alias was removed: nothing before it is a champion to return to
        elif not stack or stack[-1] != str(version):
            stack.append(str(version))
    return stack


def _move_champion(client: MlflowClient, name: str, version: str, event: dict) -> dict:
    """Move ``champion`` to ``version`` and log why; the caller holds the lock and reconciled."""
    events = _read_events(client, name)
    client.set_registered_model_alias(name, CHAMPION, version)
    recorded = _append_event(client, name, events, {"version": str(version), **event})
    client.set_model_version_tag(name, version, "champion_since", recorded["at"])
    return recorded


def _set_challenger(client: MlflowClient, name: str, version: str) -> None:
    """Point ``challenger`` at ``version`` unless a newer version already holds it."""
    current = _alias(client, name, CHALLENGER)
    if current is None or int(version) >= int(current):
        client.set_registered_model_alias(name, CHALLENGER, version)


def _mark_abandoned(client: MlflowClient, name: str, decided_version: str) -> list[str]:
    """Tag older versions that never reached the gate (their run died after registering)."""
    marked = []
    aliased = {str(v) for v in (client.get_registered_model(name).aliases or {}).values()}
    for found in client.search_model_versions(f"name='{name}'"):
        tags = found.tags or {}
        if int(found.version) < int(decided_version) and "gate.decision" not in tags and "human.action" not in tags and str(found.version) not in aliased:
            record_decision(client, name, str(found.version), {
                "decision": "abandoned",
                "reason": f"registered but never reached the gate (its run stopped); version {decided_version} was decided after it",
                "decided_at": _now(),
                "by": "gate",
            })
            marked.append(str(found.version))
    return marked


# -- the gate --------------------------------------------------------------------------------------


@_registry_errors
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
    champion_unreadable: str | None = None,
) -> dict:
    """The gate: move ``champion`` to ``version`` only if every condition holds; record why.

    ``expected_champion`` is the version the challenger was compared with; if the alias moved
    since, the comparison is stale and the challenger is rejected rather than promoted blindly.
    The metric checks and the smoke test run outside the promotion lock; the staleness check,
    the decision tags and the alias move run under it, so two racing gates cannot both win.
    """
    name = settings.registry.model_name
    version = str(version)
    with promotion_lock(settings):
        _set_challenger(client, name, version)
    current = _alias(client, name, CHAMPION)
    metric = settings.registry.gate_metric
    if current == version:
        return {"decision": "promoted", "reason": f"version {version} is already the champion", "metric": metric}
    reasons = []
    if challenger_metric is None or not math.isfinite(challenger_metric):
        reasons.append(f"the challenger's validation {metric} is {challenger_metric} (no evaluation users?)")
    elif current is not None and champion_metric is not None and challenger_metric < champion_metric - settings.registry.tolerance:
        reasons.append(f"validation {metric} {challenger_metric:.4f} is below the champion's {champion_metric:.4f} (tolerance {settings.registry.tolerance})")
    elif popularity_metric is not None and challenger_metric <= popularity_metric:
        reasons.append(f"validation {metric} {challenger_metric:.4f} does not beat popularity's {popularity_metric:.4f}")
    stale_before = _staleness(current, expected_champion)
    smoke_ok, smoke_msg = (False, "skipped") if reasons or stale_before else smoke_test(model_uri, settings.tracking_uri, smoke_user)
    if not reasons and not stale_before and not smoke_ok:
        reasons.append(smoke_msg)
    with promotion_lock(settings):
        events = _read_events(client, name)
        _reconcile(client, name, events)
        current = _alias(client, name, CHAMPION)  # re-read: another gate may have moved it meanwhile
        if current == version:
            return {"decision": "promoted", "reason": f"version {version} is already the champion", "metric": metric}
        stale = _staleness(current, expected_champion)
        if stale:
            reasons.insert(0, stale)
        promoted = not reasons
        decision = {
            "decision": "promoted" if promoted else "rejected",
            "reason": "; ".join(reasons) if reasons else _promotion_reason(current, champion_unreadable),
            "metric": metric,
            "challenger_metric": f"{challenger_metric:.6f}",
            "champion_metric": "none" if champion_metric is None else f"{champion_metric:.6f}",
            "previous_champion": "none" if current is None else current,
            "smoke_test": smoke_msg,
            "decided_at": _now(),
            "by": "gate",
        }
        record_decision(client, name, version, decision)
        if promoted:
            _move_champion(client, name, version, {
                "action": "promoted", "by": "gate", "at": decision["decided_at"], "previous": current, "reason": decision["reason"], "metric": metric,
                "challenger_metric": decision["challenger_metric"], "champion_metric": decision["champion_metric"],
            })
        _mark_abandoned(client, name, version)
    log.info("version %s %s: %s", version, decision["decision"], decision["reason"])
    return decision


def _promotion_reason(current: str | None, champion_unreadable: str | None) -> str:
    if current is None:
        return "first champion"
    if champion_unreadable:
        return f"version {current} could not be read ({champion_unreadable}), so it could be neither compared nor served"
    return f"at least as good as version {current}"


def _staleness(current: str | None, expected_champion: str | None) -> str | None:
    """Why the challenger's comparison no longer holds, or None when it still does."""
    if current is not None and expected_champion is not None and current != str(expected_champion):
        return f"the champion moved from version {expected_champion} to {current} after evaluation; re-run to compare"
    if current is not None and expected_champion is None:
        return f"version {current} became champion after evaluation; re-run to compare"
    return None


# -- history, rollback and forced promotion (what the CLI calls) -----------------------------------


def _require_reason(reason: str, what: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise ValueError(f"{what} needs a reason (for example --reason 'CTR dropped after v7'); it is recorded in the history")
    return reason


@_registry_errors
def champion_history(settings: Settings) -> list[dict]:
    """Every move of ``champion``, oldest first: which version, since and until when, by whom, why.

    Each entry is a promotion-log event (``seq``, ``at``, ``action`` in promoted / forced /
    rollback / untracked, ``by`` in gate / human / unknown, ``version``, ``previous``, ``reason``
    and, for the gate, the metrics) plus ``until`` (the next move's time, or None) and
    ``current``. An alias moved outside the log appears as an ``untracked`` entry that is not yet
    recorded (``recorded`` False); the next promotion or rollback records it.
    """
    client = configure(settings)
    name = settings.registry.model_name
    events = [{**event, "recorded": True} for event in _read_events(client, name)]
    current = _alias(client, name, CHAMPION)
    logged = str(events[-1]["version"]) if events and events[-1].get("version") is not None else None
    if current != logged:
        events.append({
            "seq": None, "at": None, "action": "untracked", "by": "unknown", "version": current, "previous": logged,
            "reason": "the champion alias differs from the last recorded move", "recorded": False,
        })
    for index, event in enumerate(events):
        event["until"] = events[index + 1]["at"] if index + 1 < len(events) else None
        event["current"] = index == len(events) - 1 and current is not None and str(event.get("version")) == current
    return events


@_registry_errors
def list_versions(settings: Settings) -> list[dict]:
    """Every registered version, oldest first, with its aliases, lineage and gate decision."""
    client = configure(settings)
    name = settings.registry.model_name
    try:
        found = client.search_model_versions(f"name='{name}'")
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    # search results carry no aliases on every store; the registered model has them all
    aliases: dict[str, list[str]] = {}
    for alias, alias_version in (client.get_registered_model(name).aliases or {}).items() if found else ():
        aliases.setdefault(str(alias_version), []).append(alias)
    out = []
    for mv in sorted(found, key=lambda v: int(v.version)):
        tags = mv.tags or {}
        out.append({
            "version": str(mv.version),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mv.creation_timestamp / 1000)) if mv.creation_timestamp else None,
            "aliases": sorted(aliases.get(str(mv.version), [])),
            "run_id": mv.run_id,
            "snapshot_id": tags.get("snapshot_id"),
            "model_kind": tags.get("model_kind"),
            "decision": tags.get("gate.decision", "undecided"),
            "reason": tags.get("gate.reason"),
            "decided_at": tags.get("gate.decided_at"),
            "metric": tags.get("gate.metric"),
            "challenger_metric": tags.get("gate.challenger_metric"),
            "champion_metric": tags.get("gate.champion_metric"),
            "champion_since": tags.get("champion_since"),
            "human_action": tags.get("human.action"),
            "human_reason": tags.get("human.reason"),
            "rolled_back_at": tags.get("rolled_back_at"),
        })
    return out


def _tag_human_action(client: MlflowClient, name: str, version: str, action: str, reason: str, at: str) -> None:
    for key, value in {"action": action, "reason": reason[:MAX_REASON_CHARS], "at": at, "by": "human", "user": _user()}.items():
        client.set_model_version_tag(name, version, f"human.{key}", value)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        return "unknown"


@_registry_errors
def rollback(settings: Settings, reason: str) -> dict:
    """Move ``champion`` back to the version that held it before the current one.

    Rolling back again walks further back along the chain of champions. Raises RegistryError
    when there is no champion or no earlier champion to return to (the alias is left as is).
    Returns the recorded event: ``version`` (the new champion), ``previous`` (the one rolled back
    from), ``reason``, ``by`` = human, ``at``, ``seq``.
    """
    reason = _require_reason(reason, "rollback")
    client = configure(settings)
    name = settings.registry.model_name
    with promotion_lock(settings):
        events = _read_events(client, name)
        _reconcile(client, name, events)
        current = _alias(client, name, CHAMPION)
        if current is None:
            raise RegistryError(f"{name!r} has no champion, so there is nothing to roll back; use promote --version N --force")
        stack = _champion_stack(events)
        while stack and stack[-1] == current:
            stack.pop()
        target = None
        while stack:
            candidate = stack.pop()
            try:
                client.get_model_version(name, candidate)
                target = candidate
                break
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                log.warning("previous champion version %s was deleted; rolling back past it", candidate)
        if target is None:
            raise RegistryError(
                f"version {current} of {name!r} has no previous champion to roll back to "
                "(it is the first in the history); use promote --version N --force to pick one"
            )
        event = _move_champion(client, name, target, {"action": "rollback", "by": "human", "user": _user(), "previous": current, "reason": reason})
        _tag_human_action(client, name, target, "rollback", reason, event["at"])
        client.set_model_version_tag(name, current, "rolled_back_at", event["at"])
        client.set_model_version_tag(name, current, "rolled_back_reason", reason[:MAX_REASON_CHARS])
    log.warning("champion of %s rolled back from version %s to %s: %s", name, current, target, reason)
    return event


@_registry_errors
def force_promote(settings: Settings, version: str | int, reason: str) -> dict:
    """Make ``version`` the champion without the metric comparison, recorded as forced by a human.

    The load-and-predict smoke test still runs (in a fresh process): a model that cannot load
    would take serving down, which no reason justifies. Raises RegistryError for an unknown
    version or a failed smoke test; returns the recorded event (``changed`` False and no new
    event when the version already is the champion).
    """
    reason = _require_reason(reason, "a forced promotion")
    client = configure(settings)
    name = settings.registry.model_name
    version = str(version)
    try:
        target = client.get_model_version(name, version)
    except MlflowException as exc:
        raise RegistryError(f"{name!r} has no version {version}: {exc.message}") from exc
    if _alias(client, name, CHAMPION) == version:
        return {"changed": False, "version": version, "reason": f"version {version} is already the champion"}
    ok, message = smoke_test(f"models:/{name}/{version}", settings.tracking_uri)
    if not ok:
        raise RegistryError(f"refusing to force version {version} of {name!r}: {message} (source {target.source})")
    with promotion_lock(settings):
        events = _read_events(client, name)
        _reconcile(client, name, events)
        current = _alias(client, name, CHAMPION)
        if current == version:
            return {"changed": False, "version": version, "reason": f"version {version} is already the champion"}
        event = _move_champion(client, name, version, {"action": "forced", "by": "human", "user": _user(), "previous": current, "reason": reason, "smoke_test": message})
        _tag_human_action(client, name, version, "forced", reason, event["at"])
    log.warning("version %s of %s force-promoted over %s: %s", version, name, current, reason)
    return {"changed": True, **event}


def settings_for_logging(settings: Settings) -> dict:
    """The full settings as JSON-ready data with secrets (tokens, URL passwords) masked."""

    def clean(value, key=""):
        if isinstance(value, dict):
            return {k: clean(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v, key) for v in value]
        if isinstance(value, str):
            if value and any(word in key.lower() for word in ("token", "password", "secret")):
                return "***"
            return redact_url(value)
        return value

    data = clean(settings.model_dump(mode="json"))
    data["resolved"] = {"tracking_uri": redact_url(settings.tracking_uri), "artifact_root": settings.artifact_root, "data_root": str(settings.root)}
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


def load_champion_engine(settings: Settings):
    """The current champion's serving engine and version; ``(None, None)`` without a champion.

    Raises :class:`ChampionUnreadable` (carrying the version) when the registry names a champion
    whose artifact cannot be loaded; a registry that cannot be reached raises as usual.
    """
    client = configure(settings)
    current = get_alias_version(client, settings.registry.model_name, CHAMPION)
    if current is None:
        return None, None
    try:
        model = mlflow.pyfunc.load_model(f"models:/{settings.registry.model_name}@{CHAMPION}")
        engine = model.unwrap_python_model().engine
        engine.validation_model()  # loaded now, so a corrupt file shows here and not mid-evaluation
    except requests.RequestException:
        raise  # the tracking server is unreachable: a retry may succeed, the artifact is not at fault
    except (OSError, ValueError, KeyError, EOFError) as exc:  # missing or corrupt artifact files
        raise ChampionUnreadable(f"{type(exc).__name__}: {exc}"[:500], version=str(current.version)) from exc
    return engine, current.version


def champion_scores(engine, catalogue_ids: np.ndarray, histories) -> np.ndarray:
    """Score new-split histories with the champion, mapping between the two catalogues.

    Uses the champion's validation-side fit: the served model was fitted on every interaction, so
    it has seen the items this split holds out and would score itself far too well. Items the
    champion never saw score -inf, so the comparison is on the same split and items.
    """
    model = engine.validation_model()
    mapping = engine.catalogue.positions(catalogue_ids)
    known = mapping >= 0
    from components.data.dataset import History

    translated = []
    for h in histories:
        champion_items = mapping[h.items]
        keep = champion_items >= 0
        translated.append(History(champion_items[keep], [e for e, k in zip(h.events, keep) if k], h.values[keep], h.timestamps[keep]))
    scores = np.full((len(histories), len(catalogue_ids)), -np.inf, dtype=np.float32)
    for start in range(0, len(histories), 256):
        block = model.score(translated[start : start + 256]) if len(engine.catalogue) else np.zeros((0, 0))
        scores[start : start + 256, known] = block[:, mapping[known]]
    return scores
