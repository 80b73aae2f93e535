"""When does new feedback deserve a pipeline run? The rule, kept apart from any scheduler.

A run is due when an erasure request (``lmrecsys users forget``) waits for its run, when at least
``trigger_min_events`` events lie past a *base* watermark, or when at least one does and the oldest
of them is older than ``trigger_max_age_s``. The base is the
higher of the newest accepted snapshot's watermark and the watermark of the last trigger. The
second term is what makes a burst of feedback during a run yield exactly one follow-up run: once
a trigger covers events up to W, only N further events past W can fire another.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from components.data.snapshots import newest_accepted
from components.feedback.store import FeedbackStore
from components.settings import Settings


@dataclass
class Backlog:
    snapshot_id: str | None
    snapshot_watermark: int
    last_trigger_watermark: int
    current_watermark: int
    new_events: int
    """Events past the base watermark (the higher of the snapshot's and the last trigger's)."""
    untrained_events: int
    """Events past the newest accepted snapshot, whether or not a run was already requested for them."""
    oldest_age_s: float | None
    due: bool
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def feedback_backlog(settings: Settings, now: float | None = None) -> Backlog:
    """How much feedback is waiting, and whether a run is due."""
    now = time.time() if now is None else now
    snapshot = newest_accepted(settings.snapshots_dir)
    snapshot_watermark = snapshot.manifest["feedback_watermark"] if snapshot else 0
    store = FeedbackStore(settings.feedback_url)
    try:
        last_trigger = store.last_trigger_watermark()
        base = max(snapshot_watermark, last_trigger)
        current = store.watermark()
        new = store.count_since(base)
        untrained = store.count_since(snapshot_watermark)
        oldest = store.oldest_received_since(base)
        erasures = store.untriggered_erasures()
    finally:
        store.close()
    age = None if oldest is None else now - oldest
    cfg = settings.feedback
    if erasures:
        due, reason = True, f"{erasures} erasure request(s) waiting for a run (and {new} new feedback events)"
    elif new >= cfg.trigger_min_events:
        due, reason = True, f"{new} new feedback events (threshold {cfg.trigger_min_events})"
    elif new > 0 and age is not None and age >= cfg.trigger_max_age_s:
        due, reason = True, f"{new} feedback events, the oldest {age:.0f}s old (max age {cfg.trigger_max_age_s:.0f}s)"
    else:
        due, reason = False, f"{new} new feedback events, below the threshold of {cfg.trigger_min_events}"
    return Backlog(
        snapshot.snapshot_id if snapshot else None,
        snapshot_watermark,
        last_trigger,
        current,
        new,
        untrained,
        age,
        due,
        reason,
    )


def claim_trigger(settings: Settings) -> Backlog:
    """Check the backlog and, if a run is due, record the trigger so the same events fire only once."""
    backlog = feedback_backlog(settings)
    if backlog.due:
        store = FeedbackStore(settings.feedback_url)
        try:
            store.record_trigger(backlog.current_watermark, backlog.reason)
            store.claim_erasure_trigger()
        finally:
            store.close()
    return backlog
