"""Operator actions on the data, each recorded in MLflow as well as where it acts.

- :func:`accept_snapshot`: accept a snapshot that validation quarantined (``lmrecsys snapshots accept``);
- :func:`quarantine_feedback`: hold stored feedback events back from every later snapshot
  (``lmrecsys feedback quarantine``).

Each action opens an MLflow run in the registry's experiment first (tag ``lmrecsys.kind=operator``,
with the action, the reason, the actor and what it touched). When MLflow cannot be reached, the
action fails before it changes anything; when the action fails, its run is marked FAILED.
"""

from __future__ import annotations

import getpass
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from components.errors import LmRecsysError, RegistryError
from components.settings import Settings

OPERATOR_TAG = "lmrecsys.kind"


def default_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@contextmanager
def audited(settings: Settings, action: str, reason: str, actor: str, **params) -> Iterator[dict]:
    """An MLflow run recording one operator action; the body fills the yielded dict with its outcome."""
    import mlflow

    from components.registry.tracking import configure

    tags = {OPERATOR_TAG: "operator", "operator.action": action, "operator.actor": actor, "operator.reason": reason}
    tags.update({f"operator.{k}": str(v) for k, v in params.items() if v is not None})
    try:
        client = configure(settings)
        experiment = client.get_experiment_by_name(settings.registry.experiment_name)
        run = client.create_run(experiment.experiment_id, run_name=f"operator: {action}", tags=tags)
    except Exception as exc:  # any failure to record means the action must not happen
        raise RegistryError(f"cannot record {action!r} in MLflow, so nothing was changed: {exc}") from exc
    outcome: dict = {}
    try:
        yield outcome
    except BaseException:
        client.set_terminated(run.info.run_id, status="FAILED")
        raise
    with mlflow.start_run(run_id=run.info.run_id):
        mlflow.log_dict(
            {"action": action, "reason": reason, "actor": actor, **params, **outcome}, "operator/action.json"
        )
        mlflow.set_tags({f"operator.result.{k}": str(v)[:500] for k, v in outcome.items()})
    outcome["mlflow_run_id"] = run.info.run_id


def accept_snapshot(settings: Settings, snapshot_id: str, reason: str, actor: str | None = None) -> dict:
    """Accept a quarantined snapshot on the record (docs/operations.md, "Accepting a rejected snapshot")."""
    from components.validation.override import accept_snapshot as accept
    from components.validation.override import check_reason

    actor = actor or default_actor()
    reason = check_reason(reason)
    with audited(settings, "snapshots accept", reason, actor, snapshot_id=snapshot_id) as outcome:
        snapshot, record = accept(settings, snapshot_id, reason, actor)
        outcome.update(snapshot_id=snapshot.snapshot_id, overrode=len(record["overrode"]), path=str(snapshot.path))
    return {**outcome, "overrode_checks": record["overrode"]}


def parse_since(value: str) -> float:
    """Epoch seconds, or an ISO-8601 time (``2026-12-03T10:00:00+00:00``; no zone means UTC)."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise LmRecsysError(f"--since {value!r} is neither epoch seconds nor an ISO-8601 time") from None
    if moment.tzinfo is None:
        from datetime import UTC

        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def quarantine_feedback(
    settings: Settings,
    *,
    reason: str,
    user_id: str | None = None,
    since: str | None = None,
    event_id: str | None = None,
    actor: str | None = None,
) -> dict:
    """Hold back every stored event matching all the given filters (at least one is required)."""
    from components.feedback.store import FeedbackStore
    from components.validation.override import check_reason

    if user_id is None and since is None and event_id is None:
        raise LmRecsysError("name the events to quarantine: --user ID, --since TS or --event-id ID")
    actor = actor or default_actor()
    reason = check_reason(reason)
    since_s = parse_since(since) if since is not None else None
    store = FeedbackStore(settings.feedback_url)
    try:
        matched = store.select_events(user_id=user_id, since=since_s, event_id=event_id)
        selector = {"user_id": user_id, "since": since_s, "event_id": event_id}
        with audited(settings, "feedback quarantine", reason, actor, **selector) as outcome:
            rows = [
                {**row, "reason": f"operator: {reason}", "origin": "operator", "actor": actor, "snapshot_id": None}
                for row in matched[["event_id", "user_id", "item_id", "event"]].astype(str).to_dict("records")
            ]
            held = store.quarantine(rows)
            outcome.update(matched=len(rows), newly_held=held, already_held=len(rows) - held, at=time.time())
    finally:
        store.close()
    return outcome
