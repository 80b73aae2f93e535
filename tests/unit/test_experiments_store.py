"""The feedback store's impression log, attributions and experiment records, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import pytest

from components.feedback.impressions import ExperimentConflict
from components.feedback.store import FeedbackEvent, FeedbackStore


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    url = (
        f"sqlite:///{tmp_path / 'feedback.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    opened = FeedbackStore(url)
    try:
        yield opened
    finally:
        opened.close()


SHOWN = {"model_version": "3", "endpoint": "recommend", "latency_ms": 2.5}


def test_feedback_is_attributed_to_its_impression_or_counted_as_unattributed(store):
    store.log_impressions(
        [
            {
                **SHOWN,
                "recommendation_id": "r-split",
                "experiment_id": "exp-1",
                "arm": "challenger",
                "user_id": "7",
                "item_ids": [11, 12, 13],
            },
            {
                **SHOWN,
                "recommendation_id": "r-mixed",
                "experiment_id": "exp-1",
                "arm": "interleaved",
                "user_id": "8",
                "item_ids": [21, 22],
                "teams": ["champion", "challenger"],
            },
        ]
    )
    events = [
        FeedbackEvent("7", "12", "click", event_id="a", recommendation_id="r-split", position=1),
        FeedbackEvent("8", "22", "like", event_id="b", recommendation_id="r-mixed", position=5),  # wrong position
        FeedbackEvent("8", "21", "like", event_id="c", recommendation_id="r-mixed"),
        FeedbackEvent("9", "12", "like", event_id="d", recommendation_id="r-split"),  # another user's impression
        FeedbackEvent("7", "12", "like", event_id="e", recommendation_id="r-nowhere"),  # unknown id
        FeedbackEvent("7", "99", "like", event_id="f", recommendation_id="r-split"),  # not in the list
        FeedbackEvent("7", "13", "like", event_id="g"),  # plain feedback
    ]
    written = store.append(events)
    assert [fresh for _, fresh in written] == [True] * 7
    assert store.count() == 7  # every event is stored, attributed or not
    credited = store.attribution_frame("exp-1").sort_values("recommendation_id")
    assert sorted(zip(credited["recommendation_id"], credited["arm"], credited["event"])) == [
        ("r-mixed", "challenger", "like"),  # credited to the team that placed item 22, found by its id
        ("r-mixed", "champion", "like"),
        ("r-split", "challenger", "click"),
    ]
    counts = store.attribution_counts()
    assert counts["attributed"] == 3 and counts["unattributed"] == 3
    assert set(counts["reasons"]) == {
        "unknown recommendation_id",
        "foreign recommendation_id: it was served to another user or session",
        "item 99 is not in that recommendation",
    }
    assert store.append(events[:1]) == [("a", False)]  # a retried event is not attributed twice
    assert store.attribution_counts()["attributed"] == 3
    frame = store.impression_frame("exp-1")
    assert sorted(frame["arm"]) == ["challenger", "interleaved"] and set(frame["error"]) == {0}


def test_one_running_experiment_per_model_and_state_changes_happen_once(store):
    row = {
        "model_name": "recommender",
        "champion_version": "1",
        "challenger_version": "2",
        "share": 0.5,
        "mode": "split",
        "metric": "like_rate",
        "max_days": 14.0,
        "created_by": "test",
    }
    store.create_experiment({**row, "experiment_id": "exp-a"})
    with pytest.raises(ExperimentConflict, match="exp-a is already running on model 'recommender'"):
        store.create_experiment({**row, "experiment_id": "exp-b"})
    assert [e["experiment_id"] for e in store.experiments()] == ["exp-a"]  # nothing changed
    store.create_experiment({**row, "model_name": "other", "experiment_id": "exp-c"})  # another model may run one

    outcomes: list[bool] = []
    threads = [
        threading.Thread(target=lambda s=s: outcomes.append(store.finish_experiment("exp-a", s, s, {"n": 1})))
        for s in ("promoted", "stopped", "stopped", "promoted")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == [False, False, False, True]  # exactly one decider ends it
    (ended,) = store.experiments(model_name="recommender")
    assert ended["state"] in ("promoted", "stopped") and ended["decision"] == {"n": 1} and ended["decided_at"]
    store.create_experiment({**row, "experiment_id": "exp-d"})  # the model is free again
    assert {e["experiment_id"] for e in store.experiments(state="running")} == {"exp-c", "exp-d"}


def test_retention_prunes_old_impressions_outside_experiments_and_keeps_the_rest(store):
    day = 86_400.0
    now = 1_800_000_000.0
    shown = {**SHOWN, "arm": "champion", "user_id": "7", "item_ids": [11, 12]}
    store.log_impressions(
        [
            {**shown, "recommendation_id": "old-plain", "created_at": now - 100 * day},
            {**shown, "recommendation_id": "new-plain", "created_at": now - day},
            {**shown, "recommendation_id": "old-exp", "experiment_id": "exp-9", "created_at": now - 100 * day},
        ]
    )
    store.append(
        [
            FeedbackEvent("7", "11", "click", event_id=rec, recommendation_id=rec)
            for rec in ("old-plain", "new-plain", "old-exp")
        ]
    )
    assert store.attribution_counts()["attributed"] == 3

    assert store.prune_impressions(now - 90 * day) == {"impressions": 1, "feedback_attributions": 1}
    assert store.impression("old-plain") is None
    assert store.impression("new-plain") is not None and store.impression("old-exp") is not None
    assert store.attribution_counts()["attributed"] == 2
    assert len(store.attribution_frame("exp-9")) == 1  # an experiment's evidence stays
    assert store.count() == 3  # the feedback events themselves are not touched
    assert store.prune_impressions(now - 90 * day) == {"impressions": 0, "feedback_attributions": 0}


def test_a_failed_impression_group_writes_nothing_and_leaves_the_connection_as_it_was(store):
    shown = {**SHOWN, "arm": "champion", "user_id": "7", "item_ids": [11]}
    store.log_impressions([{**shown, "recommendation_id": "first"}])
    with pytest.raises(Exception, match="(?i)unique|duplicate"):
        store.log_impressions([{**shown, "recommendation_id": "second"}, {**shown, "recommendation_id": "first"}])
    assert store.impression("second") is None  # the group is one transaction
    assert store.log_impressions([{**shown, "recommendation_id": "third"}]) == [("third", True)]
    assert store.impression("third")["user_id"] == "7"
    if not store.is_postgres:  # the pooled connection is back to the full fsync feedback relies on
        with store._connection() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar_one() == 2  # FULL
