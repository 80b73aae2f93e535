"""The ingest stage: source data + feedback past the parent's watermark → a new snapshot."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from components.data.columns import EVENT_ID_COL, ITEM_COL, SOURCE_COL, USER_COL
from components.data.erasure import Forgetter, erasure_key
from components.data.snapshots import Snapshot, newest_accepted, write_snapshot
from components.data.sources import SourceData, read_generic, read_movielens, resolve_movielens_dir
from components.errors import SourceError
from components.feedback.store import FeedbackStore
from components.ingest.screening import describe, screen_feedback
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


def ingest(settings: Settings, *, parent: Snapshot | None = None, use_parent: bool = True) -> Snapshot:
    """Build (or reuse) the snapshot for the current source and feedback; returns its handle.

    The snapshot is the union of the source's interactions, the parent's, and the feedback
    events past the parent's watermark, deduplicated by event id (the source's version wins, so
    a corrected or corrupted source row is what validation sees). New feedback is screened row by
    row first (``components.ingest.screening``): an event that breaks a rule is held in the store's
    feedback quarantine with its reason and the rest proceed, so no request can sink a snapshot.
    Events an operator quarantined are left out too, from the parent's rows as well.
    """
    if parent is None and use_parent:
        parent = newest_accepted(settings.snapshots_dir)
    source = read_source(settings)
    if parent is not None and parent.manifest["id_type"] != source.id_type:
        raise SourceError(
            f"parent snapshot {parent.snapshot_id} has {parent.manifest['id_type']} ids but the source has "
            f"{source.id_type} ids; ingest without a parent (--no-parent) to start a new lineage"
        )
    store = FeedbackStore(settings.feedback_url)
    try:
        watermark = store.watermark()
        parent_watermark = parent.manifest["feedback_watermark"] if parent else 0
        new_events = store.events_between(parent_watermark, watermark)
        held = store.quarantined_ids()
        tombstones = store.tombstoned_keys()
        forgotten = Forgetter(erasure_key(settings) if tombstones else None, tombstones)
        gone = forgotten.mask(source.interactions[USER_COL])
        erased = set(source.interactions.loc[gone, EVENT_ID_COL])
        source.interactions = source.interactions[~gone]
        new_events = new_events[~forgotten.mask(new_events["user_id"])]
        items, existing, dropped_from_parent = _base_frames(source, parent, held, forgotten)
        erased |= dropped_from_parent.pop("erased")
        screened = screen_feedback(
            new_events[~new_events["event_id"].astype(str).isin(held)],
            source.id_type,
            set(items[ITEM_COL].dropna()),
            existing,
            settings.validation,
        )
        audit = {
            "rules": screened.counts(),
            "operator_held": int(new_events["event_id"].astype(str).isin(held).sum()),
            "dropped_from_parent": dropped_from_parent["held"],
        }
        erasure = {"rows_removed": len(erased), "user_keys": sorted(forgotten.matched)}
        snapshot = _write(
            settings, source, parent, items, existing, screened, (watermark, parent_watermark), audit, erasure
        )
        # recorded after the snapshot exists: a failure here leaves a snapshot that a rerun reuses and records
        store.quarantine(
            dict(row, origin="ingest", actor="ingest", snapshot_id=snapshot.snapshot_id)
            for row in screened.rejected.to_dict("records")
        )
    finally:
        store.close()
    if len(screened.rejected):
        log.warning(
            "snapshot %s: %d feedback event(s) quarantined (%s); see `lmrecsys feedback quarantined`",
            snapshot.snapshot_id,
            len(screened.rejected),
            describe(audit["rules"]),
        )
    log.info("snapshot %s: %s", snapshot.snapshot_id, snapshot.manifest["row_counts"])
    return snapshot


def _base_frames(
    source: SourceData, parent: Snapshot | None, held: set[str], forgotten: Forgetter
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The catalogue and the interactions before new feedback: the source's, then the parent's.

    Items the source no longer lists stay known; the source wins on conflicts. Parent rows from
    feedback that is now quarantined are dropped and counted; rows of forgotten users are dropped and
    their event ids returned.
    """
    frames_items, frames_inter, dropped = [source.items], [source.interactions], {"held": 0, "erased": set()}
    if parent is not None:
        parent_items = parent.items()
        frames_items.append(parent_items[~parent_items[ITEM_COL].isin(source.items[ITEM_COL])])
        previous = parent.interactions()
        gone = (previous[SOURCE_COL] == "feedback") & previous[EVENT_ID_COL].astype(str).isin(held)
        erased = forgotten.mask(previous[USER_COL]) & ~gone.to_numpy()
        dropped = {"held": int(gone.sum()), "erased": set(previous.loc[erased, EVENT_ID_COL])}
        frames_inter.append(previous[~(gone.to_numpy() | erased)])  # after the source: a re-read row wins
    items = pd.concat([f for f in frames_items if len(f)], ignore_index=True)
    existing = pd.concat([f for f in frames_inter if len(f)], ignore_index=True)
    return items, existing.drop_duplicates(EVENT_ID_COL, keep="first"), dropped


def _write(
    settings, source, parent, items, existing, screened, watermarks: tuple[int, int], audit: dict, erasure: dict
) -> Snapshot:
    watermark, parent_watermark = watermarks
    sources = {name: {"uri": uri, "sha256": source.source_hashes.get(name)} for name, uri in source.source_uris.items()}
    sources["feedback"] = {"uri": redact_url(settings.feedback_url), "after": parent_watermark, "upto": watermark}
    interactions = pd.concat([f for f in (existing, screened.accepted) if len(f)], ignore_index=True)
    return write_snapshot(
        settings.snapshots_dir,
        items,
        interactions,
        id_type=source.id_type,
        feedback_watermark=watermark,
        parent=parent.snapshot_id if parent else None,
        sources=sources,
        extra={
            "source_rows": int(len(source.interactions)),
            "feedback_events_merged": int(len(screened.accepted)),
            "feedback_quarantine": audit,
            "erasure": erasure,
            "max_users": settings.ingest.max_users,
        },
    )
