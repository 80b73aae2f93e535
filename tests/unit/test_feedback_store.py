"""components.feedback.store.FeedbackStore on SQLite and on PostgreSQL (a fresh database per test)."""

from __future__ import annotations

import sqlite3
import threading
import time

import pandas as pd
import pytest

from components.feedback.store import FeedbackError, FeedbackEvent, FeedbackStore


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fb' / 'feedback.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(store_url):
    store = FeedbackStore(store_url)
    try:
        yield store
    finally:
        store.close()


def ev(
    event_id: str, user: str = "u1", item: str = "i1", event: str = "click", value=None, ts: float = 1_700_000_000.0
):
    return FeedbackEvent(user_id=user, item_id=item, event=event, value=value, event_ts=ts, event_id=event_id)


# --------------------------------------------------------------------------- both backends


def test_empty_store(store):
    assert store.watermark() == 0
    assert store.count() == 0
    assert store.last_trigger_watermark() == 0
    assert store.oldest_received_since(0) is None
    assert store.events_between(0, 10).empty
    assert store.append([]) == []


def test_batch_append_and_read_back(store):
    written = store.append(
        [
            ev("e1", "u1", "i1", "rating", 4.5, 1_700_000_001.0),
            ev("e2", "u2", "i2", "like", None, 1_700_000_002.0),
            ev("e3", " u1 ", " i3 ", "purchase", 1, 1_700_000_003.0),
        ]
    )
    assert written == [("e1", True), ("e2", True), ("e3", True)]
    assert store.count() == 3

    frame = store.events_between(0, store.watermark())
    assert frame["event_id"].tolist() == ["e1", "e2", "e3"]
    assert frame["seq"].is_monotonic_increasing and frame["seq"].is_unique
    assert frame["user_id"].tolist() == ["u1", "u2", "u1"]  # ids are stripped
    assert frame["item_id"].tolist() == ["i1", "i2", "i3"]
    assert frame["event"].tolist() == ["rating", "like", "purchase"]
    assert frame["value"].iloc[0] == 4.5 and pd.isna(frame["value"].iloc[1]) and frame["value"].iloc[2] == 1.0
    assert frame["event_ts"].tolist() == [1_700_000_001.0, 1_700_000_002.0, 1_700_000_003.0]
    # Bounds are (after, upto].
    first, second = int(frame["seq"].iloc[0]), int(frame["seq"].iloc[1])
    assert store.events_between(first, second)["event_id"].tolist() == ["e2"]


def test_append_is_idempotent_by_event_id(store):
    assert store.append([ev("same", value=1.0)]) == [("same", True)]
    mark = store.watermark()
    assert store.append([ev("same", value=5.0), ev("other")]) == [("same", False), ("other", True)]
    assert store.count() == 2
    frame = store.events_between(0, store.watermark())
    assert frame.loc[frame["event_id"] == "same", "value"].tolist() == [1.0]  # first write wins
    assert store.append([ev("same")]) == [("same", False)]
    assert store.count() == 2
    assert store.watermark() > mark


def test_watermark_is_monotonic_and_counts_follow_it(store):
    marks = [store.watermark()]
    for i in range(4):
        store.append([ev(f"m{i}")])
        marks.append(store.watermark())
    assert marks == sorted(marks) and len(set(marks)) == 5
    store.append([ev("m0")])  # a retried event does not move the watermark
    assert store.watermark() == marks[-1]
    assert store.count_since(marks[2]) == 2
    assert store.count_since(marks[-1]) == 0
    assert store.oldest_received_since(marks[2]) is not None


def test_generated_event_id_and_timestamp(store):
    ((event_id, fresh),) = store.append([FeedbackEvent(user_id="u9", item_id="i9", event="view")])
    assert fresh and event_id.startswith("fb-")
    row = store.events_between(0, store.watermark()).iloc[0]
    assert row["event_ts"] > 1_700_000_000


def test_user_events_since(store):
    store.append([ev("a1", "alice", "i1", ts=1.0), ev("b1", "bob", "i2", ts=2.0)])
    mark = store.watermark()
    store.append([ev("a2", "alice", "i3", "like", ts=3.0), ev("a3", "alice", "i4", "rating", 2.0, ts=4.0)])
    store.append([ev("a4", "alice", "i5", ts=5.0), ev("b2", "bob", "i6", ts=6.0)])

    assert store.user_events_since("alice", 0) == [
        ("i1", "click", None, 1.0),
        ("i3", "like", None, 3.0),
        ("i4", "rating", 2.0, 4.0),
        ("i5", "click", None, 5.0),
    ]
    assert [row[0] for row in store.user_events_since("alice", mark)] == ["i3", "i4", "i5"]
    assert [row[0] for row in store.user_events_since("alice", mark, limit=2)] == ["i4", "i5"]  # newest, oldest first
    assert store.user_events_since("carol", 0) == []


def test_record_trigger(store):
    store.append([ev("t1"), ev("t2")])
    store.record_trigger(store.watermark(), "test")
    assert store.last_trigger_watermark() == store.watermark()


def test_bad_event_type_rejects_the_whole_batch(store):
    with pytest.raises(FeedbackError, match=r"unknown event type 'teleport'"):
        store.append([ev("ok1"), ev("bad", event="teleport")])
    assert store.count() == 0
    with pytest.raises(FeedbackError, match="non-empty user_id and item_id"):
        store.append([FeedbackEvent(user_id="  ", item_id="i1", event="click")])


def test_duplicate_within_one_batch_is_written_once(store):
    assert store.append([ev("d1"), ev("d2"), ev("d1", value=9.0)]) == [("d1", True), ("d2", True), ("d1", False)]
    frame = store.events_between(0, store.watermark())
    assert frame["event_id"].tolist() == ["d1", "d2"] and pd.isna(frame["value"]).all()


def test_large_batch_keeps_order_and_reports_each_event(store):
    store.append([ev("big-7"), ev("big-1500")])
    ids = [f"big-{i}" for i in range(2500)]
    written = store.append([ev(event_id, user=f"u{i % 7}") for i, event_id in enumerate(ids)])
    assert [event_id for event_id, _ in written] == ids
    assert [event_id for event_id, fresh in written if not fresh] == ["big-7", "big-1500"]
    frame = store.events_between(0, store.watermark())
    assert frame["event_id"].tolist() == ["big-7", "big-1500", *(i for i in ids if i not in ("big-7", "big-1500"))]
    assert frame["seq"].is_monotonic_increasing and frame["seq"].is_unique and store.count() == 2500


def test_concurrent_appends_from_threads(store):
    def worker(t: int):
        for i in range(10):
            store.append([ev(f"t{t}-{i}", user=f"u{t}")])

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    frame = store.events_between(0, store.watermark())
    assert len(frame) == 40 and frame["event_id"].is_unique and frame["seq"].is_unique


# --------------------------------------------------------------------------- SQLite specifics


def test_sqlite_runs_in_wal_mode_with_full_sync(tmp_path):
    path = tmp_path / "feedback.db"
    store = FeedbackStore(f"sqlite:///{path}")
    try:
        store.append([ev("w1")])
        with store.engine.connect() as conn:  # every pooled connection is set up by the connect hook
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        other = sqlite3.connect(path)  # journal_mode=WAL is persistent: a fresh connection sees it
        try:
            assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert other.execute("SELECT event_id FROM feedback_events").fetchall() == [("w1",)]
        finally:
            other.close()
    finally:
        store.close()


def test_store_survives_reopen(tmp_path):
    url = f"sqlite:///{tmp_path / 'feedback.db'}"
    first = FeedbackStore(url)
    first.append([ev("r1"), ev("r2")])
    mark = first.watermark()
    first.close()
    second = FeedbackStore(url)
    try:
        assert second.watermark() == mark and second.count() == 2
    finally:
        second.close()


def test_unsupported_url_is_rejected():
    with pytest.raises(FeedbackError, match="must start with sqlite:/// or postgresql://"):
        FeedbackStore("mysql://localhost/feedback")


def test_unreachable_postgres_is_a_feedback_error():
    pytest.importorskip("psycopg2")
    with pytest.raises(FeedbackError, match="cannot reach the feedback store"):
        FeedbackStore("postgresql://postgres@127.0.0.1:1/none")


def test_unreachable_postgres_error_names_the_redacted_url():
    pytest.importorskip("psycopg2")
    redacted = r"cannot reach the feedback store at postgresql://postgres:\*\*\*@127\.0\.0\.1:1/none"
    with pytest.raises(FeedbackError, match=redacted) as info:
        FeedbackStore("postgresql://postgres:hunter2@127.0.0.1:1/none")
    assert "hunter2" not in str(info.value)
    with pytest.raises(FeedbackError, match="must start with") as info:
        FeedbackStore("mysql://user:hunter2@localhost/feedback")
    assert "hunter2" not in str(info.value)


def test_sqlite_seq_is_never_reused(tmp_path):
    path = tmp_path / "feedback.db"
    store = FeedbackStore(f"sqlite:///{path}")
    try:
        store.append([ev("s1"), ev("s2"), ev("s3")])
        newest = store.watermark()
        raw = sqlite3.connect(path)
        try:
            (ddl,) = raw.execute("SELECT sql FROM sqlite_master WHERE name = 'feedback_events'").fetchone()
            assert "AUTOINCREMENT" in ddl
            with raw:
                raw.execute("DELETE FROM feedback_events WHERE seq = ?", (newest,))
        finally:
            raw.close()
        store.append([ev("s4")])
        assert store.watermark() == newest + 1 and store.count() == 3
    finally:
        store.close()


# --------------------------------------------------------------------------- upgrading in place

# The schema as the hand-written sqlite3 / psycopg2 store created it; the SQLAlchemy store must open it unchanged.
OLD_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    event TEXT NOT NULL,
    value REAL,
    event_ts REAL NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_events_user ON feedback_events (user_id, seq);
CREATE TABLE IF NOT EXISTS feedback_triggers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    watermark INTEGER NOT NULL,
    created_at REAL NOT NULL,
    reason TEXT NOT NULL
);
"""

OLD_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback_events (
    seq BIGSERIAL PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    event TEXT NOT NULL,
    value DOUBLE PRECISION,
    event_ts DOUBLE PRECISION NOT NULL,
    received_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_events_user ON feedback_events (user_id, seq);
CREATE TABLE IF NOT EXISTS feedback_triggers (
    id BIGSERIAL PRIMARY KEY,
    watermark BIGINT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    reason TEXT NOT NULL
);
"""
OLD_ROWS = [("old-1", "alice", "i1", "click", None, 10.0, 100.0), ("old-2", "alice", "i2", "rating", 4.0, 20.0, 100.0)]
OLD_INSERT = (
    "INSERT INTO feedback_events (event_id, user_id, item_id, event, value, event_ts, received_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def check_upgraded_store(store: FeedbackStore) -> None:
    """The rows, watermark and trigger written by the old store read back; new writes continue the log."""
    assert store.watermark() == 2 and store.count() == 2 and store.last_trigger_watermark() == 2
    assert store.user_events_since("alice", 0) == [("i1", "click", None, 10.0), ("i2", "rating", 4.0, 20.0)]
    assert store.append([ev("old-2"), ev("new-1", "alice", "i3", ts=30.0)]) == [("old-2", False), ("new-1", True)]
    newest = store.watermark()  # the retried old-2 may use up a seq value, as it always has
    assert newest > 2 and store.count_since(2) == 1
    frame = store.events_between(0, newest)
    assert frame["event_id"].tolist() == ["old-1", "old-2", "new-1"] and frame["seq"].tolist() == [1, 2, newest]
    store.record_trigger(newest, "after upgrade")
    assert store.last_trigger_watermark() == newest


def test_sqlite_database_from_the_raw_schema_keeps_working(tmp_path):
    path = tmp_path / "feedback.db"
    raw = sqlite3.connect(path)
    try:
        raw.executescript(OLD_SQLITE_SCHEMA)
        with raw:
            raw.executemany(OLD_INSERT, OLD_ROWS)
            raw.execute("INSERT INTO feedback_triggers (watermark, created_at, reason) VALUES (2, 100.0, 'old')")
        schema_before = raw.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    finally:
        raw.close()
    store = FeedbackStore(f"sqlite:///{path}")
    try:
        check_upgraded_store(store)
        with sqlite3.connect(path) as raw:  # nothing was re-created or altered; AUTOINCREMENT still applies
            schema = raw.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
            new_tables = ("feedback_quarantine", "erasure_requests", "impressions", "feedback_attributions")
            new_tables += ("experiments", "experiment_decisions")
            added = [row for row in schema if any(new in row[1] for new in new_tables)]
            assert [row for row in schema if row not in added] == schema_before
            assert {row[1] for row in added} >= set(new_tables)  # the new tables, nothing else changed
            newest = store.watermark()
            raw.execute("DELETE FROM feedback_events WHERE seq = ?", (newest,))
        raw.close()
        assert store.append([ev("new-2")]) == [("new-2", True)] and store.watermark() == newest + 1
    finally:
        store.close()


def test_postgres_database_from_the_raw_schema_keeps_working(postgres_url):
    psycopg2 = pytest.importorskip("psycopg2")
    with psycopg2.connect(postgres_url) as raw, raw.cursor() as cur:
        cur.execute(OLD_PG_SCHEMA)
        cur.executemany(OLD_INSERT.replace("?", "%s"), OLD_ROWS)
        cur.execute("INSERT INTO feedback_triggers (watermark, created_at, reason) VALUES (2, 100.0, 'old')")
    raw.close()
    store = FeedbackStore(postgres_url)
    try:
        check_upgraded_store(store)
    finally:
        store.close()


# --------------------------------------------------------------------------- PostgreSQL connection loss


def test_postgres_store_survives_its_connections_being_killed(postgres_url):
    psycopg2 = pytest.importorskip("psycopg2")
    store = FeedbackStore(postgres_url)
    admin = psycopg2.connect(postgres_url)
    admin.autocommit = True
    others = "datname = current_database() AND pid <> pg_backend_pid()"
    try:
        assert store.engine.dialect.driver == "psycopg2"  # the project's driver, not SQLAlchemy's default
        assert store.append([ev("k1")]) == [("k1", True)]
        with admin.cursor() as cur:
            cur.execute(f"SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity WHERE {others}")
            killed = cur.fetchall()
            assert killed and all(ok for _, ok in killed)  # the store's pooled connection(s)
            for _ in range(100):  # termination is asynchronous: wait until the backends are gone
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", ([pid for pid, _ in killed],))
                if cur.fetchone()[0] == 0:
                    break
                time.sleep(0.05)
        assert store.append([ev("k2")]) == [("k2", True)]  # same store object, a fresh connection
        assert store.count() == 2 and store.events_between(0, store.watermark())["event_id"].tolist() == ["k1", "k2"]
        with admin.cursor() as cur:
            cur.execute(f"SELECT pid FROM pg_stat_activity WHERE {others}")
            assert not {pid for (pid,) in cur.fetchall()} & {pid for pid, _ in killed}
    finally:
        store.close()
        admin.close()
