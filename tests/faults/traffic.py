"""Steady client traffic for fault tests, and the checks on what the store holds afterwards.

``FeedbackPump`` posts unique events to ``/feedback`` from a few threads and records every
outcome; ``stored_event_ids`` asks the store which of the acknowledged ids it holds.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass

import requests


@dataclass(frozen=True)
class Outcome:
    sent: float
    """``time.monotonic()`` when the request was sent."""
    done: float
    status: int
    """The HTTP status, 0 for a connection error or a timeout."""
    event_id: str


class FeedbackPump:
    """Threads posting one new ``view`` event per request, as fast as the service answers."""

    def __init__(self, base: str, prefix: str, *, threads: int = 4, users: int = 30, item_id=1, timeout: float = 30):
        self.base, self.prefix, self.users, self.item_id, self.timeout = base, prefix, users, item_id, timeout
        self.outcomes: list[Outcome] = []
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._threads = [threading.Thread(target=self._post, args=(n,), daemon=True) for n in range(threads)]

    def start(self) -> FeedbackPump:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> FeedbackPump:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 10)
        return self

    def _post(self, worker: int) -> None:
        session = requests.Session()
        n = 0
        while not self._stop.is_set():
            n += 1
            event_id = f"{self.prefix}-{worker}-{n}"
            body = {"user_id": 1 + n % self.users, "item_id": self.item_id, "event": "view", "event_id": event_id}
            sent = time.monotonic()
            try:
                status = session.post(f"{self.base}/feedback", json=body, timeout=self.timeout).status_code
            except requests.RequestException:
                status = 0
                session = requests.Session()
                time.sleep(0.05)  # a refused connection answers at once; do not spin
            with self._lock:
                self.outcomes.append(Outcome(sent, time.monotonic(), status, event_id))

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def acknowledged(self) -> list[str]:
        return [o.event_id for o in self.snapshot() if 200 <= o.status < 300]

    def statuses(self) -> Counter:
        return Counter(o.status for o in self.snapshot())

    def first_ok_after(self, moment: float) -> float | None:
        """When the first 2xx sent at or after ``moment`` came back (monotonic), or None."""
        done = [o.done for o in self.snapshot() if o.sent >= moment and 200 <= o.status < 300]
        return min(done) if done else None

    def wait_acknowledged(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acknowledged()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self.acknowledged())} of {count} events acknowledged: {self.statuses()}")
            time.sleep(0.05)


def stored_event_ids(store_url: str, event_ids) -> set[str]:
    """Which of ``event_ids`` the feedback store at ``store_url`` holds, asked by event id."""
    import sqlalchemy as sa

    from components.feedback.store import FeedbackStore

    wanted, found = sorted(set(event_ids)), set()
    store = FeedbackStore(store_url)
    try:
        with store.engine.connect() as conn:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                rows = conn.execute(
                    sa.text("SELECT event_id FROM feedback_events WHERE event_id IN :ids").bindparams(
                        sa.bindparam("ids", expanding=True)
                    ),
                    {"ids": chunk},
                )
                found.update(row[0] for row in rows)
    finally:
        store.close()
    return found
