"""The feedback store: durable, idempotent event log written by serving and read by ingestion.

Events get a monotonically increasing sequence number ``seq``; a snapshot records the highest
``seq`` it contains as its *feedback watermark*. SQLite (WAL mode, ``synchronous=FULL``) is the
embedded default; ``postgresql://`` URLs use PostgreSQL, where inserts take a transaction-level
advisory lock so that sequence order equals commit order and a watermark never skips an event.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from components.data.events import EVENT_TYPES
from components.errors import LmRecsysError

EVENT_FIELDS = ("event_id", "user_id", "item_id", "event", "value", "event_ts")
_PG_LOCK_KEY = 0x1A2B3C


class FeedbackError(LmRecsysError):
    """A feedback event is malformed or the store cannot be reached."""


@dataclass(frozen=True)
class FeedbackEvent:
    """One user action on one item."""

    user_id: str
    item_id: str
    event: str
    value: float | None = None
    event_ts: float | None = None
    event_id: str | None = None

    def normalised(self) -> tuple:
        if not str(self.user_id).strip() or not str(self.item_id).strip():
            raise FeedbackError("feedback events need a non-empty user_id and item_id")
        if self.event not in EVENT_TYPES:
            raise FeedbackError(f"unknown event type {self.event!r}; use one of {', '.join(EVENT_TYPES)}")
        return (
            self.event_id or f"fb-{uuid.uuid4().hex}",
            str(self.user_id).strip(),
            str(self.item_id).strip(),
            self.event,
            None if self.value is None else float(self.value),
            float(self.event_ts if self.event_ts is not None else time.time()),
        )


_SQLITE_SCHEMA = """
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

_PG_SCHEMA = """
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


class FeedbackStore:
    """Append-only event log over SQLite or PostgreSQL. Thread-safe; one connection per thread."""

    def __init__(self, url: str):
        self.url = url
        self.is_postgres = url.startswith(("postgresql://", "postgres://"))
        if not self.is_postgres and not url.startswith("sqlite:///"):
            raise FeedbackError(f"feedback store URL {url!r} must start with sqlite:/// or postgresql://")
        self._local = threading.local()
        self._schema_ready = False
        self._connect()

    # -- connections
    def _connect(self):
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self.is_postgres:
            import psycopg2

            try:
                conn = psycopg2.connect(self.url, connect_timeout=10)
            except psycopg2.OperationalError as exc:
                raise FeedbackError(f"cannot reach the feedback store at {self.url}: {exc}") from exc
            if not self._schema_ready:
                with conn, conn.cursor() as cur:
                    cur.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_LOCK_KEY,))
                    cur.execute(_PG_SCHEMA)
        else:
            path = Path(self.url.removeprefix("sqlite:///"))
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
            if not self._schema_ready:
                conn.executescript(_SQLITE_SCHEMA)
        self._schema_ready = True
        self._local.conn = conn
        return conn

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        conn = self._connect()
        if self.is_postgres:
            with conn, conn.cursor() as cur:
                cur.execute(sql.replace("?", "%s"), params)
                return cur.fetchall() if cur.description else []
        return conn.execute(sql, params).fetchall()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- writes
    def append(self, events: Iterable[FeedbackEvent]) -> list[tuple[str, bool]]:
        """Write events durably in one transaction; return (event_id, newly_written) per event.

        Re-sending an event id is a no-op, so clients may retry safely.
        """
        rows = [event.normalised() for event in events]
        if not rows:
            return []
        now = time.time()
        conn = self._connect()
        written: list[tuple[str, bool]] = []
        sql = (
            "INSERT INTO feedback_events (event_id, user_id, item_id, event, value, event_ts, received_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING"
        )
        if self.is_postgres:
            with conn, conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_LOCK_KEY,))
                for row in rows:
                    cur.execute(sql.replace("?", "%s"), (*row, now))
                    written.append((row[0], cur.rowcount == 1))
            return written
        conn.execute("BEGIN IMMEDIATE")
        try:
            for row in rows:
                cursor = conn.execute(sql, (*row, now))
                written.append((row[0], cursor.rowcount == 1))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return written

    def record_trigger(self, watermark: int, reason: str) -> None:
        """Remember that a pipeline run was requested covering events up to ``watermark``."""
        self._query("INSERT INTO feedback_triggers (watermark, created_at, reason) VALUES (?, ?, ?)", (int(watermark), time.time(), reason))

    # -- reads
    def watermark(self) -> int:
        """The highest sequence number written so far (0 when empty)."""
        return int(self._query("SELECT COALESCE(MAX(seq), 0) FROM feedback_events")[0][0])

    def last_trigger_watermark(self) -> int:
        rows = self._query("SELECT COALESCE(MAX(watermark), 0) FROM feedback_triggers")
        return int(rows[0][0])

    def count_since(self, watermark: int) -> int:
        return int(self._query("SELECT COUNT(*) FROM feedback_events WHERE seq > ?", (int(watermark),))[0][0])

    def count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM feedback_events")[0][0])

    def oldest_received_since(self, watermark: int) -> float | None:
        rows = self._query("SELECT MIN(received_at) FROM feedback_events WHERE seq > ?", (int(watermark),))
        return None if rows[0][0] is None else float(rows[0][0])

    def events_between(self, after: int, upto: int) -> pd.DataFrame:
        """Events with ``after < seq <= upto`` as a frame, in sequence order."""
        rows = self._query(
            "SELECT seq, event_id, user_id, item_id, event, value, event_ts FROM feedback_events "
            "WHERE seq > ? AND seq <= ? ORDER BY seq",
            (int(after), int(upto)),
        )
        return pd.DataFrame(rows, columns=["seq", *EVENT_FIELDS[:4], "value", "event_ts"])

    def user_events_since(self, user_id: str, watermark: int, limit: int = 200) -> list[tuple[str, str, float | None, float]]:
        """A user's newest events past ``watermark``: (item_id, event, value, event_ts), oldest first."""
        rows = self._query(
            "SELECT item_id, event, value, event_ts FROM feedback_events WHERE user_id = ? AND seq > ? "
            "ORDER BY seq DESC LIMIT ?",
            (str(user_id), int(watermark), int(limit)),
        )
        return list(reversed(rows))
