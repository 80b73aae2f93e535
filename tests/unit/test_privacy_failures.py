"""Forgetting while a store is down: the feedback store fails the forget clearly and changes nothing;
MLflow down never blocks the forget, and it stops the purge before anything on disk changes, so the
request stays ``serving-clean`` and the purge can be retried."""

from __future__ import annotations

import json
import time

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from components.cli import app
from components.errors import LmRecsysError
from components.feedback.store import FeedbackEvent, FeedbackStore
from components.privacy import erasure_requests, forget_user

DEAD_POSTGRES = "postgresql://lmrecsys@127.0.0.1:9/nowhere"  # the discard port: nothing listens
DEAD_TRACKING = "http://127.0.0.1:9"


def _events_of(settings, user: str) -> int:
    store = FeedbackStore(settings.feedback_url)
    try:
        return store.user_event_count(user)
    finally:
        store.close()


def test_forget_while_the_feedback_store_is_down_fails_clearly_and_changes_nothing(settings, monkeypatch):
    store = FeedbackStore(settings.feedback_url)
    try:
        store.append([FeedbackEvent("2", "4", "like", event_ts=time.time(), event_id=f"u2-{i}") for i in range(2)])
    finally:
        store.close()
    down = settings.model_copy(
        update={"feedback": settings.feedback.model_copy(update={"url": SecretStr(DEAD_POSTGRES)})}
    )
    with pytest.raises(LmRecsysError, match="127.0.0.1:9"):
        forget_user(down, "2", "user asked by email")

    monkeypatch.setenv("LMRECSYS_DATA_ROOT", str(settings.data_root))
    monkeypatch.setenv("LMRECSYS_FEEDBACK__URL", DEAD_POSTGRES)
    result = CliRunner().invoke(app, ["users", "forget", "2", "--reason", "user asked by email"])
    assert result.exit_code != 0 and "nothing was changed" in result.output, result.output
    assert "Traceback" not in result.output

    assert _events_of(settings, "2") == 2 and erasure_requests(settings) == []  # nothing half-applied
    retried = forget_user(settings, "2", "user asked by email")  # the store is back: the retry applies it
    assert retried["events_deleted"] == 2 and _events_of(settings, "2") == 0


def test_mlflow_down_never_blocks_a_forget_and_stops_the_purge_before_any_change(small_loop, monkeypatch):
    root = small_loop
    runner = CliRunner()
    first = runner.invoke(app, ["pipeline", "run", "--json"])
    assert first.exit_code == 0, first.output
    snapshot_id = json.loads(first.stdout)["snapshot_id"]
    on_disk = sorted(str(p.relative_to(root)) for p in root.rglob("*.parquet"))

    monkeypatch.setenv("LMRECSYS_REGISTRY__TRACKING_URI", DEAD_TRACKING)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    forgot = runner.invoke(app, ["users", "forget", "1", "--reason", "user asked by email", "--json"])
    assert forgot.exit_code == 0, forgot.output  # the forget needs only the feedback store
    assert json.loads(forgot.stdout)["state"] == "pending"

    # As after a promotion that trained without the user: the purge is due, and MLflow is down.
    store = FeedbackStore(f"sqlite:///{root / 'feedback.db'}")
    try:
        store.set_erasure_state(store.erasures()["user_key"], "serving-clean")
    finally:
        store.close()
    purge = runner.invoke(app, ["users", "purge"])
    assert purge.exit_code != 0 and "the purge stopped; the requests stay serving-clean" in purge.output, purge.output
    assert (root / "snapshots" / snapshot_id).is_dir()
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*.parquet")) == on_disk  # nothing on disk changed
    assert [r["state"] for r in json.loads(runner.invoke(app, ["users", "forgotten", "--json"]).stdout)] == [
        "serving-clean"
    ]

    # MLflow is back, but the champion still holds the user: the retried purge refuses, and still changes nothing.
    monkeypatch.delenv("LMRECSYS_REGISTRY__TRACKING_URI")
    refused = runner.invoke(app, ["users", "purge"])
    assert refused.exit_code != 0 and "holds a forgotten user; purge refused" in refused.output, refused.output
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*.parquet")) == on_disk


def test_a_forget_during_a_run_blocks_that_runs_promotion_and_the_next_run_applies_it(small_loop):
    from components.pipeline import (
        run_pipeline,
        stage_embed,
        stage_evaluate,
        stage_ingest,
        stage_promote,
        stage_register,
        stage_train,
        stage_validate,
    )
    from components.registry.tracking import CHAMPION, aliased_version, configure
    from components.settings import load_settings

    settings = load_settings()
    assert run_pipeline(settings, "first")["decision"] == "promoted"
    store = FeedbackStore(settings.feedback_url)
    try:  # new feedback, so the second run's snapshot differs from the first
        store.append([FeedbackEvent("5", "3", "like", event_ts=time.time(), event_id="u5-late")])
    finally:
        store.close()

    snapshot_id = stage_ingest(settings)  # the second run is under way: its snapshot holds user 1 …
    stage_validate(settings, snapshot_id)
    run_dir = stage_train(settings, snapshot_id, stage_embed(settings, snapshot_id), "second")
    forget_user(settings, "1", "user asked by email")  # … when the request arrives
    registration = stage_register(settings, stage_evaluate(settings, run_dir))
    decision = stage_promote(settings, registration)
    assert decision["decision"] == "rejected" and "arrived after snapshot" in decision["reason"], decision
    assert aliased_version(configure(settings), settings.registry.model_name, CHAMPION) == "1"
    assert [r["state"] for r in erasure_requests(settings)] == ["pending"]

    third = run_pipeline(settings, "third")  # the next run applies the request
    assert third["decision"] == "promoted" and third["reason"].startswith("erasure"), third
    assert [r["state"] for r in erasure_requests(settings)] == ["done"]
