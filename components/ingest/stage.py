"""The ingest stage: source data + feedback past the parent's watermark → a new snapshot."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from components.data.columns import (
    EVENT_COL,
    EVENT_ID_COL,
    INTERACTION_COLUMNS,
    ITEM_COL,
    SOURCE_COL,
    TIMESTAMP_COL,
    USER_COL,
    VALUE_COL,
)
from components.data.snapshots import Snapshot, as_id_type, newest_accepted, write_snapshot
from components.data.sources import SourceData, read_generic, read_movielens, resolve_movielens_dir
from components.errors import SourceError
from components.feedback.store import FeedbackStore
from components.settings import Settings, redact_url

log = logging.getLogger(__name__)


def read_source(settings: Settings) -> SourceData:
    """Read the configured source (MovieLens folder/zip/URL, or a generic catalogue)."""
    cfg = settings.ingest
    if cfg.source_format == "generic":
        if not cfg.items_path or not cfg.interactions_path:
            raise SourceError("generic format needs LMRECSYS_INGEST__ITEMS_PATH and LMRECSYS_INGEST__INTERACTIONS_PATH")
        return read_generic(Path(cfg.items_path), Path(cfg.interactions_path), text_columns=cfg.text_columns)
    if cfg.source_format != "movielens":
        raise SourceError(f"unknown source format {cfg.source_format!r}; use 'movielens' or 'generic'")
    folder, provenance = resolve_movielens_dir(
        settings.resolved_source(), settings.downloads_dir, cfg.download_sha256, cfg.download_timeout_s
    )
    data = read_movielens(folder, top_tags=settings.embed.top_tags, max_users=cfg.max_users)
    if provenance:
        data.source_uris["archive"] = provenance["archive"]
        data.source_hashes["archive"] = provenance["archive_sha256"]
    return data


def feedback_frame(events: pd.DataFrame, id_type: str) -> tuple[pd.DataFrame, int]:
    """Feedback store rows → canonical interactions; returns the frame and how many were unusable."""
    if events.empty:
        return pd.DataFrame(columns=INTERACTION_COLUMNS), 0
    users, bad_users = as_id_type(events["user_id"], id_type)
    items, bad_items = as_id_type(events["item_id"], id_type)
    frame = pd.DataFrame(
        {
            EVENT_ID_COL: events["event_id"].astype(str).values,
            USER_COL: users.values,
            ITEM_COL: items.values,
            TIMESTAMP_COL: events["event_ts"].astype("float64").round().astype("int64").values,
            EVENT_COL: events["event"].astype(str).values,
            VALUE_COL: pd.to_numeric(events["value"], errors="coerce").astype("float64").values,
            SOURCE_COL: "feedback",
        }
    )
    bad = bad_users | bad_items
    return frame[~bad], int(bad.sum())


def ingest(settings: Settings, *, parent: Snapshot | None = None, use_parent: bool = True) -> Snapshot:
    """Build (or reuse) the snapshot for the current source and feedback; returns its handle.

    The snapshot is the union of the source's interactions, the parent's, and the feedback
    events past the parent's watermark, deduplicated by event id (the source's version wins, so
    a corrected or corrupted source row is what validation sees).
    """
    if parent is None and use_parent:
        parent = newest_accepted(settings.snapshots_dir)
    source = read_source(settings)
    store = FeedbackStore(settings.feedback_url)
    try:
        watermark = store.watermark()
        parent_watermark = parent.manifest["feedback_watermark"] if parent else 0
        new_events = store.events_between(parent_watermark, watermark)
    finally:
        store.close()
    feedback, unusable = feedback_frame(new_events, source.id_type)
    if unusable:
        log.warning("%d feedback event(s) had ids that are not %s ids and were left out", unusable, source.id_type)

    frames_items = [source.items]
    frames_inter = [source.interactions, feedback]
    if parent is not None:
        if parent.manifest["id_type"] != source.id_type:
            raise SourceError(
                f"parent snapshot {parent.snapshot_id} has {parent.manifest['id_type']} ids but the source has "
                f"{source.id_type} ids; ingest without a parent (--no-parent) to start a new lineage"
            )
        parent_items = parent.items()  # items the source no longer lists stay known; the source wins on conflicts
        frames_items.append(parent_items[~parent_items[ITEM_COL].isin(source.items[ITEM_COL])])
        frames_inter.insert(1, parent.interactions())  # after the source: a re-read source row wins over its old copy
    items = pd.concat([f for f in frames_items if len(f)], ignore_index=True)
    interactions = pd.concat([f for f in frames_inter if len(f)], ignore_index=True)
    sources = {name: {"uri": uri, "sha256": source.source_hashes.get(name)} for name, uri in source.source_uris.items()}
    sources["feedback"] = {"uri": redact_url(settings.feedback_url), "after": parent_watermark, "upto": watermark}
    snapshot = write_snapshot(
        settings.snapshots_dir,
        items,
        interactions,
        id_type=source.id_type,
        feedback_watermark=watermark,
        parent=parent.snapshot_id if parent else None,
        sources=sources,
        extra={
            "source_rows": int(len(source.interactions)),
            "feedback_events_merged": int(len(feedback)),
            "feedback_events_unusable": unusable,
            "max_users": settings.ingest.max_users,
        },
    )
    log.info("snapshot %s: %s", snapshot.snapshot_id, snapshot.manifest["row_counts"])
    return snapshot
