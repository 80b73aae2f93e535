"""Durable feedback: the checks, the group-commit writer, and the index of users with feedback newer than the model.

``check_feedback`` applies the catalogue's and the snapshot suites' rules before anything is written;
``FeedbackWriter`` writes every event to the feedback store before the request that sent it gets its
2xx; ``RecentFeedback`` lets the requests of users without such events skip asking the store.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
import uuid

import bentoml
import cachetools
from starlette.responses import JSONResponse

from serving.champion import feedback_watermark, user_or_none
from serving.schemas import error, invalid_user

log = logging.getLogger("lmrecsys.serving")

FEEDBACK_REFRESH_S = 1.0
"""How often events written by other processes are picked up by the recent-feedback index."""
SCAN_STEP = 5000
"""Most sequence numbers the recent-feedback index reads from the store in one query."""
FUTURE_SLACK_S = 86_400
"""Feedback timestamps may lie at most this far in the future (the snapshot suite's own slack)."""
FEEDBACK_WRITTEN = bentoml.metrics.Counter(
    name="lmrecsys_feedback_events_written", documentation="Feedback events durably written (duplicates not counted)"
)


async def record_feedback(events: list, engine, checks, writer: FeedbackWriter, recent: RecentFeedback):
    """Check ``events``, write them durably through ``writer`` and answer as ``/feedback`` does.

    The answer is ``{"accepted", "new", "duplicates", "event_ids"}`` once every event is committed, or the
    error answer of the first broken rule (nothing written), or a 503 when the store failed (nothing
    acknowledged). See ``check_feedback`` for ``engine`` and ``checks``.
    """
    checked = check_feedback(events, engine, checks)
    if isinstance(checked, JSONResponse):
        return checked
    try:
        written = await asyncio.wrap_future(writer.submit(checked))
    except Exception as exc:
        message = "the feedback store could not write the event(s), nothing was acknowledged"
        return error(503, f"{message}: {type(exc).__name__}; retry with the same event_id")
    recent.mark_written({e.user_id for e in checked})
    new = sum(1 for _, fresh in written if fresh)
    FEEDBACK_WRITTEN.inc(new)
    event_ids = [event_id for event_id, _ in written]
    return {"accepted": len(written), "new": new, "duplicates": len(written) - new, "event_ids": event_ids}


def check_feedback(events: list, engine, checks):
    """Store events for ``events`` (``FeedbackIn``), or the error answer for the first one that breaks a rule.

    ``engine`` is the served model's (None while none is loaded: item ids cannot be checked then);
    ``checks`` is ``settings.validation``, the rules the snapshot suites apply. Nothing is written here.
    """
    from components.feedback.store import FeedbackEvent

    now = time.time()
    if engine is not None:
        unknown = [e.item_id for e in events if engine.item_index(e.item_id) is None][:10]
        if unknown:
            message = f"unknown item id(s): {unknown}; nothing was written"
            return error(404, message, field="item_id", unknown_ids=unknown)
        bad_users = [e.user_id for e in events if user_or_none(engine, e.user_id) is None]
        if bad_users:
            message = f"user id(s) {bad_users[:10]} are not valid {engine.id_type} ids; nothing was written"
            return error(400, message, field="user_id")
    for position, e in enumerate(events):
        where = f" (event {position})" if len(events) > 1 else ""
        if e.event == "rating" and e.value is None:
            return error(400, f"rating events need a value{where}; nothing was written", field="value")
        if e.event == "rating" and not checks.value_min <= e.value <= checks.value_max:
            scale = f"[{checks.value_min}, {checks.value_max}]"
            return error(400, f"rating value {e.value} is outside {scale}{where}; nothing was written", field="value")
        if e.timestamp is not None and not checks.earliest_timestamp <= e.timestamp <= now + FUTURE_SLACK_S:
            message = (
                f"timestamp {e.timestamp} is before {checks.earliest_timestamp} or more than a day ahead{where}; "
                "nothing was written"
            )
            return error(400, message, field="timestamp")
        controlled = [n for n in ("user_id", "item_id", "event_id", "recommendation_id") if _has_control(getattr(e, n))]
        if controlled:
            message = f"{controlled[0]} holds a NUL or control character{where}; nothing was written"
            return error(400, message, field=controlled[0])
        if isinstance(e.user_id, str) and not e.user_id.strip() or isinstance(e.item_id, str) and not e.item_id.strip():
            field = "user_id" if not str(e.user_id).strip() else "item_id"
            return error(400, f"user_id and item_id must not be blank{where}; nothing was written", field=field)
    # The id is fixed here, not in the store, so a retry of this request stays a duplicate.
    return [
        FeedbackEvent(
            str(e.user_id),
            str(e.item_id),
            e.event,
            e.value,
            e.timestamp,
            e.event_id or f"fb-{uuid.uuid4().hex}",
            recommendation_id=e.recommendation_id,
            position=e.position,
        )
        for e in events
    ]


def _has_control(value) -> bool:
    """Whether a client-sent id holds a NUL or another control character (PostgreSQL rejects NUL, and
    such ids cannot be shown or typed back)."""
    return isinstance(value, str) and any(ord(c) < 32 or ord(c) == 127 for c in value)


class FeedbackWriter:
    """Writes feedback through one thread, all waiting requests in one transaction (group commit).

    Every commit is fsynced, so a commit per request would cap ingestion at the disk's fsync rate;
    grouping concurrent requests still writes each event durably before its 2xx, for one fsync per
    group.

    The thread cannot die of what a request does. A request cancelled before its turn is dropped
    (nothing written, nothing acknowledged; a retry with the same ``event_id`` is idempotent); one
    cancelled while its group is being written can no longer be cancelled, so its events are written
    exactly once. A group whose commit fails is retried request by request, so one bad request
    (a value the database rejects) fails alone. Any other error is logged and the loop goes on.
    """

    def __init__(self, store, max_group_events: int = 5000, health=None, method: str = "append") -> None:
        self.store = store
        self.method = method
        """The store method that writes a group (``append`` for events, ``log_impressions`` for impressions)."""
        self.max_group_events = max_group_events
        self.health = health
        """Told each commit's outcome (``ok()`` / ``failed(exc)``; a ``StoreHealth``), when given."""
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="feedback-writer", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether the writer thread is running (``/readyz`` reports 503 when it is not)."""
        return self._thread.is_alive()

    def submit(self, events: list) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        if not self.alive:
            future.set_exception(RuntimeError("the feedback writer is stopped"))
            return future
        self._queue.put((events, future))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            try:
                group, stop = self._next_group()
                self._write(group)
            except Exception:  # never let the writer thread die; the requests of the group were settled
                log.exception("the feedback writer hit an unexpected error; it carries on")
                stop = False
            if stop:
                return

    def _next_group(self) -> tuple[list, bool]:
        """The waiting requests, up to ``max_group_events`` events, minus those already cancelled."""
        first = self._queue.get()
        if first is None:
            return [], True
        group, size, stop = [first], len(first[0]), False
        while size < self.max_group_events:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                stop = True
                break
            group.append(item)
            size += len(item[0])
        # From here on a request cannot be cancelled: it will be written and told so.
        return [(events, future) for events, future in group if future.set_running_or_notify_cancel()], stop

    def _write(self, group: list) -> None:
        if not group:
            return
        try:
            written = getattr(self.store, self.method)([event for events, _ in group for event in events])
        except Exception as exc:
            if self.health is not None:
                self.health.failed(exc)
            if len(group) > 1:  # find the request that broke the commit; the others still go in
                log.warning("a group commit of %d requests failed (%s); writing them one by one", len(group), exc)
                for item in group:
                    self._write([item])
                return
            log.exception("writing %d feedback event(s) failed", len(group[0][0]))
            _settle(group[0][1], exception=exc)  # the request learns the write failed; it gets no 2xx
            return
        if self.health is not None:
            self.health.ok()
        start = 0
        for events, future in group:
            _settle(future, result=written[start : start + len(events)])
            start += len(events)


class ImpressionWriter:
    """Writes impressions durably before the answer goes out, at the least cost per answer.

    On SQLite every answer finished in one event-loop iteration is written in one transaction right there
    on the loop (``LoopImpressionConnection``: no thread hand-off, no wake-up per answer, no fsync), and
    the WAL is checkpointed in a thread now and then. When that database is busy (another writer holds it:
    the loop never waits for a lock) or the write fails, those answers go through the group-committing
    writer thread instead, which waits, retries one by one and reports the store's health. PostgreSQL
    always uses the writer thread (a network round trip must stay off the loop), as do callers outside
    the loop (``submit``). The loop's connection is opened in a thread after the first write through
    the writer thread succeeded, so a store that is down at start, or slow to open, never blocks the loop.
    """

    def __init__(self, store, health=None) -> None:
        self.store = store
        self.thread = FeedbackWriter(store, health=health, method="log_impressions")
        self._loop_connection = None
        self._opening = False
        self._loop_off = False
        """No loop connection for this store (PostgreSQL)."""
        self._pending: list[tuple[list[dict], asyncio.Future]] = []
        self._checkpointing = False
        self.loop_transactions = 0
        """Transactions written on the loop (the rest went through the thread)."""

    @property
    def alive(self) -> bool:
        return self.thread.alive

    def submit(self, rows: list[dict]) -> concurrent.futures.Future:
        """From any thread: the writer thread's future for ``rows``."""
        return self.thread.submit(rows)

    async def write(self, rows: list[dict]) -> list[tuple[str, bool]]:
        """Write ``rows`` durably; returns (recommendation_id, True) per row, or raises what the store raised."""
        loop = asyncio.get_running_loop()
        if self._loop_connection is None:
            written = await asyncio.wrap_future(self.thread.submit(rows))
            if not (self._opening or self._loop_off):
                self._opening = True
                loop.run_in_executor(None, self._open)
            return written
        future = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush, loop)
        self._pending.append((rows, future))
        written = await future
        if written is None:  # the loop could not write them: the writer thread will
            return await asyncio.wrap_future(self.thread.submit(rows))
        return written

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        group, self._pending = [(rows, f) for rows, f in self._pending if not f.done()], []  # done: cancelled
        if not group:
            return
        try:
            written = self._loop_connection.write([row for rows, _ in group for row in rows])
        except Exception as exc:  # busy (never waited for), or anything else: the thread retries and reports
            log.debug("impressions written through the writer thread instead of the loop: %s", exc)
            written = None
        start = 0
        for rows, future in group:
            future.set_result(None if written is None else written[start : start + len(rows)])
            start += len(rows)
        if written is not None:
            self.loop_transactions += 1
            if self._loop_connection.checkpoint_due and not self._checkpointing:
                self._checkpointing = True
                loop.run_in_executor(None, self._checkpoint)

    def _open(self) -> None:
        try:
            connection = self.store.loop_impression_connection()
        except Exception as exc:  # the writer thread goes on; a later write tries again
            log.warning("the impression log's loop connection could not be opened: %s", exc)
        else:
            self._loop_off = connection is None
            self._loop_connection = connection
        finally:
            self._opening = False

    def _checkpoint(self) -> None:
        try:
            self.store.checkpoint()
        except Exception as exc:  # the next one tries again; the WAL only grows meanwhile
            log.warning("a WAL checkpoint of the impression log failed: %s", exc)
        finally:
            self._checkpointing = False

    def close(self) -> None:
        self.thread.close()
        if self._loop_connection is not None:
            self._loop_connection.close()


def _settle(future: concurrent.futures.Future, *, result=None, exception: BaseException | None = None) -> None:
    """Resolve a request's future; one nobody waits for any more is left alone."""
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except concurrent.futures.InvalidStateError:
        log.warning("a feedback request was resolved twice; ignored")


class NewestSeq(cachetools.FIFOCache):
    """User id -> the newest feedback seq seen for them, at most ``maxsize`` users (the least recently
    written dropped first). ``evicted`` is the largest seq among the users dropped: a user it no longer
    holds may have events up to that seq, so for them the store must be asked."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize)
        self.evicted = -1.0

    def __delitem__(self, key) -> None:  # only the cache deletes (when full): every deletion is an eviction
        self.evicted = max(self.evicted, cachetools.Cache.__getitem__(self, key))  # before the entry goes
        super().__delitem__(key)

    def newest(self, user_id: str) -> float:
        try:
            return self[user_id]
        except KeyError:  # not held (never written, or dropped): as new as the newest dropped user
            return self.evicted


class RecentFeedback:
    """Which users may have feedback newer than the served model's watermark.

    Asking the store on every request costs a query (a network round trip on PostgreSQL); most users
    have no recent events, so this index lets those requests skip it. Writes through this process
    count at once; events written by other processes are picked up every ``refresh_s``. It holds at most
    ``max_users`` users; once it has dropped some, requests of users it does not hold ask the store, so
    the answers stay right while memory stays flat.
    """

    def __init__(self, store, refresh_s: float = FEEDBACK_REFRESH_S, max_users: int = 100_000) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self.max_users = max_users
        self._newest_seq = NewestSeq(max_users)
        self._scanned_upto = 0
        self._floor: int | None = None
        self._lock = threading.Lock()

    def may_have_events(self, user_id: str, watermark: int) -> bool:
        return self._newest_seq.newest(user_id) > watermark

    def holds(self, user_id: str) -> bool:
        return user_id in self._newest_seq

    def forget(self, is_forgotten) -> int:
        """Drop users for whom ``is_forgotten(user)`` holds (an erasure: the store has deleted their events,
        so this is not an eviction and ``evicted`` stays); returns how many."""
        with self._lock:
            gone = [user for user in list(self._newest_seq) if is_forgotten(user)]
            evicted = self._newest_seq.evicted
            for user in gone:
                del self._newest_seq[user]
            self._newest_seq.evicted = evicted
        return len(gone)

    def for_request(self, loaded, user_id, limit: int):
        """(loaded model, user id, their events since training), or the 400 for an invalid id, or a 503 when
        the user may have recent events and the store does not answer."""
        user = user_or_none(loaded.engine, user_id)
        if user is None:
            return invalid_user(loaded.engine, user_id)
        try:
            recent = self.events_since(str(user), feedback_watermark(loaded.engine), limit)
        except Exception as exc:  # the store is down (so is /readyz): no answer that silently drops their feedback
            message = "the feedback store does not answer, so this user's recent feedback cannot be read"
            return error(503, f"{message} ({type(exc).__name__}); retry later")
        return loaded, user, recent

    def events_since(self, user_id: str, watermark: int, limit: int) -> list[tuple]:
        """The user's newest events past ``watermark`` (at most ``limit``); the store is asked only when
        there may be some."""
        if not self.may_have_events(user_id, watermark):
            return []
        return self.store.user_events_since(user_id, watermark, limit=limit)

    def mark_written(self, user_ids) -> None:
        # The exact seq is unknown until the next scan; infinity means "ask the store". The lock
        # orders this after any scan in progress, so a scan never overwrites a fresher mark.
        with self._lock:
            for user_id in user_ids:
                self._newest_seq[user_id] = float("inf")

    def refresh(self, watermark: int) -> None:
        """Scan events past what was already scanned (or rebuild when the floor moved down)."""
        with self._lock:
            if self._floor is None or watermark < self._floor:
                self._floor, self._scanned_upto = watermark, watermark
                self._newest_seq = NewestSeq(self.max_users)
            index = self._newest_seq
            upto = self.store.watermark()
            while self._scanned_upto < upto:  # in steps, so a burst of events never becomes one huge frame
                step_upto = min(upto, self._scanned_upto + SCAN_STEP)
                frame = self.store.events_between(self._scanned_upto, step_upto)
                newest = frame.groupby("user_id")["seq"].max().sort_values() if len(frame) else ()
                for user_id, seq in newest.items() if len(frame) else ():  # oldest first: the first dropped
                    key = str(user_id)
                    known = index.get(key, -1.0)
                    index[key] = float(seq) if known == float("inf") else max(known, float(seq))
                self._scanned_upto = step_upto
            # A user marked written and dropped before a scan saw their seq: their events were committed
            # before this scan read the store's watermark, so ``upto`` bounds them.
            if index.evicted == float("inf"):
                index.evicted = float(upto)
