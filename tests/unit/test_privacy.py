"""Forgetting a user: the store forgets at once, the tombstone holds no id, ingest and the trigger follow,
the next run trains cold and is promoted for the erasure, and the audit lists what is left."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest
from typer.testing import CliRunner

from components.cli import app
from components.data.erasure import erasure_key, user_key
from components.errors import LmRecsysError
from components.feedback.store import FeedbackEvent, FeedbackStore
from components.feedback.trigger import claim_trigger, feedback_backlog
from components.ingest import ingest
from components.privacy import audit_user, erasure_requests, forget_user
from components.validation.runner import validate_snapshot


def _store(settings):
    return FeedbackStore(settings.feedback_url)


@pytest.fixture
def with_feedback(settings):
    """An accepted snapshot of the tiny data set, and feedback from user 2 (and user 3) in the store."""
    validate_snapshot(settings, ingest(settings))
    store = _store(settings)
    try:
        now = time.time()
        store.append([FeedbackEvent("2", "4", "like", event_ts=now, event_id=f"u2-{i}") for i in range(3)])
        store.append([FeedbackEvent("3", "1", "like", event_ts=now, event_id="u3-1")])
    finally:
        store.close()
    return settings


def test_forget_deletes_now_and_keeps_only_a_keyed_hash(with_feedback):
    settings = with_feedback
    result = forget_user(settings, "2", "user asked by email (ticket 42)")
    assert result["known"] and result["new_request"] and result["events_deleted"] == 3 and result["state"] == "pending"
    store = _store(settings)
    try:
        assert store.user_event_count("2") == 0 and store.user_event_count("3") == 1
        (row,) = store.erasures().to_dict("records")
    finally:
        store.close()
    assert row["user_key"] == user_key(erasure_key(settings), "2") and len(row["user_key"]) == 64
    assert "2" not in {str(v) for k, v in row.items() if k not in ("events_deleted", "requested_at", "updated_at")}
    assert (settings.root / "erasure.key").stat().st_mode & 0o777 == 0o600

    again = forget_user(settings, "2", "second request")  # idempotent: one request, the first reason
    assert not again["new_request"] and again["events_deleted"] == 0
    assert [r["reason"] for r in erasure_requests(settings)] == ["user asked by email (ticket 42)"]

    unknown = forget_user(settings, "999", "user asked by email")
    assert not unknown["known"] and "nothing to forget" in unknown["message"]
    assert len(erasure_requests(settings)) == 1
    with pytest.raises(LmRecsysError, match="not valid"):
        forget_user(settings, "a\x00b", "bad id")
    with pytest.raises(LmRecsysError, match="--reason is required"):
        forget_user(settings, "3", "  ")


def test_forget_deletes_the_users_impressions_and_the_audit_lists_them(with_feedback):
    settings = with_feedback
    store = _store(settings)
    try:
        shown = {"arm": "champion", "model_version": "1", "endpoint": "recommend", "latency_ms": 1.0}
        store.log_impressions(
            [
                {**shown, "recommendation_id": "rec-u2", "user_id": "2", "item_ids": ["4", "5"]},
                {**shown, "recommendation_id": "rec-u3", "user_id": "3", "item_ids": ["1"]},
            ]
        )
        store.append([FeedbackEvent("2", "5", "click", event_id="u2-click", recommendation_id="rec-u2", position=1)])
    finally:
        store.close()
    places = {p.get("table"): p["rows"] for p in audit_user(settings, "2")["places"] if p["place"] == "feedback store"}
    assert places == {"feedback_events": 4, "impressions": 1, "feedback_attributions": 1}
    forget_user(settings, "2", "user asked by email")
    assert [p["place"] for p in audit_user(settings, "2")["places"]] == ["snapshot"]
    store = _store(settings)
    try:
        assert store.impression("rec-u2") is None and store.impression("rec-u3") is not None  # only user 2's
        assert store.user_impression_counts("2") == {"impressions": 0, "feedback_attributions": 0}
    finally:
        store.close()


def test_the_next_snapshot_leaves_the_user_out_even_from_the_source(with_feedback):
    settings = with_feedback
    before = audit_user(settings, "2")
    assert {p["place"] for p in before["places"]} == {"feedback store", "snapshot"}
    forget_user(settings, "2", "user asked by email")
    snapshot = validate_snapshot(settings, ingest(settings))
    users = set(snapshot.interactions()["user_id"])
    assert 2 not in users and {1, 3} <= users
    erasure = snapshot.manifest["erasure"]
    assert erasure == {"rows_removed": 2, "user_keys": [user_key(erasure_key(settings), "2")]}  # 2 source ratings
    places = audit_user(settings, "2")["places"]
    assert [p["place"] for p in places] == ["snapshot"]  # only the older snapshot is left for the purge
    assert places[0]["snapshot_id"] != snapshot.snapshot_id


def test_an_erasure_request_triggers_exactly_one_run(with_feedback):
    settings = with_feedback
    assert not feedback_backlog(settings).due  # 4 events, below the default threshold of 100
    forget_user(settings, "2", "user asked by email")
    backlog = claim_trigger(settings)
    assert backlog.due and "1 erasure request(s)" in backlog.reason
    assert not feedback_backlog(settings).due  # claimed: the same request fires no second run


def test_cli_forget_audit_and_forgotten(with_feedback, monkeypatch):
    settings = with_feedback
    monkeypatch.setenv("LMRECSYS_DATA_ROOT", str(settings.data_root))
    monkeypatch.setenv("LMRECSYS_INGEST__SOURCE", str(settings.ingest.source))
    runner = CliRunner()
    audit = runner.invoke(app, ["users", "audit", "3", "--json"])
    assert audit.exit_code == 1 and json.loads(audit.stdout)["found"] == 2
    forgot = runner.invoke(app, ["users", "forget", "3", "--reason", "user asked by email", "--json"])
    assert forgot.exit_code == 0 and json.loads(forgot.stdout)["events_deleted"] == 1
    listed = json.loads(runner.invoke(app, ["users", "forgotten", "--json"]).stdout)
    assert [r["state"] for r in listed] == ["pending"]
    assert all(value != "3" for row in listed for value in row.values()) and "user_id" not in listed[0]  # a hash only
    assert listed[0]["user_key"] == user_key(erasure_key(settings), "3")
    assert runner.invoke(app, ["users", "audit", "12345", "--json"]).exit_code == 0


def test_the_next_run_trains_cold_and_is_promoted_for_the_erasure(small_loop, tmp_path):
    runner = CliRunner()
    first = runner.invoke(app, ["pipeline", "run", "--json"])
    assert first.exit_code == 0, first.output
    assert runner.invoke(app, ["users", "forget", "1", "--reason", "user asked by email"]).exit_code == 0
    second = runner.invoke(app, ["pipeline", "run", "--json"])
    assert second.exit_code == 0, second.output
    decision = json.loads(second.stdout)
    assert decision["decision"] == "promoted" and decision["reason"].startswith("erasure: 1 erasure request(s)")
    assert decision["erasures_applied"] == 1
    from mlflow import MlflowClient

    tags = MlflowClient(f"sqlite:///{tmp_path / 'root' / 'mlflow.db'}").get_run(decision["run_id"]).data.tags
    assert int(tags["erasure.rows_removed"]) > 0 and tags["validation.override"] == "False"
    assert tags["feedback.quarantined"] == "{}" and tags["validation.alerts"] == "0"
    listed = json.loads(runner.invoke(app, ["users", "forgotten", "--json"]).stdout)
    assert [r["state"] for r in listed] == ["done"]  # serving-clean, then purged
    assert listed[0]["detail"]["serving_clean"]["version"] == decision["version"]
    purge = decision["purge"]
    assert purge["versions_retired"] == ["1"] and len(purge["run_folders_deleted"]) == 1
    assert len(purge["snapshots_rewritten"]) == 1
    history = json.loads(runner.invoke(app, ["models", "history", "--json"]).stdout)
    assert any(str(e.get("reason", "")).startswith("erasure:") for e in history)
    assert {e["version"]: e["retired"] for e in history} == {"1": "erasure", "2": None}
    table = runner.invoke(app, ["models", "history"]).stdout
    assert "retired" in table and "erasure" in table
    versions = {v["version"]: v for v in json.loads(runner.invoke(app, ["models", "list", "--json"]).stdout)}
    assert versions["1"]["retired"] == "erasure" and versions["2"]["retired"] is None
    rollback = runner.invoke(app, ["models", "rollback", "--reason", "try the old one"])
    assert rollback.exit_code == 1 and "no previous champion" in rollback.output  # version 1 is out of reach
    audit = runner.invoke(app, ["users", "audit", "1", "--json"])
    assert audit.exit_code == 0, audit.stdout
    assert json.loads(audit.stdout) == {"user_id": "1", "found": 0, "places": []}
    for path in (tmp_path / "root").rglob("*.parquet"):  # an independent scan of every Parquet file
        frame = pd.read_parquet(path)
        if "user_id" in frame:
            assert "1" not in set(frame["user_id"].astype(str)), path


def test_retention_keeps_the_newest_snapshots_and_versions(small_loop, monkeypatch):
    root = small_loop
    monkeypatch.setenv("LMRECSYS_TRAIN__CANDIDATES", '["popularity", "ease"]')
    monkeypatch.setenv("LMRECSYS_PRIVACY__KEEP_SNAPSHOTS", "1")
    monkeypatch.setenv("LMRECSYS_PRIVACY__KEEP_MODEL_VERSIONS", "1")
    runner = CliRunner()
    first = json.loads(runner.invoke(app, ["pipeline", "run", "--json"]).stdout)
    store = FeedbackStore(f"sqlite:///{root / 'feedback.db'}")
    try:
        store.append([FeedbackEvent("5", "3", "like", event_ts=time.time(), event_id="fresh-like")])
    finally:
        store.close()
    second = runner.invoke(app, ["pipeline", "run", "--json"])
    assert second.exit_code == 0, second.output
    decision = json.loads(second.stdout)
    assert decision["decision"] == "promoted" and decision["snapshot_id"] != first["snapshot_id"]
    retention = decision["purge"]["retention"]
    assert retention["versions_retired"] == ["1"] and retention["snapshots_deleted"] == [first["snapshot_id"]]
    assert len(retention["run_folders_deleted"]) == 1
    assert sorted(p.name for p in (root / "snapshots").iterdir()) == [decision["snapshot_id"]]
    versions = {v["version"]: v["retired"] for v in json.loads(runner.invoke(app, ["models", "list", "--json"]).stdout)}
    assert versions == {"1": "retention", "2": None}
