"""The feedback store: durable, idempotent event log written by serving and read by ingestion.

Events get a monotonically increasing sequence number ``seq``; a snapshot records the highest
``seq`` it contains as its *feedback watermark*. SQLite (WAL mode, ``synchronous=FULL``) is the
embedded default; ``postgresql://`` URLs use PostgreSQL, where inserts take a transaction-level
advisory lock so that sequence order equals commit order and a watermark never skips an event.

The store is written on SQLAlchemy Core: one pooled ``Engine`` per store (``pool_pre_ping``, so a
connection the server dropped is replaced on the next call), the tables declared once below and
created with ``MetaData.create_all``. The table and column names are those of the earlier
hand-written schema, so a database created by an older release keeps working as it is.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite

from components.data.events import EVENT_TYPES
from components.errors import LmRecsysError
from components.feedback.impressions import ImpressionLog, impressions_metadata
from components.settings import redact_url

EVENT_FIELDS = ("event_id", "user_id", "item_id", "event", "value", "event_ts")
_PG_LOCK_KEY = 0x1A2B3C
_POOL_OPTIONS: dict[str, Any] = {"pool_pre_ping": True, "pool_size": 5, "max_overflow": 10, "pool_timeout": 30.0}
_SQLITE_TIMEOUT_S = 30.0
_SQLITE_PRAGMAS = (f"busy_timeout={int(_SQLITE_TIMEOUT_S * 1000)}", "journal_mode=WAL", "synchronous=FULL")
_SQLITE_BEGIN = "lmrecsys_sqlite_begin"  # execution option: how the SQLite begin hook opens a transaction


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
    recommendation_id: str | None = None
    """The impression the event answers (``components.feedback.impressions``), if the client named one."""
    position: int | None = None

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


# -- schema: INTEGER PRIMARY KEY AUTOINCREMENT on SQLite (a seq is never reused), BIGSERIAL on PostgreSQL
_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_REAL = sa.Double().with_variant(sqlite.REAL(), "sqlite")

metadata = sa.MetaData()

feedback_events = sa.Table(
    "feedback_events",
    metadata,
    sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.Text(), nullable=False, unique=True),
    sa.Column("user_id", sa.Text(), nullable=False),
    sa.Column("item_id", sa.Text(), nullable=False),
    sa.Column("event", sa.Text(), nullable=False),
    sa.Column("value", _REAL),
    sa.Column("event_ts", _REAL, nullable=False),
    sa.Column("received_at", _REAL, nullable=False),
    sa.Index("feedback_events_user", "user_id", "seq"),
    sqlite_autoincrement=True,
)

feedback_triggers = sa.Table(
    "feedback_triggers",
    metadata,
    sa.Column("id", _SEQ, primary_key=True, autoincrement=True),
    sa.Column("watermark", _SEQ, nullable=False),
    sa.Column("created_at", _REAL, nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sqlite_autoincrement=True,
)

feedback_quarantine = sa.Table(
    "feedback_quarantine",
    metadata,
    sa.Column("event_id", sa.Text(), primary_key=True),
    sa.Column("user_id", sa.Text(), nullable=False),
    sa.Column("item_id", sa.Text(), nullable=False),
    sa.Column("event", sa.Text(), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("origin", sa.Text(), nullable=False),  # "ingest" (a screening rule) or "operator"
    sa.Column("actor", sa.Text(), nullable=False),
    sa.Column("snapshot_id", sa.Text()),
    sa.Column("quarantined_at", _REAL, nullable=False),
)
"""Events held back from every snapshot, with why, by whom and when. The events stay in ``feedback_events``
(nothing is deleted); ingest leaves out every event id listed here, from new feedback and from the parent."""

erasure_requests = sa.Table(
    "erasure_requests",
    metadata,
    sa.Column("user_key", sa.Text(), primary_key=True),  # a keyed hash of the user id, never the id itself
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("requested_at", _REAL, nullable=False),
    sa.Column("state", sa.Text(), nullable=False),  # pending → serving-clean → done
    sa.Column("updated_at", _REAL, nullable=False),
    sa.Column("triggered_at", _REAL),  # when a pipeline run was requested for it
    sa.Column("events_deleted", sa.BigInteger(), nullable=False),
    sa.Column("detail", sa.Text(), nullable=False),  # JSON: what each step did or has left
)
"""Tombstones of forgotten users (components.privacy): while one stands, no snapshot holds the user's rows."""

_events = feedback_events.c
_erasures = erasure_requests.c
ERASURE_STATES = ("pending", "serving-clean", "done")
_quarantine = feedback_quarantine.c
QUARANTINE_FIELDS = ("event_id", "user_id", "item_id", "event", "reason", "origin", "actor", "snapshot_id")


# -- engines
def _sqlite_on_connect(dbapi_connection, _record) -> None:
    """Every new SQLite connection: driver autocommit (transactions are opened by ``_sqlite_on_begin``),
    busy timeout, WAL journal, ``synchronous=FULL``."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        for pragma in _SQLITE_PRAGMAS:
            cursor.execute(f"PRAGMA {pragma}")
    finally:
        cursor.close()


def _sqlite_on_begin(connection: sa.Connection) -> None:
    """Writes open ``BEGIN IMMEDIATE`` (the write lock up front); reads run as single autocommit statements."""
    mode = connection.get_execution_options().get(_SQLITE_BEGIN)
    if mode is not None:
        connection.exec_driver_sql(f"BEGIN {mode}")


def _sqlite_engine(url: str) -> sa.Engine:
    path = Path(url.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(
        sa.URL.create("sqlite", database=str(path)),
        connect_args={"timeout": _SQLITE_TIMEOUT_S, "check_same_thread": False},
        **_POOL_OPTIONS,
    )
    sa.event.listen(engine, "connect", _sqlite_on_connect)
    sa.event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _postgres_engine(url: str) -> sa.Engine:
    """psycopg2 (the project's PostgreSQL driver), named explicitly: SQLAlchemy 2.1 defaults to psycopg 3."""
    try:
        target = sa.make_url("postgresql+psycopg2://" + url.split("://", 1)[1])
    except sa_exc.ArgumentError as exc:
        raise FeedbackError(f"feedback store URL {redact_url(url)!r} is not a valid PostgreSQL URL: {exc}") from exc
    return sa.create_engine(target, connect_args={"connect_timeout": 10}, **_POOL_OPTIONS)


class FeedbackStore(ImpressionLog):
    """Append-only event log over SQLite or PostgreSQL, with the impression log and experiment records of
    ``ImpressionLog``. Thread-safe; connections come from one pool."""

    def __init__(self, url: str):
        self.url = url
        self.is_postgres = url.startswith(("postgresql://", "postgres://"))
        if not self.is_postgres and not url.startswith("sqlite:///"):
            raise FeedbackError(f"feedback store URL {redact_url(url)!r} must start with sqlite:/// or postgresql://")
        self.engine = _postgres_engine(url) if self.is_postgres else _sqlite_engine(url)
        dialect_insert = postgresql.insert if self.is_postgres else sqlite.insert
        self._insert = (
            dialect_insert(feedback_events)
            .on_conflict_do_nothing(index_elements=[_events.event_id])
            .returning(_events.event_id)
        )
        try:
            with self._transaction(lock=self.is_postgres) as conn:
                metadata.create_all(conn)
                impressions_metadata.create_all(conn)
        except BaseException:
            self.engine.dispose()
            raise

    # -- connections
    @contextmanager
    def _connection(self, write: bool = False) -> Iterator[sa.Connection]:
        try:
            conn = self.engine.connect()
        except sa_exc.DBAPIError as exc:
            reason = exc.orig if exc.orig is not None else exc
            raise FeedbackError(f"cannot reach the feedback store at {redact_url(self.url)}: {reason}") from exc
        with conn:
            if write and not self.is_postgres:
                conn.execution_options(**{_SQLITE_BEGIN: "IMMEDIATE"})
            yield conn

    @contextmanager
    def _transaction(self, lock: bool = False) -> Iterator[sa.Connection]:
        """One committed write transaction; ``lock`` takes the PostgreSQL advisory lock first."""
        with self._connection(write=True) as conn, conn.begin():
            if lock:
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_LOCK_KEY)))
            yield conn

    def _rows(self, statement: sa.Executable) -> list[tuple]:
        with self._connection() as conn:
            return [tuple(row) for row in conn.execute(statement)]

    def _scalar(self, statement: sa.Executable) -> Any:
        with self._connection() as conn:
            return conn.execute(statement).scalar_one()

    def close(self) -> None:
        """Close the pooled connections (the store reconnects if it is used again)."""
        self.engine.dispose()

    # -- writes
    def append(self, events: Iterable[FeedbackEvent]) -> list[tuple[str, bool]]:
        """Write events durably in one transaction; return (event_id, newly_written) per event.

        Re-sending an event id is a no-op, so clients may retry safely.
        """
        events = list(events)
        rows = [event.normalised() for event in events]
        if not rows:
            return []
        now = time.time()
        params = [{**dict(zip(EVENT_FIELDS, row)), "received_at": now} for row in rows]
        written: list[tuple[str, bool]] = []
        with self._transaction(lock=self.is_postgres) as conn:
            fresh = set(conn.execute(self._insert, params).scalars())
            named = []  # newly written events that name a recommendation: attributed in the same transaction
            for event, row in zip(events, rows):
                written.append((row[0], row[0] in fresh))
                if row[0] in fresh and event.recommendation_id:
                    named.append((row, str(event.recommendation_id), event.position))
                fresh.discard(row[0])  # a second copy within the batch is a duplicate of the first
            self._attribute(conn, named)
        return written

    def quarantine(self, rows: Iterable[dict]) -> int:
        """Hold events back from snapshots (``QUARANTINE_FIELDS`` per row); returns how many were newly held.

        Idempotent: an event already held keeps its first reason.
        """
        now = time.time()
        params = [{**{k: row.get(k) for k in QUARANTINE_FIELDS}, "quarantined_at": now} for row in rows]
        if not params:
            return 0
        insert = (postgresql.insert if self.is_postgres else sqlite.insert)(feedback_quarantine)
        statement = insert.on_conflict_do_nothing(index_elements=[_quarantine.event_id]).returning(_quarantine.event_id)
        with self._transaction() as conn:
            return len(conn.execute(statement, params).scalars().all())

    def select_events(
        self, *, user_id: str | None = None, since: float | None = None, event_id: str | None = None
    ) -> pd.DataFrame:
        """Stored events matching every given filter (``since``: received at or after, epoch seconds)."""
        if user_id is None and since is None and event_id is None:
            raise FeedbackError("select_events needs at least one of user_id, since, event_id")
        statement = sa.select(*(_events[name] for name in EVENT_FIELDS), _events.seq).order_by(_events.seq)
        if user_id is not None:
            statement = statement.where(_events.user_id == str(user_id))
        if since is not None:
            statement = statement.where(_events.received_at >= float(since))
        if event_id is not None:
            statement = statement.where(_events.event_id == str(event_id))
        return pd.DataFrame(self._rows(statement), columns=[*EVENT_FIELDS, "seq"])

    def quarantined(self, limit: int | None = None) -> pd.DataFrame:
        """Held-back events, newest first, with their reasons."""
        columns = [*QUARANTINE_FIELDS, "quarantined_at"]
        statement = sa.select(*(_quarantine[name] for name in columns)).order_by(
            _quarantine.quarantined_at.desc(), _quarantine.event_id
        )
        if limit is not None:
            statement = statement.limit(int(limit))
        return pd.DataFrame(self._rows(statement), columns=columns)

    def quarantined_ids(self) -> set[str]:
        return {row[0] for row in self._rows(sa.select(_quarantine.event_id))}

    # -- erasure (components.privacy drives these)
    def forget(self, user_id: str, user_key: str, reason: str) -> dict:
        """Delete the user's events (held-back events, impressions, attributions) and stand a tombstone, in one
        transaction.

        Idempotent: forgetting again deletes whatever arrived since and keeps the first tombstone.
        """
        now = time.time()
        insert = (postgresql.insert if self.is_postgres else sqlite.insert)(erasure_requests)
        statement = insert.on_conflict_do_nothing(index_elements=[_erasures.user_key]).returning(_erasures.user_key)
        with self._transaction(lock=self.is_postgres) as conn:
            deleted = conn.execute(feedback_events.delete().where(_events.user_id == str(user_id))).rowcount
            conn.execute(feedback_quarantine.delete().where(_quarantine.user_id == str(user_id)))
            self._forget_impressions(conn, user_id)  # impressions and attributions hold the user id too
            row = {"user_key": user_key, "reason": reason, "requested_at": now, "state": "pending"}
            fresh = (
                conn.execute(statement, {**row, "updated_at": now, "events_deleted": int(deleted), "detail": "{}"})
                .scalars()
                .all()
            )
            if not fresh and deleted:
                conn.execute(
                    erasure_requests.update()
                    .where(_erasures.user_key == user_key)
                    .values(events_deleted=_erasures.events_deleted + int(deleted), updated_at=now)
                )
        return {"new_request": bool(fresh), "events_deleted": int(deleted)}

    def erasures(self, state: str | None = None) -> pd.DataFrame:
        """Erasure requests, oldest first (optionally only those in ``state``)."""
        columns = [c.name for c in erasure_requests.columns]
        statement = sa.select(erasure_requests).order_by(_erasures.requested_at, _erasures.user_key)
        if state is not None:
            statement = statement.where(_erasures.state == state)
        return pd.DataFrame(self._rows(statement), columns=columns)

    def tombstoned_keys(self) -> set[str]:
        return {row[0] for row in self._rows(sa.select(_erasures.user_key))}

    def set_erasure_state(self, user_keys: Iterable[str], state: str, detail: str | None = None) -> int:
        """Move requests to ``state`` (and record ``detail``, JSON); returns how many moved."""
        if state not in ERASURE_STATES:
            raise FeedbackError(f"unknown erasure state {state!r}; use one of {', '.join(ERASURE_STATES)}")
        keys = list(user_keys)
        if not keys:
            return 0
        values = {"state": state, "updated_at": time.time(), **({"detail": detail} if detail is not None else {})}
        with self._transaction() as conn:
            return conn.execute(erasure_requests.update().where(_erasures.user_key.in_(keys)).values(**values)).rowcount

    def claim_erasure_trigger(self) -> int:
        """Mark pending requests that no run was requested for yet; returns how many there were."""
        untriggered = sa.and_(_erasures.state == "pending", _erasures.triggered_at.is_(None))
        with self._transaction() as conn:
            return conn.execute(erasure_requests.update().where(untriggered).values(triggered_at=time.time())).rowcount

    def untriggered_erasures(self) -> int:
        where = sa.and_(_erasures.state == "pending", _erasures.triggered_at.is_(None))
        return int(self._scalar(sa.select(sa.func.count()).select_from(erasure_requests).where(where)))

    def user_event_count(self, user_id: str) -> int:
        return int(self._scalar(sa.select(sa.func.count()).where(_events.user_id == str(user_id))))

    def record_trigger(self, watermark: int, reason: str) -> None:
        """Remember that a pipeline run was requested covering events up to ``watermark``."""
        with self._transaction() as conn:
            conn.execute(
                feedback_triggers.insert().values(watermark=int(watermark), created_at=time.time(), reason=reason)
            )

    # -- reads
    def watermark(self) -> int:
        """The highest sequence number written so far (0 when empty)."""
        return int(self._scalar(sa.select(sa.func.coalesce(sa.func.max(_events.seq), 0))))

    def last_trigger_watermark(self) -> int:
        return int(self._scalar(sa.select(sa.func.coalesce(sa.func.max(feedback_triggers.c.watermark), 0))))

    def count_since(self, watermark: int) -> int:
        return int(self._scalar(sa.select(sa.func.count()).where(_events.seq > int(watermark))))

    def count(self) -> int:
        return int(self._scalar(sa.select(sa.func.count()).select_from(feedback_events)))

    def oldest_received_since(self, watermark: int) -> float | None:
        oldest = self._scalar(sa.select(sa.func.min(_events.received_at)).where(_events.seq > int(watermark)))
        return None if oldest is None else float(oldest)

    def events_between(self, after: int, upto: int) -> pd.DataFrame:
        """Events with ``after < seq <= upto`` as a frame, in sequence order."""
        columns = ["seq", *EVENT_FIELDS[:4], "value", "event_ts"]
        rows = self._rows(
            sa.select(*(_events[name] for name in columns))
            .where(_events.seq > int(after), _events.seq <= int(upto))
            .order_by(_events.seq)
        )
        return pd.DataFrame(rows, columns=columns)

    def user_events_since(
        self, user_id: str, watermark: int, limit: int = 200
    ) -> list[tuple[str, str, float | None, float]]:
        """A user's newest events past ``watermark``: (item_id, event, value, event_ts), oldest first."""
        rows = self._rows(
            sa.select(_events.item_id, _events.event, _events.value, _events.event_ts)
            .where(_events.user_id == str(user_id), _events.seq > int(watermark))
            .order_by(_events.seq.desc())
            .limit(int(limit))
        )
        return list(reversed(rows))
