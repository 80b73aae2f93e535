"""Impressions, attributions and online experiments: the feedback store's tables for them.

Every answer of ``/recommend``, ``/recommend_session`` and ``/search`` that serving logs is one row of
``impressions``: its ``recommendation_id``, the experiment and arm that produced it, the model version,
the unit it was served to (user id, session id, or none), the item ids in order, for an interleaved list
the team of each position, the served latency and whether it failed. Feedback that names a
``recommendation_id`` gets one row of ``feedback_attributions`` in the transaction that writes the event:
attributed when the impression exists, belongs to the same user and lists the item; else it is kept as
plain feedback and counted as unattributed, with the reason. ``experiments`` holds the experiment records;
an experiment ends with one row of ``experiment_decisions``, an insert its primary key allows once, so
two deciders cannot both end one.

``FeedbackStore`` (``components.feedback.store``) inherits :class:`ImpressionLog` and creates these
tables beside its own.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from components.errors import LmRecsysError

_REAL = sa.Double().with_variant(sqlite.REAL(), "sqlite")
impressions_metadata = sa.MetaData()

impressions = sa.Table(
    "impressions",
    impressions_metadata,
    sa.Column("recommendation_id", sa.Text(), primary_key=True),
    sa.Column("experiment_id", sa.Text()),
    sa.Column("arm", sa.Text(), nullable=False),  # champion, challenger or interleaved
    sa.Column("model_version", sa.Text(), nullable=False),  # "7", or "7+8" for an interleaved list
    sa.Column("user_id", sa.Text()),  # the unit served: a user id or a session id (None: anonymous)
    sa.Column("endpoint", sa.Text(), nullable=False),
    sa.Column("item_ids", sa.Text(), nullable=False),  # JSON list of item ids, in order
    sa.Column("teams", sa.Text()),  # JSON list, per position, of the arm that placed the item (interleave)
    sa.Column("latency_ms", _REAL, nullable=False),
    sa.Column("error", sa.Integer(), nullable=False),
    sa.Column("created_at", _REAL, nullable=False),
    sa.Index("impressions_experiment", "experiment_id", "created_at"),
    sa.Index("impressions_user", "user_id"),
)

feedback_attributions = sa.Table(
    "feedback_attributions",
    impressions_metadata,
    sa.Column("event_id", sa.Text(), primary_key=True),
    sa.Column("recommendation_id", sa.Text(), nullable=False),
    sa.Column("position", sa.Integer()),
    sa.Column("user_id", sa.Text(), nullable=False),
    sa.Column("item_id", sa.Text(), nullable=False),
    sa.Column("event", sa.Text(), nullable=False),
    sa.Column("experiment_id", sa.Text()),
    sa.Column("arm", sa.Text()),  # the arm credited (for interleaving: the team that placed the item)
    sa.Column("attributed", sa.Integer(), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("created_at", _REAL, nullable=False),
    sa.Index("feedback_attributions_experiment", "experiment_id", "attributed"),
    sa.Index("feedback_attributions_user", "user_id"),
)

experiments = sa.Table(
    "experiments",
    impressions_metadata,
    sa.Column("experiment_id", sa.Text(), primary_key=True),
    sa.Column("model_name", sa.Text(), nullable=False),
    sa.Column("champion_version", sa.Text(), nullable=False),
    sa.Column("challenger_version", sa.Text(), nullable=False),
    sa.Column("share", _REAL, nullable=False),
    sa.Column("mode", sa.Text(), nullable=False),
    sa.Column("metric", sa.Text(), nullable=False),
    sa.Column("max_days", _REAL, nullable=False),
    sa.Column("created_by", sa.Text(), nullable=False),
    sa.Column("created_at", _REAL, nullable=False),
)

experiment_decisions = sa.Table(
    "experiment_decisions",
    impressions_metadata,
    sa.Column("experiment_id", sa.Text(), primary_key=True),  # one decision per experiment, ever
    sa.Column("state", sa.Text(), nullable=False),  # promoted | stopped
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("decision", sa.Text(), nullable=False),  # JSON: the statistics the decision was taken on
    sa.Column("decided_at", _REAL, nullable=False),
)
"""An experiment runs until its row here exists. Ending one is an insert that the primary key lets happen
once, so two deciders cannot both end it, and the store role serving uses (SELECT and INSERT only, see
docker/postgres/roles.sql) can record a decision."""
EXPERIMENT_STATES = ("running", "promoted", "stopped")
IMPRESSION_FIELDS = tuple(c.name for c in impressions.columns)
_imp, _att, _exp, _dec = impressions.c, feedback_attributions.c, experiments.c, experiment_decisions.c


_SQLITE_INSERT = (
    f"INSERT INTO impressions ({', '.join(IMPRESSION_FIELDS)}) VALUES ({', '.join('?' * len(IMPRESSION_FIELDS))})"
)


def _sqlite_insert(driver, params: list[tuple], toggle_synchronous: bool = True) -> None:
    """Impression rows in one ``BEGIN IMMEDIATE`` transaction on the driver connection (in autocommit mode
    between transactions), committed with ``synchronous=NORMAL``; a pooled connection
    (``toggle_synchronous``) is set back to FULL afterwards."""
    if toggle_synchronous:
        driver.execute("PRAGMA synchronous=NORMAL")
    try:
        driver.execute("BEGIN IMMEDIATE")
        try:
            driver.executemany(_SQLITE_INSERT, params)
            driver.execute("COMMIT")
        except BaseException:
            if driver.in_transaction:  # SQLite may have rolled back by itself (a full disk)
                driver.execute("ROLLBACK")
            raise
    finally:
        if toggle_synchronous:
            driver.execute("PRAGMA synchronous=FULL")


def impression_params(rows: list[dict]) -> list[dict]:
    """The stored form of impression rows (``IMPRESSION_FIELDS`` in column order, ``item_ids``/``teams``
    as JSON, ``created_at`` now when not given)."""
    now = time.time()
    return [
        {
            **{name: row.get(name) for name in IMPRESSION_FIELDS},
            "item_ids": json.dumps([str(i) for i in row.get("item_ids") or []]),
            "teams": json.dumps(list(row["teams"])) if row.get("teams") else None,
            "error": int(bool(row.get("error"))),
            "created_at": float(row.get("created_at") or now),
        }
        for row in rows
    ]


class LoopImpressionConnection:
    """A SQLite connection of its own that writes impressions where it is called: the service calls it
    on its event loop, once per loop iteration for every answer finished in it, with no thread hand-off.

    It never waits: the busy timeout is 0, so a database another writer holds fails at once with
    ``sqlite3.OperationalError`` (the caller hands those rows to the writer thread instead), and it
    never checkpoints by itself (a checkpoint fsyncs); ``checkpoint_due`` says when the caller should run
    ``ImpressionLog.checkpoint`` off the loop. Commits use ``synchronous=NORMAL`` in WAL mode, as
    ``log_impressions`` does: a committed impression survives a crash of the service."""

    CHECKPOINT_EVERY = 500
    """Transactions between two checkpoints (each writes a few pages to the WAL)."""

    def __init__(self, url: str) -> None:
        path = url.removeprefix("sqlite:///")
        self.driver = sqlite3.connect(path, isolation_level=None, timeout=0, check_same_thread=False)
        for pragma in ("busy_timeout=0", "synchronous=NORMAL", "wal_autocheckpoint=0"):
            self.driver.execute(f"PRAGMA {pragma}")
        self.transactions = 0

    def write(self, rows: list[dict]) -> list[tuple[str, bool]]:
        params = impression_params(rows)
        _sqlite_insert(self.driver, [tuple(p.values()) for p in params], toggle_synchronous=False)
        self.transactions += 1
        return [(p["recommendation_id"], True) for p in params]

    @property
    def checkpoint_due(self) -> bool:
        return self.transactions > 0 and self.transactions % self.CHECKPOINT_EVERY == 0

    def close(self) -> None:
        self.driver.close()


class ExperimentConflict(LmRecsysError):
    """An experiment cannot start or change state (one is already running, or it has ended)."""


def _attribution(event: tuple, rec_id: str, position, impression, now: float) -> dict:
    """The attribution row of one newly written event (``event``: a normalised ``FeedbackEvent`` tuple)."""
    event_id, user_id, item_id, kind = event[:4]
    row = {"event_id": event_id, "recommendation_id": rec_id, "position": position, "user_id": user_id}
    row.update(item_id=item_id, event=kind, experiment_id=None, arm=None, attributed=0, created_at=now)
    if impression is None:
        return {**row, "reason": "unknown recommendation_id"}
    if impression.user_id is not None and impression.user_id != user_id:
        return {**row, "reason": "foreign recommendation_id: it was served to another user or session"}
    items = json.loads(impression.item_ids)
    if item_id not in items:
        return {**row, "reason": f"item {item_id} is not in that recommendation"}
    index = position if position is not None and position < len(items) and items[position] == item_id else None
    index = items.index(item_id) if index is None else index
    teams = json.loads(impression.teams) if impression.teams else None
    arm = teams[index] if teams else impression.arm
    return {**row, "position": index, "experiment_id": impression.experiment_id, "arm": arm, "attributed": 1} | {
        "reason": "attributed"
    }


class ImpressionLog:
    """The impression, attribution and experiment methods of ``FeedbackStore`` (its engine and transactions)."""

    is_postgres: bool

    # -- impressions and attributions
    def log_impressions(self, rows: list[dict]) -> list[tuple[str, bool]]:
        """Write impressions (``IMPRESSION_FIELDS`` per row, ``item_ids``/``teams`` as lists) in one
        transaction; returns (recommendation_id, True) per row.

        The commit does not wait for the disk: SQLite commits it with ``synchronous=NORMAL`` (WAL mode) and
        PostgreSQL with ``synchronous_commit = off``. A committed impression survives a crash of the service
        (the database holds it); only a crash of the machine or of the database server can lose the last
        moment's impressions, which the next fsync (any feedback commit) also makes durable. Feedback events
        keep the full fsync. This halves the cost of the log that every answer pays."""
        if not rows:
            return []
        params = impression_params(rows)
        with self._connection(write=True) as conn:
            if self.is_postgres:
                with conn.begin():
                    conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
                    conn.execute(impressions.insert(), params)
            else:  # every answer pays this: one driver transaction, no statement compiled per call
                _sqlite_insert(conn.connection.driver_connection, [tuple(p.values()) for p in params])
        return [(p["recommendation_id"], True) for p in params]

    def loop_impression_connection(self) -> LoopImpressionConnection | None:
        """A ``LoopImpressionConnection`` on this SQLite store; None on PostgreSQL, where every write is a
        network round trip that must stay off the event loop."""
        return None if self.is_postgres else LoopImpressionConnection(self.url)

    def checkpoint(self) -> None:
        """A passive WAL checkpoint on SQLite (what ``LoopImpressionConnection`` leaves to a thread)."""
        if not self.is_postgres:
            with self._connection() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    def _attribute(self, conn: sa.Connection, written: list[tuple[tuple, str, Any]]) -> None:
        """Inside ``append``'s transaction: one attribution row per newly written event naming a recommendation."""
        if not written:
            return
        wanted = sorted({rec_id for _, rec_id, _ in written})
        found = {
            row.recommendation_id: row
            for row in conn.execute(sa.select(impressions).where(_imp.recommendation_id.in_(wanted)))
        }
        now = time.time()
        rows = [_attribution(event, rec_id, position, found.get(rec_id), now) for event, rec_id, position in written]
        conn.execute(feedback_attributions.insert(), rows)

    def impression(self, recommendation_id: str) -> dict | None:
        rows = self._rows(sa.select(impressions).where(_imp.recommendation_id == str(recommendation_id)))
        return dict(zip(IMPRESSION_FIELDS, rows[0])) if rows else None

    def impression_frame(self, experiment_id: str) -> pd.DataFrame:
        """An experiment's impressions: recommendation_id, arm, latency_ms, error, created_at, teams."""
        columns = ["recommendation_id", "arm", "latency_ms", "error", "created_at", "teams"]
        statement = sa.select(*(_imp[c] for c in columns)).where(_imp.experiment_id == experiment_id)
        return pd.DataFrame(self._rows(statement.order_by(_imp.created_at)), columns=columns)

    def attribution_frame(self, experiment_id: str) -> pd.DataFrame:
        """An experiment's attributed events: recommendation_id, arm, event, created_at."""
        columns = ["recommendation_id", "arm", "event", "created_at"]
        where = sa.and_(_att.experiment_id == experiment_id, _att.attributed == 1)
        statement = sa.select(*(_att[c] for c in columns)).where(where).order_by(_att.created_at)
        return pd.DataFrame(self._rows(statement), columns=columns)

    def attribution_counts(self) -> dict:
        """``{"attributed": n, "unattributed": m, "reasons": {reason: count}}`` over all stored attributions."""
        rows = self._rows(
            sa.select(_att.attributed, _att.reason, sa.func.count()).group_by(_att.attributed, _att.reason)
        )
        counts = {"attributed": 0, "unattributed": 0, "reasons": {}}
        for attributed, reason, n in rows:
            counts["attributed" if attributed else "unattributed"] += int(n)
            if not attributed:
                counts["reasons"][reason] = int(n)
        return counts

    def user_impression_counts(self, user_id: str) -> dict[str, int]:
        """How many impression and attribution rows hold the user (the privacy audit lists them)."""
        user = str(user_id)
        return {
            "impressions": int(self._scalar(sa.select(sa.func.count()).where(_imp.user_id == user))),
            "feedback_attributions": int(self._scalar(sa.select(sa.func.count()).where(_att.user_id == user))),
        }

    def prune_impressions(self, before: float) -> dict[str, int]:
        """Delete the impressions outside any experiment created before ``before`` (epoch seconds), and
        their attributions, in one transaction; experiments' impressions stay with their evidence."""
        with self._transaction() as conn:
            stale = sa.select(_imp.recommendation_id).where(_imp.experiment_id.is_(None), _imp.created_at < before)
            attributions = conn.execute(
                feedback_attributions.delete().where(_att.experiment_id.is_(None), _att.recommendation_id.in_(stale))
            ).rowcount
            gone = conn.execute(
                impressions.delete().where(_imp.experiment_id.is_(None), _imp.created_at < before)
            ).rowcount
        return {"impressions": int(gone), "feedback_attributions": int(attributions)}

    def impression_user_ids(self) -> list[str]:
        """Every user (or session) id the impressions and attributions hold."""
        shown = sa.select(_imp.user_id).where(_imp.user_id.is_not(None))
        credited = sa.select(_att.user_id)
        return sorted({row[0] for row in self._rows(sa.union(shown, credited))})

    def forget_impressions(self, user_ids: list[str]) -> int:
        """Delete these users' impressions and attributions in one transaction; returns the rows deleted."""
        with self._transaction() as conn:
            return sum(self._forget_impressions(conn, user) for user in user_ids)

    @staticmethod
    def _forget_impressions(conn: sa.Connection, user_id: str) -> int:
        """Inside ``forget``'s transaction: delete the user's impressions and attributions."""
        gone = conn.execute(impressions.delete().where(_imp.user_id == str(user_id))).rowcount
        return gone + conn.execute(feedback_attributions.delete().where(_att.user_id == str(user_id))).rowcount

    # -- experiments
    def create_experiment(self, row: dict) -> dict:
        """Insert a running experiment; ``ExperimentConflict`` if one already runs on the same model."""
        record = {**row, "created_at": time.time()}
        running = sa.select(_exp.experiment_id).where(
            _exp.model_name == row["model_name"], ~sa.exists().where(_dec.experiment_id == _exp.experiment_id)
        )
        with self._transaction(lock=self.is_postgres) as conn:  # the advisory lock, or SQLite's BEGIN IMMEDIATE
            found = conn.execute(running).first()
            if found is not None:
                raise ExperimentConflict(
                    f"experiment {found[0]} is already running on model {row['model_name']!r}; "
                    "stop it first (lmrecsys experiments stop ID --reason ...)"
                )
            conn.execute(experiments.insert().values(**{c.name: record.get(c.name) for c in experiments.columns}))
        return {**record, "state": "running", "reason": "", "decided_at": None, "decision": {}}

    def finish_experiment(self, experiment_id: str, state: str, reason: str, decision: dict) -> bool:
        """End a running experiment as ``state`` (promoted or stopped); False when it had ended already."""
        if state not in EXPERIMENT_STATES[1:]:
            raise ExperimentConflict(f"unknown final state {state!r}; use promoted or stopped")
        row = {"experiment_id": experiment_id, "state": state, "reason": reason, "decided_at": time.time()}
        row["decision"] = json.dumps(decision, default=str)
        insert = (postgresql.insert if self.is_postgres else sqlite.insert)(experiment_decisions)
        statement = insert.on_conflict_do_nothing(index_elements=[_dec.experiment_id]).returning(_dec.experiment_id)
        with self._transaction() as conn:
            return bool(conn.execute(statement, row).scalars().all())

    def experiments(self, state: str | None = None, model_name: str | None = None) -> list[dict]:
        """Experiment records with their state (``running`` until decided), newest first."""
        columns = [*experiments.columns, _dec.state, _dec.reason, _dec.decided_at, _dec.decision]
        statement = (
            sa.select(*columns)
            .select_from(experiments.outerjoin(experiment_decisions, _dec.experiment_id == _exp.experiment_id))
            .order_by(_exp.created_at.desc(), _exp.experiment_id)
        )
        if model_name is not None:
            statement = statement.where(_exp.model_name == model_name)
        names = [c.name for c in experiments.columns] + ["state", "reason", "decided_at", "decision"]
        found = []
        for row in self._rows(statement):
            record = dict(zip(names, row))
            record.update(state=record["state"] or "running", reason=record["reason"] or "")
            record["decision"] = json.loads(record["decision"] or "{}")
            found.append(record)
        return [r for r in found if state is None or r["state"] == state]
