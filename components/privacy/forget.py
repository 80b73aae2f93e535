"""``lmrecsys users forget``: delete a user's events and stand a tombstone, before the call returns.

The tombstone holds a keyed hash of the id (``components.data.erasure``), the reason and the time,
never the id. Its state moves ``pending`` (recorded; the feedback store no longer holds the user)
→ ``serving-clean`` (a model trained without the user is champion) → ``done`` (older artifacts purged).
"""

from __future__ import annotations

import json
import re

import pandas as pd

from components.data.erasure import erasure_key, user_key
from components.data.snapshots import list_snapshots
from components.errors import LmRecsysError
from components.feedback.store import FeedbackStore
from components.settings import Settings

MAX_USER_ID_CHARS = 128


def check_user_id(user_id) -> str:
    text = str(user_id).strip()
    if not text or len(text) > MAX_USER_ID_CHARS or re.search(r"[\x00-\x1f\x7f]", text):
        raise LmRecsysError(
            f"user id {text[:40]!r} is not valid: 1 to {MAX_USER_ID_CHARS} characters, no control characters"
        )
    return text


def check_reason(reason: str | None) -> str:
    text = (reason or "").strip()
    if len(text) < 3 or re.search(r"[\x00-\x08\x0b-\x1f\x7f]", text):
        raise LmRecsysError("--reason is required (at least 3 characters, no control characters)")
    return text[:500]


def snapshots_holding(settings: Settings, user_id: str) -> list:
    """Every snapshot (accepted, unvalidated or quarantined) whose interactions hold the user."""
    found = []
    for folder in (settings.snapshots_dir, settings.quarantine_dir):
        for snapshot in list_snapshots(folder):
            users = pd.read_parquet(snapshot.path / "interactions.parquet", columns=["user_id"])["user_id"]
            if (users.astype(str) == user_id).any():
                found.append(snapshot)
    return found


def forget_user(settings: Settings, user_id, reason: str) -> dict:
    """Forget ``user_id`` now (idempotent); an unknown user is a no-op that says so."""
    user_id, reason = check_user_id(user_id), check_reason(reason)
    ukey = user_key(erasure_key(settings), user_id)
    store = FeedbackStore(settings.feedback_url)
    try:
        requests = store.erasures()
        existing = requests[requests["user_key"] == ukey]
        in_store = store.user_event_count(user_id)
        if existing.empty and not in_store and not snapshots_holding(settings, user_id):
            return {
                "user_id": user_id,
                "known": False,
                "state": None,
                "events_deleted": 0,
                "message": f"no data is held for user {user_id!r}: nothing to forget, no request recorded",
            }
        result = store.forget(user_id, ukey, reason)
        state = store.erasures().set_index("user_key").loc[ukey, "state"]
    finally:
        store.close()
    verb = "recorded" if result["new_request"] else "was already recorded"
    return {
        "user_id": user_id,
        "known": True,
        "state": state,
        **result,
        "message": f"erasure of user {user_id!r} {verb}; {result['events_deleted']} stored event(s) deleted now. "
        "The next pipeline run (started by the feedback trigger) trains without the user, then older artifacts "
        "are purged; `lmrecsys users forgotten` shows the state",
    }


def erasure_requests(settings: Settings) -> list[dict]:
    """Every erasure request (keyed hash, reason, times, state, what each step did), oldest first."""
    store = FeedbackStore(settings.feedback_url)
    try:
        frame = store.erasures()
    finally:
        store.close()
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    for row in rows:
        row["detail"] = json.loads(row["detail"] or "{}")
    return rows
