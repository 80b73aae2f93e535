"""Immutable, content-addressed snapshots: the unit every later stage consumes.

A snapshot is a folder ``snapshots/<snapshot_id>/`` holding ``items.parquet``,
``interactions.parquet`` and ``manifest.json``. It is written under a temporary name and renamed
into place, so a crash never leaves a visible half-written snapshot. Its id derives from a hash
of its content, so ingesting the same input twice yields the same id. Validation later adds
``validation.json``; a rejected snapshot is moved to ``quarantine/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.data import handles
from components.data.atomic import atomic_dir, fsync_file
from components.data.columns import (
    EVENT_ID_COL,
    INTERACTION_COLUMNS,
    ITEM_COL,
    ITEM_COLUMNS,
    TIMESTAMP_COL,
    USER_COL,
)
from components.errors import LmRecsysError, SnapshotRejected


@dataclass(frozen=True)
class Snapshot:
    """A handle on a snapshot folder; cheap to pass between stages (only the path crosses)."""

    path: Path

    @property
    def snapshot_id(self) -> str:
        return self.path.name

    @property
    def manifest(self) -> dict:
        return json.loads((self.path / "manifest.json").read_text())

    @property
    def validation(self) -> dict | None:
        path = self.path / "validation.json"
        return json.loads(path.read_text()) if path.exists() else None

    @property
    def accepted(self) -> bool:
        result = self.validation
        return bool(result and result.get("success"))

    def items(self) -> pd.DataFrame:
        return pd.read_parquet(self.path / "items.parquet")

    def interactions(self) -> pd.DataFrame:
        return pd.read_parquet(self.path / "interactions.parquet")

    def require_accepted(self) -> Snapshot:
        """Downstream stages call this: only validated snapshots may be trained on."""
        if not (self.path / "manifest.json").exists():
            raise SnapshotRejected(f"snapshot {self.snapshot_id} does not exist at {self.path}")
        if not self.accepted:
            state = "was rejected by validation" if self.validation else "has not been validated"
            raise SnapshotRejected(f"snapshot {self.snapshot_id} {state}; refusing to use it")
        return self


def _frame_digest(frame: pd.DataFrame) -> bytes:
    row_hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return hashlib.sha256(row_hashes.tobytes() + "|".join(map(str, frame.columns)).encode()).digest()


def canonicalise(items: pd.DataFrame, interactions: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fixed column order, stable sort and unique event ids, so equal content hashes equally.

    Duplicate item ids are kept on purpose: validation must see and reject them.
    """
    items = items[ITEM_COLUMNS].sort_values(ITEM_COL, kind="stable").reset_index(drop=True)
    interactions = interactions[INTERACTION_COLUMNS].drop_duplicates(EVENT_ID_COL, keep="first")
    interactions = interactions.sort_values([USER_COL, TIMESTAMP_COL, ITEM_COL, EVENT_ID_COL], kind="stable")
    return items, interactions.reset_index(drop=True)


def content_hash(
    items: pd.DataFrame, interactions: pd.DataFrame, feedback_watermark: int, source_hashes: list[str] = ()
) -> str:
    """Hash of the data, the watermark and the source files' hashes: same input, same id."""
    digest = hashlib.sha256()
    for source_digest in sorted(h for h in source_hashes if h):
        digest.update(source_digest.encode())
    digest.update(_frame_digest(items))
    digest.update(_frame_digest(interactions))
    digest.update(str(feedback_watermark).encode())
    return digest.hexdigest()


def write_snapshot(
    snapshots_dir: Path,
    items: pd.DataFrame,
    interactions: pd.DataFrame,
    *,
    id_type: str,
    feedback_watermark: int,
    parent: str | None,
    sources: dict,
    extra: dict | None = None,
) -> Snapshot:
    """Write a snapshot atomically and return its handle; an identical snapshot is reused."""
    items, interactions = canonicalise(items, interactions)
    digest = content_hash(
        items, interactions, feedback_watermark, [v.get("sha256") for v in sources.values() if isinstance(v, dict)]
    )
    snapshot_id = f"snap-{digest[:16]}"
    target = snapshots_dir / snapshot_id
    if (target / "manifest.json").exists():
        return Snapshot(target)
    timestamps = interactions[TIMESTAMP_COL]
    manifest = {
        "snapshot_id": snapshot_id,
        "content_hash": digest,
        "created_at": time.time(),
        "parent": parent,
        "feedback_watermark": int(feedback_watermark),
        "id_type": id_type,
        "row_counts": {
            "items": int(len(items)),
            "interactions": int(len(interactions)),
            "users": int(interactions[USER_COL].nunique()),
        },
        "time_range": {
            "min": int(timestamps.min()) if len(timestamps) else None,
            "max": int(timestamps.max()) if len(timestamps) else None,
        },
        "sources": sources,
        **(extra or {}),
    }
    with atomic_dir(target, replace=False) as tmp:  # a concurrent writer of the same id may win
        items.to_parquet(tmp / "items.parquet", index=False)
        interactions.to_parquet(tmp / "interactions.parquet", index=False)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        for name in ("items.parquet", "interactions.parquet", "manifest.json"):
            fsync_file(tmp / name)
    if not (target / "manifest.json").exists():
        raise OSError(f"snapshot folder {target} exists without a manifest")
    return Snapshot(target)


def list_snapshots(snapshots_dir: Path) -> list[Snapshot]:
    """Every complete snapshot, oldest first (temporary folders are invisible)."""
    if not snapshots_dir.exists():
        return []
    found = [
        Snapshot(p)
        for p in snapshots_dir.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / "manifest.json").exists()
    ]
    return sorted(found, key=lambda s: (s.manifest["created_at"], s.snapshot_id))


def newest_accepted(snapshots_dir: Path) -> Snapshot | None:
    accepted = [s for s in list_snapshots(snapshots_dir) if s.accepted]
    return accepted[-1] if accepted else None


def open_snapshot(snapshots_dir: Path, snapshot_id: str) -> Snapshot:
    path = snapshots_dir / handles.snapshot_id(snapshot_id)
    if not (path / "manifest.json").exists():
        known = ", ".join(s.snapshot_id for s in list_snapshots(snapshots_dir)) or "none"
        raise LmRecsysError(f"no snapshot {snapshot_id!r} in {snapshots_dir} (known: {known})")
    return Snapshot(path)


def quarantine(snapshot: Snapshot, quarantine_dir: Path) -> Path:
    """Move a rejected snapshot out of the snapshots folder so nothing can train on it."""
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    target = quarantine_dir / snapshot.snapshot_id
    if target.exists():
        shutil.rmtree(target)
    os.replace(snapshot.path, target)
    return target


def as_id_type(values: pd.Series, id_type: str) -> tuple[pd.Series, np.ndarray]:
    """Convert ids to the snapshot's id type; return the converted values and a mask of failures."""
    if id_type == "int":
        numeric = pd.to_numeric(values, errors="coerce")
        bad = (numeric.isna() | (numeric != np.floor(numeric))).to_numpy()
        return numeric.fillna(-1).astype("int64"), bad
    return values.astype(str), np.zeros(len(values), dtype=bool)
