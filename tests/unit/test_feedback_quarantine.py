"""Feedback is screened event by event at ingest, never blocks a run by its volume, and operators can
hold events back or accept a rejected snapshot, on the record (store, manifest and MLflow)."""

from __future__ import annotations

import json
import time

import mlflow
import pandas as pd
import pytest
from typer.testing import CliRunner

from components.cli import app
from components.data.snapshots import list_snapshots
from components.errors import InvalidHandle, LmRecsysError, ValidationFailed
from components.feedback.store import FeedbackEvent, FeedbackStore
from components.ingest import REASONS, ingest, screen_feedback
from components.operations import accept_snapshot, parse_since, quarantine_feedback
from components.settings import ValidationSettings
from components.validation.runner import validate_snapshot
from tests.unit._data_fixtures import write_movielens

NOW = 1_700_000_000.0
TS = 1_600_000_000.0


def _events(rows) -> pd.DataFrame:
    """Feedback store rows as ``events_between`` returns them."""
    frame = pd.DataFrame(rows, columns=["event_id", "user_id", "item_id", "event", "value", "event_ts"])
    return frame.assign(seq=range(1, len(frame) + 1))


def test_each_rule_quarantines_its_event_and_the_rest_proceed():
    existing = pd.DataFrame(
        {"user_id": [1], "item_id": [1], "event": ["rating"], "timestamp": [int(TS)], "event_id": ["ml-1"]}
    )
    rows = [
        ("ok-1", "1", "2", "like", None, TS),
        ("nul\x00", "1", "2", "click", None, TS),
        ("bad-user", "alice", "2", "like", None, TS),
        ("long", "1" * 200, "2", "like", None, TS),
        ("kind", "1", "2", "teleport", None, TS),
        ("scale", "1", "2", "rating", 9.0, TS),
        ("no-value", "1", "3", "rating", None, TS),
        ("inf", "1", "2", "click", float("inf"), TS + 1),
        ("old", "1", "2", "view", None, 10.0),
        ("future", "1", "2", "view", None, NOW + 10 * 86_400),
        ("ghost", "1", "99", "like", None, TS),
        ("again", "1", "2", "like", None, TS),  # repeats ok-1 exactly
        ("echo", "1", "1", "rating", 4.0, TS),  # repeats the existing row's (user, item, event, timestamp)
        *[(f"storm-{i}", "2", "3", "click", None, TS + 10 + i) for i in range(8)],  # 5 kept, 3 past policy
    ]
    screened = screen_feedback(_events(rows), "int", {1, 2, 3}, existing, ValidationSettings(), now=NOW)
    reasons = dict(zip(screened.rejected["event_id"], screened.rejected["reason"]))
    assert reasons == {
        "nul\x00": "control_characters",
        "bad-user": "bad_id",
        "long": "bad_id",
        "kind": "unknown_event",
        "scale": "value_off_scale",
        "no-value": "value_off_scale",
        "inf": "value_off_scale",
        "old": "timestamp_out_of_range",
        "future": "timestamp_out_of_range",
        "ghost": "unknown_item",
        "again": "duplicate",
        "echo": "duplicate",
        "storm-5": "duplicate",
        "storm-6": "duplicate",
        "storm-7": "duplicate",
    }
    assert set(reasons.values()) <= set(REASONS)
    assert screened.accepted["event_id"].tolist() == ["ok-1", *[f"storm-{i}" for i in range(5)]]
    assert screened.accepted["source"].eq("feedback").all() and screened.accepted["user_id"].dtype == "int64"
    assert screened.counts()["duplicate"] == 5


def _drift_source(tmp_path, name: str, users: range):
    movies = "movieId,title,genres\n" + "".join(f"{i},Film {i} (1999),Drama\n" for i in range(1, 11))
    ratings = "userId,movieId,rating,timestamp\n" + "".join(
        f"{u},{i},{0.5 + (u + i) % 10 / 2},{1_000_000_000 + u * 100 + i}\n" for u in users for i in range(1, 11)
    )
    return write_movielens(tmp_path / name, movies=movies, ratings=ratings, tags=None)


@pytest.fixture
def accepted(tmp_path, make_settings):
    """Settings over an accepted snapshot of 30 users × 10 items (MLflow on SQLite in the data root)."""
    settings = make_settings(ingest={"source": str(_drift_source(tmp_path, "v1", range(1, 31)))})
    validate_snapshot(settings, ingest(settings))
    return settings


def _cli(monkeypatch, settings, *args):
    """Run ``lmrecsys ARGS`` against the same data root and source as ``settings``."""
    monkeypatch.setenv("LMRECSYS_DATA_ROOT", str(settings.data_root))
    monkeypatch.setenv("LMRECSYS_INGEST__SOURCE", str(settings.ingest.source))
    return CliRunner().invoke(app, list(args))


def _append(settings, events):
    store = FeedbackStore(settings.feedback_url)
    try:
        store.append(events)
    finally:
        store.close()


def _held(settings) -> pd.DataFrame:
    store = FeedbackStore(settings.feedback_url)
    try:
        return store.quarantined()
    finally:
        store.close()


def test_a_flood_of_new_users_and_junk_never_blocks_the_next_snapshot(accepted):
    """Before: 1,000 likes from new users made every later run fail drift (new_user_ratio) for good."""
    now = time.time()
    flood = [FeedbackEvent(f"{9000 + i}", str(1 + i % 10), "like", event_ts=now, event_id=f"f{i}") for i in range(1000)]
    junk = [
        FeedbackEvent("1", "404", "like", event_ts=now, event_id="unknown-item"),
        FeedbackEvent("1", "2", "rating", 50.0, event_ts=now, event_id="off-scale"),
        FeedbackEvent("1", "2", "view", event_ts=1.0, event_id="too-old"),
        FeedbackEvent("bob", "2", "view", event_ts=now, event_id="not-an-int"),
    ]
    _append(accepted, flood + junk)
    snapshot = validate_snapshot(accepted, ingest(accepted))  # raises ValidationFailed if anything blocks
    assert snapshot.accepted
    manifest, validation = snapshot.manifest, snapshot.validation
    assert manifest["feedback_events_merged"] == 1000
    assert manifest["feedback_quarantine"]["rules"] == {
        "bad_id": 1,
        "timestamp_out_of_range": 1,
        "unknown_item": 1,
        "value_off_scale": 1,
    }
    assert validation["drift"]["new_user_ratio"] == 0.0  # drift measures the source only
    assert validation["feedback"]["new_user_share"] == 1.0 and validation["feedback"]["users"] == 1000
    assert any("1000 users with new feedback are new" in alert for alert in validation["alerts"])
    held = _held(accepted).set_index("event_id")
    assert held.loc["unknown-item", "reason"] == "unknown_item" and held.loc["off-scale", "origin"] == "ingest"
    assert set(held["snapshot_id"]) == {snapshot.snapshot_id}
    assert not {"unknown-item", "off-scale", "too-old", "not-an-int"} & set(snapshot.interactions()["event_id"])


def test_source_drift_still_blocks(tmp_path, make_settings, accepted):
    shrunk = make_settings(ingest={"source": str(_drift_source(tmp_path, "v2", range(1, 5)))})
    with pytest.raises(ValidationFailed, match="volume_ratio"):
        validate_snapshot(shrunk, ingest(shrunk))


def test_operator_quarantine_holds_a_users_events_back_and_is_audited(accepted, monkeypatch):
    now = time.time()
    _append(accepted, [FeedbackEvent("7", str(i), "like", event_ts=now, event_id=f"u7-{i}") for i in (1, 2, 3)])
    _append(accepted, [FeedbackEvent("8", "4", "like", event_ts=now, event_id="u8-4")])
    first = validate_snapshot(accepted, ingest(accepted))  # u7's likes are now in an accepted snapshot
    assert {"u7-1", "u8-4"} <= set(first.interactions()["event_id"])

    result = _cli(
        monkeypatch,
        accepted,
        "feedback",
        "quarantine",
        "--user",
        "7",
        "--reason",
        "scripted likes from one account",
        "--json",
    )
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.stdout)
    assert (outcome["matched"], outcome["newly_held"], outcome["already_held"]) == (3, 3, 0)
    again = quarantine_feedback(accepted, user_id="7", reason="scripted likes from one account")
    assert (again["newly_held"], again["already_held"]) == (0, 3)  # idempotent

    second = validate_snapshot(accepted, ingest(accepted))
    assert not {"u7-1", "u7-2", "u7-3"} & set(second.interactions()["event_id"])
    assert "u8-4" in set(second.interactions()["event_id"])
    assert second.manifest["feedback_quarantine"]["dropped_from_parent"] == 3

    mlflow.set_tracking_uri(accepted.tracking_uri)
    runs = mlflow.search_runs(
        experiment_names=[accepted.registry.experiment_name], filter_string="tags.`lmrecsys.kind` = 'operator'"
    )
    assert len(runs) == 2 and set(runs["tags.operator.user_id"]) == {"7"}
    assert set(runs["tags.operator.reason"]) == {"scripted likes from one account"}
    listed = json.loads(_cli(monkeypatch, accepted, "feedback", "quarantined", "--json").stdout)
    assert {row["event_id"] for row in listed} == {"u7-1", "u7-2", "u7-3"}
    assert {row["origin"] for row in listed} == {"operator"}


def test_operator_quarantine_bad_input_changes_nothing(accepted):
    with pytest.raises(LmRecsysError, match="--user ID, --since TS or --event-id ID"):
        quarantine_feedback(accepted, reason="a long enough reason")
    with pytest.raises(LmRecsysError, match="at least 10 characters"):
        quarantine_feedback(accepted, user_id="7", reason="spam")
    with pytest.raises(LmRecsysError, match="neither epoch seconds nor an ISO-8601"):
        quarantine_feedback(accepted, since="yesterday", reason="a long enough reason")
    assert parse_since("2026-12-03T10:00:00") == parse_since("2026-12-03T10:00:00+00:00") == 1796292000.0
    assert _held(accepted).empty


def test_since_and_event_id_select_by_receipt_time_and_id(accepted):
    _append(accepted, [FeedbackEvent("1", "1", "like", event_ts=TS, event_id="early")])
    cut = time.time() + 0.01
    time.sleep(0.05)
    _append(accepted, [FeedbackEvent("2", "2", "like", event_ts=TS, event_id=f"late-{i}") for i in range(2)])
    assert quarantine_feedback(accepted, since=str(cut), reason="incident window, see ticket")["matched"] == 2
    assert quarantine_feedback(accepted, event_id="early", reason="one bad event, see ticket")["newly_held"] == 1
    assert set(_held(accepted)["event_id"]) == {"early", "late-0", "late-1"}


def test_accepting_a_rejected_snapshot_is_recorded_and_lets_the_loop_use_it(
    tmp_path, make_settings, accepted, monkeypatch
):
    shrunk = make_settings(ingest={"source": str(_drift_source(tmp_path, "v2", range(1, 5)))})
    with pytest.raises(ValidationFailed):
        validate_snapshot(shrunk, ingest(shrunk))
    (rejected,) = list_snapshots(shrunk.quarantine_dir)

    with pytest.raises(LmRecsysError, match="at least 10 characters"):
        accept_snapshot(shrunk, rejected.snapshot_id, "ok")
    with pytest.raises(InvalidHandle):
        accept_snapshot(shrunk, "../snapshots", "the catalogue really did shrink")
    with pytest.raises(LmRecsysError, match="no quarantined snapshot 'snap-0000000000000000'"):
        accept_snapshot(shrunk, "snap-0000000000000000", "the catalogue really did shrink")
    assert list_snapshots(shrunk.quarantine_dir) == [rejected]  # bad input changed nothing

    reason = "the catalogue really did shrink"
    result = _cli(monkeypatch, shrunk, "snapshots", "accept", rejected.snapshot_id, "--reason", reason, "--json")
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.stdout)
    assert any("volume_ratio" in check for check in outcome["overrode_checks"])
    assert list_snapshots(shrunk.quarantine_dir) == []
    live = next(s for s in list_snapshots(shrunk.snapshots_dir) if s.snapshot_id == rejected.snapshot_id)
    assert live.accepted and live.validation["override"]["reason"] == "the catalogue really did shrink"
    assert live.manifest["operator_overrides"][0]["actor"] == live.validation["override"]["actor"]
    assert validate_snapshot(shrunk, live) == live  # accepted stays accepted
    mlflow.set_tracking_uri(shrunk.tracking_uri)
    run = mlflow.get_run(outcome["mlflow_run_id"])
    assert run.data.tags["operator.action"] == "snapshots accept"
    assert run.data.tags["operator.snapshot_id"] == rejected.snapshot_id

    twice = _cli(monkeypatch, shrunk, "snapshots", "accept", rejected.snapshot_id, "--reason", "once more, please")
    assert twice.exit_code == 1 and "already accepted" in twice.output


def test_an_unreachable_mlflow_leaves_the_snapshot_quarantined(tmp_path, make_settings, accepted):
    shrunk = make_settings(ingest={"source": str(_drift_source(tmp_path, "v2", range(1, 5)))})
    with pytest.raises(ValidationFailed):
        validate_snapshot(shrunk, ingest(shrunk))
    (rejected,) = list_snapshots(shrunk.quarantine_dir)
    (tmp_path / "a-file").write_text("not a folder")
    broken = make_settings(
        ingest={"source": str(_drift_source(tmp_path, "v2", range(1, 5)))},
        registry={"tracking_uri": f"sqlite:///{tmp_path}/a-file/mlflow.db"},
    )
    with pytest.raises(LmRecsysError):
        accept_snapshot(broken, rejected.snapshot_id, "the catalogue really did shrink")
    assert [s.snapshot_id for s in list_snapshots(shrunk.quarantine_dir)] == [rejected.snapshot_id]
    assert not list_snapshots(shrunk.quarantine_dir)[0].accepted
