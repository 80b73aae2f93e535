"""Row-level screening of feedback at ingest: an event that breaks a rule is quarantined, the rest proceed.

Feedback comes from anyone who can reach the public endpoints, so no single event (and no flood of
them) may sink a snapshot. Each new feedback event is checked against the rules below, in order; the
first rule it breaks is its quarantine reason. Source rows are not screened here: the Great
Expectations suites judge the source as a whole, and a bad source must stop the run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from components.data.columns import EVENT_COL, EVENT_ID_COL, ITEM_COL, TIMESTAMP_COL, USER_COL, VALUE_COL
from components.data.events import EVENT_TYPES
from components.data.snapshots import as_id_type
from components.settings import ValidationSettings

MAX_ID_CHARS = 128
"""Longest user, item or event id accepted from feedback (the service's request schema has the same limit)."""
FUTURE_SLACK_S = 86_400
"""Feedback timestamps may run this far ahead of the ingesting clock (clock skew between machines)."""
CONTROL = r"[\x00-\x1f\x7f]"

REASONS = {
    "control_characters": "an id holds a NUL or another control character",
    "bad_id": "an id is empty, longer than 128 characters, or not of the snapshot's id type",
    "unknown_event": "the event type is not one the loop knows",
    "value_off_scale": "a rating without a value or outside [value_min, value_max], or a non-finite value",
    "timestamp_out_of_range": "before validation.earliest_timestamp or more than a day in the future",
    "unknown_item": "the item is in neither the source nor the parent snapshot's catalogue",
    "duplicate": "repeats (user, item, event, timestamp) of an earlier row, or goes past "
    "validation.feedback_max_repeats events of one (user, item, event) in one snapshot",
}
"""Every quarantine reason, with what it means (docs/operations.md lists the same)."""


@dataclass
class Screened:
    """The feedback that proceeds (canonical interaction columns) and the events held back, with reasons."""

    accepted: pd.DataFrame
    rejected: pd.DataFrame
    """Columns ``event_id, user_id, item_id, event, reason``, as the store holds them."""

    def counts(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.rejected["reason"].value_counts().sort_index().items()}


def _text_rules(events: pd.DataFrame, id_type: str) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Reasons from the ids and the event type alone, plus the ids converted to the snapshot's type."""
    reason = pd.Series(None, index=events.index, dtype=object)
    ids = {name: events[name].astype(str) for name in ("event_id", "user_id", "item_id")}
    control = pd.Series(False, index=events.index)
    bad = pd.Series(False, index=events.index)
    for values in ids.values():
        control |= values.str.contains(CONTROL, regex=True)
        bad |= (values.str.strip() == "") | (values.str.len() > MAX_ID_CHARS)
    users, bad_users = as_id_type(ids["user_id"], id_type)
    items, bad_items = as_id_type(ids["item_id"], id_type)
    bad |= pd.Series(bad_users | bad_items, index=events.index)
    reason[control] = "control_characters"
    reason[reason.isna() & bad] = "bad_id"
    reason[reason.isna() & ~events["event"].isin(EVENT_TYPES)] = "unknown_event"
    return reason, users, items


def screen_feedback(
    events: pd.DataFrame,
    id_type: str,
    known_items: set,
    existing: pd.DataFrame,
    cfg: ValidationSettings,
    now: float | None = None,
) -> Screened:
    """Screen feedback store rows (``seq, event_id, user_id, item_id, event, value, event_ts``).

    ``known_items`` is the catalogue the snapshot will hold; ``existing`` the interactions it already
    holds (source and parent), against which duplicates are judged.
    """
    from components.data.columns import INTERACTION_COLUMNS, SOURCE_COL

    empty_rejected = pd.DataFrame(columns=["event_id", "user_id", "item_id", "event", "reason"])
    if events.empty:
        return Screened(pd.DataFrame(columns=INTERACTION_COLUMNS), empty_rejected)
    now = time.time() if now is None else now
    events = events.reset_index(drop=True)
    reason, users, items = _text_rules(events, id_type)
    values = pd.to_numeric(events["value"], errors="coerce").astype("float64")
    stamps = pd.to_numeric(events["event_ts"], errors="coerce").astype("float64")
    rating = events["event"] == "rating"
    off_scale = (rating & (values.isna() | (values < cfg.value_min) | (values > cfg.value_max))) | np.isinf(values)
    reason[reason.isna() & off_scale] = "value_off_scale"
    late = stamps.isna() | (stamps < cfg.earliest_timestamp) | (stamps > now + FUTURE_SLACK_S)
    reason[reason.isna() & late] = "timestamp_out_of_range"
    reason[reason.isna() & ~items.isin(known_items)] = "unknown_item"
    frame = pd.DataFrame(
        {
            EVENT_ID_COL: events["event_id"].astype(str),
            USER_COL: users,
            ITEM_COL: items,
            TIMESTAMP_COL: stamps.fillna(0).clip(-(2**62), 2**62).round().astype("int64"),
            EVENT_COL: events["event"].astype(str),
            VALUE_COL: values,
            SOURCE_COL: "feedback",
        }
    )
    reason[reason.isna() & _duplicates(frame, reason.isna(), existing, cfg.feedback_max_repeats)] = "duplicate"
    keep = reason.isna()
    rejected = events.loc[~keep, ["event_id", "user_id", "item_id", "event"]].astype(str).assign(reason=reason[~keep])
    return Screened(frame[keep].reset_index(drop=True), rejected.reset_index(drop=True))


def _duplicates(frame: pd.DataFrame, candidate: pd.Series, existing: pd.DataFrame, max_repeats: int) -> pd.Series:
    """Rows (among ``candidate``) that repeat an existing or earlier row, or exceed ``max_repeats`` per pair."""
    key = [USER_COL, ITEM_COL, EVENT_COL, TIMESTAMP_COL]
    out = pd.Series(False, index=frame.index)
    rows = frame[candidate]
    if rows.empty:
        return out
    seen = rows.duplicated(key, keep="first")
    if len(existing):
        old = existing[key].drop_duplicates().assign(_old=True)
        if old[USER_COL].dtype == rows[USER_COL].dtype and old[ITEM_COL].dtype == rows[ITEM_COL].dtype:
            merged = rows[key].merge(old, on=key, how="left")
            seen |= merged["_old"].fillna(False).astype(bool).to_numpy()
    repeats = rows.groupby([USER_COL, ITEM_COL, EVENT_COL]).cumcount() >= max(1, int(max_repeats))
    out[rows.index] = (seen | repeats).to_numpy()
    return out


def describe(counts: dict[str, int]) -> str:
    """``"3 unknown_item, 1 duplicate"`` (or ``"none"``)."""
    parts = [f"{n} {reason}" for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n]
    return ", ".join(parts) if parts else "none"
