"""components.feedback.trigger: when new feedback makes a pipeline run due, and that a burst fires only once."""

from __future__ import annotations

import sqlite3
import time

import pytest

from components.feedback.store import FeedbackError, FeedbackEvent, FeedbackStore
from components.feedback.trigger import claim_trigger, feedback_backlog
from components.ingest import ingest
from components.validation.runner import validate_snapshot


@pytest.fixture
def trig_settings(make_settings):
    return make_settings(feedback={"trigger_min_events": 5, "trigger_max_age_s": 3600})


def add_events(settings, n: int, start: int = 0) -> int:
    """Append n clicks with ids ev-<start>.. (one second apart); return the store's watermark afterwards."""
    store = FeedbackStore(settings.feedback_url)
    try:
        store.append(
            FeedbackEvent(user_id="1", item_id="2", event="click", event_ts=1_300_000_000 + k, event_id=f"ev-{k}")
            for k in range(start, start + n)
        )
        return store.watermark()
    finally:
        store.close()


def triggers(settings) -> list[tuple[int, str]]:
    with sqlite3.connect(settings.root / "feedback.db") as conn:
        return conn.execute("SELECT watermark, reason FROM feedback_triggers ORDER BY id").fetchall()


def test_empty_store_is_not_due(trig_settings):
    backlog = feedback_backlog(trig_settings)
    assert (backlog.new_events, backlog.current_watermark, backlog.due) == (0, 0, False)
    assert backlog.snapshot_id is None and backlog.oldest_age_s is None


def test_below_threshold_is_not_due(trig_settings):
    add_events(trig_settings, 4)
    backlog = claim_trigger(trig_settings)
    assert (backlog.new_events, backlog.untrained_events, backlog.due) == (4, 4, False)
    assert backlog.reason == "4 new feedback events, below the threshold of 5"
    assert triggers(trig_settings) == []


def test_threshold_reached_is_due_and_claim_records_it(trig_settings):
    watermark = add_events(trig_settings, 5)
    assert feedback_backlog(trig_settings).due
    backlog = claim_trigger(trig_settings)
    assert backlog.due and backlog.current_watermark == watermark
    assert backlog.reason == "5 new feedback events (threshold 5)"
    assert triggers(trig_settings) == [(watermark, backlog.reason)]
    after = feedback_backlog(trig_settings)
    assert (after.last_trigger_watermark, after.new_events, after.untrained_events, after.due) == (
        watermark,
        0,
        5,
        False,
    )


def test_a_burst_yields_exactly_one_trigger(trig_settings):
    fired = []
    for batch in range(3):  # 12 events in bursts of 4, the trigger checked after each
        add_events(trig_settings, 4, start=4 * batch)
        fired.append(claim_trigger(trig_settings).due)
    assert fired == [False, True, False]
    assert [w for w, _ in triggers(trig_settings)] == [8]
    # Four events past the trigger are not enough; the fifth fires the next run.
    assert feedback_backlog(trig_settings).new_events == 4
    add_events(trig_settings, 1, start=100)
    assert claim_trigger(trig_settings).due
    assert [w for w, _ in triggers(trig_settings)] == [8, 13]


def test_max_age_triggers_with_fewer_events(trig_settings, make_settings):
    add_events(trig_settings, 2)
    assert not feedback_backlog(trig_settings, now=time.time()).due
    late = feedback_backlog(trig_settings, now=time.time() + 7200)
    assert late.due and late.new_events == 2 and late.oldest_age_s >= 7200
    assert "max age 3600s" in late.reason

    impatient = make_settings(feedback={"trigger_min_events": 5, "trigger_max_age_s": 0})
    assert claim_trigger(impatient).due
    assert [w for w, _ in triggers(impatient)] == [2]
    assert not claim_trigger(impatient).due  # the same two events do not fire twice


def test_accepted_snapshot_watermark_is_the_base(trig_settings):
    add_events(trig_settings, 3)  # feedback on MovieLens ids 1/2: merged into the snapshot
    snapshot = validate_snapshot(trig_settings, ingest(trig_settings))
    assert snapshot.manifest["feedback_watermark"] == 3
    backlog = feedback_backlog(trig_settings)
    assert (backlog.snapshot_id, backlog.snapshot_watermark, backlog.new_events, backlog.due) == (
        snapshot.snapshot_id,
        3,
        0,
        False,
    )
    add_events(trig_settings, 5, start=10)
    backlog = feedback_backlog(trig_settings)
    assert (backlog.new_events, backlog.untrained_events, backlog.due) == (5, 5, True)


def test_unreachable_store_is_an_error(make_settings):
    settings = make_settings(feedback={"url": "mysql://nowhere/feedback"})
    with pytest.raises(FeedbackError, match="must start with sqlite:/// or postgresql://"):
        feedback_backlog(settings)
