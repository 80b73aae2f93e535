"""The purge's snapshot rewrite when the rewritten snapshot equals one already there: the existing one is
kept as it is (its time and validation) and records the rewrite; the old folder goes. An impression
served to the user after the erasure, before a replica applied it, goes too."""

from __future__ import annotations

import json

from components.data.snapshots import Snapshot
from components.feedback.store import FeedbackStore
from components.ingest import ingest
from components.privacy import forget_user
from components.privacy.purge import purge
from components.validation.runner import validate_snapshot


def test_a_rewrite_equal_to_an_existing_snapshot_is_recorded_on_that_snapshot(settings):
    first = ingest(settings)
    validate_snapshot(settings, first)
    removed = int((first.interactions()["user_id"].astype(str) == "2").sum())
    assert removed > 0
    forget_user(settings, "2", "user asked by email")
    second = ingest(settings)  # the erasure's snapshot: the same source and watermark, without user 2
    validate_snapshot(settings, second)
    assert second.snapshot_id != first.snapshot_id
    before = second.manifest
    store = FeedbackStore(settings.feedback_url)
    try:
        shown = {"arm": "champion", "model_version": "1", "endpoint": "recommend", "item_ids": [1], "latency_ms": 1.0}
        store.log_impressions(  # user 2 served between the erasure and the replica's refresh
            [
                {**shown, "recommendation_id": "late", "user_id": "2"},
                {**shown, "recommendation_id": "kept", "user_id": "3"},
            ]
        )
        store.set_erasure_state(store.erasures()["user_key"], "serving-clean")  # as after the erasure's promotion
    finally:
        store.close()

    result = purge(settings)

    store = FeedbackStore(settings.feedback_url)
    try:
        assert result["impression_rows_deleted"] == 1
        assert store.impression("late") is None and store.impression("kept") is not None
        assert store.user_impression_counts("2") == {"impressions": 0, "feedback_attributions": 0}
    finally:
        store.close()

    assert result["snapshots_rewritten"] == {first.snapshot_id: second.snapshot_id}
    assert not first.path.exists()
    after = Snapshot(second.path).manifest
    (record,) = after["rewritten"]
    assert record["from"] == first.snapshot_id and record["same_as_existing"] is True
    assert record["rows_removed"] == removed and record["reason"] == "erasure"
    assert after["created_at"] == before["created_at"]  # the existing snapshot keeps its own place in time
    assert {k: v for k, v in after.items() if k != "rewritten"} == before
    assert Snapshot(second.path).accepted
    assert "2" not in set(Snapshot(second.path).interactions()["user_id"].astype(str))
    assert json.loads((second.path / "manifest.json").read_text()) == after
