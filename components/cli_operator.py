"""The operator commands of ``lmrecsys``: accept a rejected snapshot, hold feedback back, list what is held.

``components.cli`` adds them to its ``snapshots`` and ``feedback`` groups. Every action is audited in
MLflow and where it acts (``components.operations``); docs/operations.md says when to use each.
"""

from __future__ import annotations

import typer

from components.cli import EXIT_ERROR, JsonOption, _emit, _fail, _settings, _table, feedback_app, snapshots_app

ReasonOption = typer.Option(..., "--reason", help="Why (recorded in the snapshot or store, and in MLflow).")
ActorOption = typer.Option(None, "--actor", help="Who decides (default: the OS user).")


@snapshots_app.command("accept")
def snapshots_accept(
    snapshot_id: str, reason: str = ReasonOption, actor: str = ActorOption, as_json: bool = JsonOption
):
    """Accept a snapshot that validation quarantined, on the record; the next run may train on it."""
    from components.errors import LmRecsysError
    from components.operations import accept_snapshot

    try:
        result = accept_snapshot(_settings(), snapshot_id, reason, actor)
    except LmRecsysError as exc:
        _fail(f"nothing was changed: {exc}", EXIT_ERROR)
    overrode = "\n  ".join(result["overrode_checks"]) or "(no failed checks were recorded)"
    _emit(
        result,
        as_json,
        f"snapshot {result['snapshot_id']} accepted (MLflow run {result['mlflow_run_id']}); overrode:\n  {overrode}",
    )


@feedback_app.command("quarantine")
def feedback_quarantine(
    reason: str = ReasonOption,
    user: str = typer.Option(None, "--user", help="Every event of this user id."),
    since: str = typer.Option(None, "--since", help="Every event received at or after this time (epoch or ISO)."),
    event_id: str = typer.Option(None, "--event-id", help="This one event."),
    actor: str = ActorOption,
    as_json: bool = JsonOption,
):
    """Hold stored feedback back from every later snapshot (filters combine); nothing is deleted."""
    from components.errors import LmRecsysError
    from components.operations import quarantine_feedback

    try:
        result = quarantine_feedback(
            _settings(), reason=reason, user_id=user, since=since, event_id=event_id, actor=actor
        )
    except LmRecsysError as exc:
        _fail(f"nothing was changed: {exc}", EXIT_ERROR)
    _emit(
        result,
        as_json,
        f"{result['matched']} event(s) matched: {result['newly_held']} now held back, "
        f"{result['already_held']} already were (MLflow run {result['mlflow_run_id']}). "
        "The next pipeline run leaves them out.",
    )


@feedback_app.command("quarantined")
def feedback_quarantined(
    limit: int = typer.Option(50, "--limit", min=1, help="Newest this many."), as_json: bool = JsonOption
):
    """Feedback events held back from snapshots, newest first, with why, by whom and when."""
    from components.feedback.store import FeedbackError, FeedbackStore

    try:
        store = FeedbackStore(_settings().feedback_url)
        try:
            frame = store.quarantined(limit)
        finally:
            store.close()
    except FeedbackError as exc:
        _fail(str(exc))
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    columns = ["event_id", "user_id", "item_id", "event", "reason", "origin", "actor", "snapshot_id"]
    _emit(rows, as_json, _table(rows, columns))
