"""serving.feedback_writer: the group-commit writer survives cancelled requests and failing
commits, writes nothing twice, and check_feedback refuses ids with control characters."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from components.feedback.store import FeedbackEvent, FeedbackStore
from serving.feedback_writer import FeedbackWriter


class SlowStore:
    """A real SQLite store whose append waits until released (so a request can be cancelled mid-write)."""

    def __init__(self, url: str, *, reject: str | None = None):
        self.inner, self.reject = FeedbackStore(url), reject
        self.entered, self.release = threading.Event(), threading.Event()
        self.release.set()
        self.calls = 0

    def append(self, events):
        self.calls += 1
        self.entered.set()
        self.release.wait(10)
        if self.reject and any(e.event_id == self.reject for e in events):
            raise ValueError("the database rejects this value")
        return self.inner.append(events)


def _events(prefix: str, n: int = 2) -> list[FeedbackEvent]:
    return [FeedbackEvent("u1", "i1", "like", event_id=f"{prefix}-{i}") for i in range(n)]


@pytest.fixture
def store_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'feedback.db'}"


def test_a_request_cancelled_mid_write_is_written_once_and_the_writer_goes_on(store_url):
    store = SlowStore(store_url)
    writer = FeedbackWriter(store)

    async def scenario():
        store.release.clear()
        first = asyncio.ensure_future(asyncio.wrap_future(writer.submit(_events("a"))))
        await asyncio.to_thread(store.entered.wait, 5)
        first.cancel()  # the client left while its events are being committed
        await asyncio.sleep(0.05)
        store.release.set()
        with pytest.raises(asyncio.CancelledError):
            await first
        return await asyncio.wait_for(asyncio.wrap_future(writer.submit(_events("b"))), 5)

    second = asyncio.run(scenario())
    assert [fresh for _, fresh in second] == [True, True]
    assert writer.alive
    ids = sorted(store.inner.events_between(0, store.inner.watermark())["event_id"])
    assert ids == ["a-0", "a-1", "b-0", "b-1"]  # the cancelled request's events exactly once
    writer.close()
    assert not writer.alive


def test_a_request_cancelled_before_its_turn_is_dropped(store_url):
    store = SlowStore(store_url)
    writer = FeedbackWriter(store)
    store.release.clear()
    busy = writer.submit(_events("busy", 1))
    assert store.entered.wait(5)
    waiting = writer.submit(_events("gone"))
    assert waiting.cancel()  # still queued: cancelling works and nothing will be written
    store.release.set()
    assert busy.result(5)[0][1] is True
    assert writer.submit(_events("after", 1)).result(5)[0][1] is True
    ids = set(store.inner.events_between(0, store.inner.watermark())["event_id"])
    assert ids == {"busy-0", "after-0"}
    writer.close()


def test_one_bad_request_fails_alone_and_the_rest_of_its_group_is_written(store_url):
    store = SlowStore(store_url, reject="bad-0")
    writer = FeedbackWriter(store)
    store.release.clear()
    blocker = writer.submit(_events("first", 1))
    assert store.entered.wait(5)
    good, bad, other = writer.submit(_events("good")), writer.submit(_events("bad")), writer.submit(_events("other"))
    store.release.set()  # good, bad and other now form one group, whose commit fails
    assert blocker.result(5)
    assert [fresh for _, fresh in good.result(5)] == [True, True]
    assert [fresh for _, fresh in other.result(5)] == [True, True]
    with pytest.raises(ValueError, match="rejects"):
        bad.result(5)
    ids = set(store.inner.events_between(0, store.inner.watermark())["event_id"])
    assert ids == {"first-0", "good-0", "good-1", "other-0", "other-1"}
    assert writer.alive
    writer.close()


def test_the_writer_survives_an_unexpected_error(store_url, monkeypatch):
    writer = FeedbackWriter(FeedbackStore(store_url))
    real = writer._next_group
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("something nobody planned for")
        return real()

    monkeypatch.setattr(writer, "_next_group", flaky)
    writer.submit([])  # the pending step returns this empty request; the next step is the failing one
    deadline = time.monotonic() + 5
    while calls["n"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writer.alive
    assert writer.submit(_events("later", 1)).result(5)[0][1] is True
    writer.close()


def test_a_stopped_writer_refuses_at_once(store_url):
    writer = FeedbackWriter(FeedbackStore(store_url))
    writer.close()
    with pytest.raises(RuntimeError, match="stopped"):
        writer.submit(_events("x", 1)).result(1)


@pytest.mark.parametrize("field", ["user_id", "item_id", "event_id"])
def test_ids_with_control_characters_are_refused(field):
    from components.settings import ValidationSettings
    from serving.feedback_writer import check_feedback
    from serving.schemas import FeedbackIn

    values = {"user_id": "7", "item_id": "9", "event": "like", "event_id": "e-1"}
    values[field] = "a\u0000b" if field != "item_id" else "x\u001fy"
    answer = check_feedback([FeedbackIn(**values)], None, ValidationSettings())
    assert answer.status_code == 400 and field.encode() in answer.body and b"control character" in answer.body


# ------------------------------------------------------------------------------- store health, bounded index
def test_commit_outcomes_and_probes_set_the_store_health(store_url):
    """The newest outcome wins: a failed commit makes the store down, a later success (commit or probe) up."""
    from serving.readiness import StoreHealth

    health = StoreHealth("postgresql://app:s3cret-pw@db:5432/feedback", stale_s=60)
    assert health.problem() is None  # just started: not yet stale
    store = SlowStore(store_url, reject="bad-0")
    writer = FeedbackWriter(store, health=health)
    with pytest.raises(ValueError):
        writer.submit(_events("bad", 1)).result(5)
    problem = health.problem()
    assert problem is not None and "ValueError" in problem and "app:***@db:5432" in problem
    assert "s3cret-pw" not in problem
    writer.submit(_events("good", 1)).result(5)
    assert health.problem() is None
    health.failed(RuntimeError("could not connect with password s3cret-pw"))
    assert "s3cret-pw" not in health.problem()
    health.ok()
    assert health.problem() is None
    writer.close()


def test_a_store_that_stops_answering_goes_stale():
    from serving.readiness import StoreHealth

    health = StoreHealth("sqlite:///x.db", stale_s=0.05)
    health.ok()
    assert health.problem() is None
    time.sleep(0.1)
    assert "has not answered" in health.problem()


class IndexStore:
    """The two store reads RecentFeedback makes, over an in-memory event list."""

    def __init__(self):
        self.events: list[tuple[str, int]] = []  # (user, seq)

    def watermark(self) -> int:
        return self.events[-1][1] if self.events else 0

    def events_between(self, after: int, upto: int):
        import pandas as pd

        rows = [(u, s) for u, s in self.events if after < s <= upto]
        return pd.DataFrame(rows, columns=["user_id", "seq"])

    def add(self, user: str) -> None:
        self.events.append((user, self.watermark() + 1))


def test_the_recent_feedback_index_is_bounded_and_never_forgets_a_user_with_events():
    from serving.feedback_writer import RecentFeedback

    store = IndexStore()
    recent = RecentFeedback(store, max_users=10)
    recent.refresh(0)
    assert not recent.may_have_events("nobody", 0)
    for n in range(50):
        store.add(f"u{n}")
    recent.refresh(0)
    assert recent._newest_seq.currsize == 10
    # every user with events still counts as maybe having some (the index dropped u0..u39: ask the store)
    assert all(recent.may_have_events(f"u{n}", 0) for n in range(50))
    assert not recent.may_have_events("u49", 50)  # nothing past a newer watermark
    assert recent.may_have_events("u5", 39) and not recent.may_have_events("u5", 40)  # dropped: up to seq 40
    recent.mark_written([f"w{n}" for n in range(20)])  # marks past the bound drop marks
    assert recent._newest_seq.currsize == 10 and recent.may_have_events("w0", 10**9)
    for n in range(20):
        store.add(f"w{n}")
    recent.refresh(0)  # a dropped mark's events are bounded by the store's watermark at the next scan
    assert recent._newest_seq.evicted == store.watermark()
    assert recent.may_have_events("w0", store.watermark() - 1) and not recent.may_have_events("w0", store.watermark())
