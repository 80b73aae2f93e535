"""The impression writer: one transaction per event-loop iteration on SQLite, the writer thread when the
loop cannot write (a locked database, PostgreSQL), and nothing written for a cancelled request."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import pytest

from components.feedback.store import FeedbackStore
from serving.feedback_writer import ImpressionWriter


def _row(n: int, **extra) -> dict:
    row = {"recommendation_id": f"rec-{n}", "arm": "champion", "model_version": "1", "user_id": str(n)}
    return {**row, "endpoint": "recommend", "item_ids": [1, 2, 3], "latency_ms": 1.5, "error": False, **extra}


@pytest.fixture
def store(tmp_path):
    store = FeedbackStore(f"sqlite:///{tmp_path / 'feedback.db'}")
    yield store
    store.engine.dispose()


def opened(writer: ImpressionWriter) -> ImpressionWriter:
    """The writer after its first write (through the thread), once its loop connection is open."""

    async def first():
        await writer.write([_row(-1)])
        for _ in range(200):
            if writer._loop_connection is not None or writer._loop_off:
                return
            await asyncio.sleep(0.01)

    asyncio.run(first())
    assert writer.loop_transactions == 0
    return writer


def test_the_first_write_goes_through_the_thread_and_opens_the_loop_connection(store):
    writer = ImpressionWriter(store)
    try:
        assert writer._loop_connection is None  # nothing opened at start: the store may be down then
        opened(writer)
        assert writer._loop_connection is not None and store.impression("rec--1") is not None
    finally:
        writer.close()


def test_answers_of_one_loop_iteration_share_one_transaction_on_the_loop(store):
    writer = opened(ImpressionWriter(store))

    async def main():
        return await asyncio.gather(*(writer.write([_row(n)]) for n in range(50)))

    try:
        written = asyncio.run(main())
        assert written == [[(f"rec-{n}", True)] for n in range(50)]
        assert writer.loop_transactions == 1  # all fifty in one commit, none through the thread
        stored = store.impression("rec-7")
        assert stored["user_id"] == "7" and stored["item_ids"] == '["1", "2", "3"]' and stored["error"] == 0
    finally:
        writer.close()


def test_a_locked_database_sends_the_rows_through_the_writer_thread_and_none_is_lost(store, tmp_path):
    writer = opened(ImpressionWriter(store))
    holder = sqlite3.connect(tmp_path / "feedback.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the database: the loop must not wait for it
    released = threading.Timer(0.3, lambda: holder.execute("COMMIT"))

    async def main():
        released.start()
        return await asyncio.gather(*(writer.write([_row(n)]) for n in range(5)))

    try:
        written = asyncio.run(main())
        assert [w[0][0] for w in written] == [f"rec-{n}" for n in range(5)]
        assert writer.loop_transactions == 0  # the thread waited for the lock and wrote them
        assert all(store.impression(f"rec-{n}") is not None for n in range(5))
    finally:
        released.cancel()
        holder.close()
        writer.close()


def test_a_request_cancelled_before_the_flush_writes_nothing(store):
    writer = opened(ImpressionWriter(store))

    async def main():
        cancelled = asyncio.ensure_future(writer.write([_row(1)]))
        kept = asyncio.ensure_future(writer.write([_row(2)]))
        await asyncio.sleep(0)  # both queued, the flush not yet run
        cancelled.cancel()
        return await kept

    try:
        assert asyncio.run(main()) == [("rec-2", True)]
        assert store.impression("rec-1") is None and store.impression("rec-2") is not None
    finally:
        writer.close()


def test_the_loop_connection_checkpoints_the_wal_in_a_thread(store, tmp_path, monkeypatch):
    writer = opened(ImpressionWriter(store))
    monkeypatch.setattr(type(writer._loop_connection), "CHECKPOINT_EVERY", 3)
    checkpoints = []
    monkeypatch.setattr(store, "checkpoint", lambda: checkpoints.append(threading.current_thread().name))

    async def main():
        for n in range(7):
            await writer.write([_row(n)])
        await asyncio.sleep(0.2)  # the executor's checkpoint runs

    try:
        asyncio.run(main())
        assert writer.loop_transactions == 7
        assert len(checkpoints) == 2 and threading.main_thread().name not in checkpoints
    finally:
        writer.close()


def test_a_row_the_database_rejects_fails_that_request_alone(store):
    writer = opened(ImpressionWriter(store))

    async def main():
        good = writer.write([_row(1)])
        bad = writer.write([_row(2, arm=None)])  # arm is NOT NULL: the loop's commit fails, the thread retries
        return await asyncio.gather(good, bad, return_exceptions=True)

    try:
        good, bad = asyncio.run(main())
        assert good == [("rec-1", True)] and isinstance(bad, Exception) and "NOT NULL" in str(bad)
        assert store.impression("rec-1") is not None and store.impression("rec-2") is None
    finally:
        writer.close()


def test_postgres_stores_never_write_on_the_loop(store, monkeypatch):
    monkeypatch.setattr(store, "is_postgres", True)
    assert store.loop_impression_connection() is None
    monkeypatch.setattr(store, "is_postgres", False)
    monkeypatch.setattr(store, "loop_impression_connection", lambda: None)  # as on PostgreSQL
    writer = opened(ImpressionWriter(store))

    async def main():
        return await writer.write([_row(1)])

    try:
        assert writer._loop_off and writer._loop_connection is None
        assert asyncio.run(main()) == [("rec-1", True)] and writer.loop_transactions == 0
        assert store.impression("rec-1") is not None
    finally:
        writer.close()
