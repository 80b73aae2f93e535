"""components.data.snapshots and components.ingest: content-addressed, atomic, incremental snapshots."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from components.data.snapshots import list_snapshots, newest_accepted, open_snapshot
from components.errors import LmRecsysError, SnapshotRejected, SourceError
from components.feedback.store import FeedbackEvent, FeedbackStore
from components.ingest import ingest, read_source
from components.settings import redact_url
from components.validation.runner import validate_snapshot


def visible_dirs(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_same_input_twice_gives_the_same_snapshot(settings):
    first = ingest(settings)
    second = ingest(settings)
    assert second.snapshot_id == first.snapshot_id
    assert visible_dirs(settings.snapshots_dir) == [first.snapshot_id]
    assert first.snapshot_id.startswith("snap-")
    assert first.manifest["content_hash"].startswith(first.snapshot_id.removeprefix("snap-"))


def test_same_input_after_acceptance_is_still_the_same_snapshot(settings):
    first = validate_snapshot(settings, ingest(settings))
    again = ingest(settings)  # now with the accepted snapshot as parent: same content, same id
    assert again.snapshot_id == first.snapshot_id
    assert visible_dirs(settings.snapshots_dir) == [first.snapshot_id]


def test_manifest_records_counts_range_sources_and_lineage(settings, tiny_movielens):
    snapshot = ingest(settings)
    manifest = snapshot.manifest
    assert manifest["snapshot_id"] == snapshot.snapshot_id
    assert manifest["row_counts"] == {"items": 4, "interactions": 7, "users": 3}
    assert manifest["time_range"] == {"min": 964982703, "max": 1200000100}
    assert manifest["parent"] is None
    assert manifest["feedback_watermark"] == 0
    assert manifest["id_type"] == "int"
    assert len(manifest["content_hash"]) == 64
    for name in ("movies.csv", "ratings.csv", "tags.csv"):
        assert manifest["sources"][name] == {
            "uri": (tiny_movielens / name).resolve().as_uri(),
            "sha256": hashlib.sha256((tiny_movielens / name).read_bytes()).hexdigest(),
        }
    assert manifest["sources"]["feedback"] == {"uri": settings.feedback_url, "after": 0, "upto": 0}
    assert snapshot.items()["item_id"].tolist() == [1, 2, 3, 4]
    assert len(snapshot.interactions()) == 7
    assert snapshot.validation is None and not snapshot.accepted


def test_incremental_ingest_merges_exactly_the_new_feedback(settings):
    first = validate_snapshot(settings, ingest(settings))
    assert first.accepted
    base_ids = set(first.interactions()["event_id"])

    store = FeedbackStore(settings.feedback_url)
    try:
        store.append(
            [
                FeedbackEvent(
                    user_id="1", item_id="3", event="rating", value=4.0, event_ts=1_300_000_000, event_id="fb-a"
                ),
                FeedbackEvent(user_id="4", item_id="2", event="click", event_ts=1_300_000_100, event_id="fb-b"),
                # Re-uses an event id the parent already holds: must not add a row.
                FeedbackEvent(
                    user_id="1",
                    item_id="1",
                    event="rating",
                    value=1.0,
                    event_ts=1_300_000_200,
                    event_id="ml-1-1-964982703",
                ),
                # Not an integer user id, so unusable for a MovieLens lineage.
                FeedbackEvent(user_id="alice", item_id="2", event="like", event_ts=1_300_000_300, event_id="fb-c"),
            ]
        )
        store.append([FeedbackEvent(user_id="1", item_id="3", event="rating", value=5.0, event_ts=1, event_id="fb-a")])
        watermark = store.watermark()
    finally:
        store.close()

    second = ingest(settings)
    assert second.snapshot_id != first.snapshot_id
    manifest = second.manifest
    assert manifest["parent"] == first.snapshot_id
    assert manifest["feedback_watermark"] == watermark
    assert manifest["sources"]["feedback"]["after"] == 0 and manifest["sources"]["feedback"]["upto"] == watermark
    assert manifest["feedback_quarantine"] == {
        "rules": {"bad_id": 1},
        "operator_held": 0,
        "dropped_from_parent": 0,
    }
    assert manifest["erasure"] == {"rows_removed": 0, "user_keys": []}
    store = FeedbackStore(settings.feedback_url)
    try:
        held = store.quarantined()
    finally:
        store.close()
    assert held[["event_id", "reason", "origin", "snapshot_id"]].values.tolist() == [
        ["fb-c", "bad_id", "ingest", second.snapshot_id]
    ]
    assert manifest["row_counts"] == {"items": 4, "interactions": 9, "users": 4}

    inter = second.interactions()
    assert set(inter["event_id"]) == base_ids | {"fb-a", "fb-b"}
    assert inter["event_id"].is_unique
    kept = inter.set_index("event_id")
    assert kept.loc["ml-1-1-964982703", "value"] == 4.0  # the parent's row wins over the re-used id
    assert kept.loc["fb-a", "value"] == 4.0 and kept.loc["fb-a", "source"] == "feedback"
    assert (kept.loc["fb-b", "user_id"], kept.loc["fb-b", "item_id"], kept.loc["fb-b", "event"]) == (4, 2, "click")
    assert pd.isna(kept.loc["fb-b", "value"])

    # Accepting the second and ingesting again with no new feedback changes nothing.
    validate_snapshot(settings, second)
    assert ingest(settings).snapshot_id == second.snapshot_id
    assert newest_accepted(settings.snapshots_dir).snapshot_id == second.snapshot_id


def test_crash_mid_write_leaves_no_visible_snapshot(settings, monkeypatch):
    real = pd.DataFrame.to_parquet
    calls = []

    def flaky(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", flaky)
    with pytest.raises(OSError, match="simulated"):
        ingest(settings)
    assert len(calls) == 2
    assert list_snapshots(settings.snapshots_dir) == []
    assert not any(name.startswith(".tmp-") for name in visible_dirs(settings.snapshots_dir))
    assert visible_dirs(settings.snapshots_dir) == []

    monkeypatch.setattr(pd.DataFrame, "to_parquet", real)
    retried = ingest(settings)  # a retry after the crash succeeds
    assert [s.snapshot_id for s in list_snapshots(settings.snapshots_dir)] == [retried.snapshot_id]


def test_require_accepted_refuses_an_unvalidated_snapshot(settings):
    snapshot = ingest(settings)
    with pytest.raises(SnapshotRejected, match=f"snapshot {snapshot.snapshot_id} has not been validated"):
        snapshot.require_accepted()
    assert newest_accepted(settings.snapshots_dir) is None
    validate_snapshot(settings, snapshot)
    assert snapshot.require_accepted() is snapshot


def test_open_snapshot_unknown_id(settings):
    known = ingest(settings)
    assert open_snapshot(settings.snapshots_dir, known.snapshot_id) == known
    with pytest.raises(LmRecsysError, match=f"no snapshot 'snap-missing'.*known: {known.snapshot_id}"):
        open_snapshot(settings.snapshots_dir, "snap-missing")


def test_read_source_configuration_errors(make_settings, tmp_path):
    with pytest.raises(SourceError, match="unknown source format 'xml'"):
        read_source(make_settings(ingest={"source_format": "xml"}))
    with pytest.raises(SourceError, match="generic format needs"):
        read_source(make_settings(ingest={"source_format": "generic"}))


def test_parent_with_other_id_type_is_refused(settings, make_settings, tmp_path):
    validate_snapshot(settings, ingest(settings))  # an accepted MovieLens (int id) lineage
    (tmp_path / "items.csv").write_text("item_id,title\nb1,Book one\n")
    (tmp_path / "events.csv").write_text("user_id,item_id,timestamp\nu1,b1,1300000000\n")
    generic = make_settings(
        ingest={
            "source_format": "generic",
            "items_path": str(tmp_path / "items.csv"),
            "interactions_path": str(tmp_path / "events.csv"),
        }
    )
    with pytest.raises(SourceError, match="has int ids but the source has str ids"):
        ingest(generic)
    fresh = ingest(generic, use_parent=False)
    assert fresh.manifest["parent"] is None and fresh.manifest["id_type"] == "str"


def test_redact_hides_credentials():
    assert redact_url("postgresql://user:secret@db:5432/fb") == "postgresql://user:***@db:5432/fb"
    assert redact_url("sqlite:////tmp/feedback.db") == "sqlite:////tmp/feedback.db"
    assert "secret" not in redact_url("postgresql://user:secret@db/fb?sslmode=require")


def test_ingest_reads_feedback_from_postgres(make_settings, postgres_url):
    # trust auth ignores the password, so a URL with one connects and shows it is never recorded
    with_password = postgres_url.replace("postgres@", "postgres:topsecret@", 1)
    settings = make_settings(feedback={"url": with_password})
    store = FeedbackStore(postgres_url)
    try:
        store.append([FeedbackEvent(user_id="2", item_id="4", event="like", event_ts=1_300_000_000, event_id="pg-1")])
        watermark = store.watermark()
    finally:
        store.close()
    snapshot = ingest(settings)
    assert snapshot.manifest["feedback_watermark"] == watermark
    assert (
        snapshot.manifest["sources"]["feedback"]["uri"] == "postgresql://postgres:***@" + postgres_url.split("@", 1)[1]
    )
    assert "pg-1" in set(snapshot.interactions()["event_id"])
