"""How erasure requests meet a pipeline run: cold training, the gate's override, and the state moves.

- A run that starts training while a request is ``pending`` trains every candidate cold
  (``components.training`` checks the store), because the champion's weights saw the user.
- At promotion (:func:`erasure_verdict`), the requests whose user the run's snapshot no longer holds
  are *applied*: the challenger is promoted with the reason ``erasure`` even if slightly worse. A
  request whose user the snapshot still holds arrived during the run; so did any request when the
  challenger was warm-started. Either blocks the promotion: the next run applies it.
- After a promotion that applied requests, they move to ``serving-clean``; the purge moves them on.
"""

from __future__ import annotations

import json
import time

import pandas as pd

from components.data.erasure import erasure_key, user_key
from components.data.snapshots import Snapshot
from components.feedback.store import FeedbackStore
from components.settings import Settings


def _snapshot_keys(settings: Settings, snapshot: Snapshot) -> set[str]:
    key = erasure_key(settings)
    users = pd.read_parquet(snapshot.path / "interactions.parquet", columns=["user_id"])["user_id"].unique()
    return {user_key(key, u) for u in users}


def erasure_verdict(settings: Settings, snapshot: Snapshot, warm_started: bool) -> dict:
    """``{"applied": [keys], "late": [keys], "block": reason or None, "erasure": gate text or None}``."""
    store = FeedbackStore(settings.feedback_url)
    try:
        pending = store.erasures("pending")
    finally:
        store.close()
    if pending.empty:
        return {"applied": [], "late": [], "block": None, "erasure": None}
    held = _snapshot_keys(settings, snapshot)
    late = [k for k in pending["user_key"] if k in held]
    applied = [k for k in pending["user_key"] if k not in held]
    block = None
    if late:
        block = f"{len(late)} erasure request(s) arrived after snapshot {snapshot.snapshot_id} was built"
    elif warm_started:
        block = "an erasure request arrived after training began from the champion's weights"
    erasure = None
    if applied and block is None:
        erasure = (
            f"{len(applied)} erasure request(s) applied: snapshot {snapshot.snapshot_id} holds none of those users"
        )
        erasure += " and every candidate trained cold"
    return {"applied": applied, "late": late, "block": block, "erasure": erasure}


def mark_serving_clean(settings: Settings, keys: list[str], version: str) -> int:
    detail = json.dumps({"serving_clean": {"version": str(version), "at": time.time()}})
    store = FeedbackStore(settings.feedback_url)
    try:
        return store.set_erasure_state(keys, "serving-clean", detail)
    finally:
        store.close()
