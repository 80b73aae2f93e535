"""The item ids of the newest accepted snapshot, for checking feedback while no champion is loaded.

Feedback names items; with a champion loaded they are checked against the served catalogue. Before one
loads, ``AcceptedItems`` checks them against the newest accepted snapshot's items instead, so an unknown
item is refused from the first request on. ``refresh()`` (every few seconds, from a background thread)
compares the newest accepted snapshot's id with the one loaded and reads the items only when it changed.
With neither a champion nor an accepted snapshot, feedback is accepted unchecked and a log line says so
once.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("lmrecsys.serving")

CATALOGUE_REFRESH_S = 5.0
"""How often the newest accepted snapshot is looked for (one folder listing and a few small JSON reads)."""


class SnapshotIds:
    """The item ids of one snapshot, with the engine's id checks (``item_index``, ``normalise_id``,
    ``id_type``), so ``check_feedback`` treats it as it treats a served engine."""

    def __init__(self, snapshot_id: str, id_type: str, item_ids) -> None:
        self.snapshot_id, self.id_type = snapshot_id, id_type
        self._ids = frozenset(self.normalise_id(i) for i in item_ids)

    def __len__(self) -> int:
        return len(self._ids)

    def normalise_id(self, value):
        return int(value) if self.id_type == "int" else str(value)

    def item_index(self, item_id) -> bool | None:
        """True for a known item, None for an unknown one or one not of the catalogue's id type."""
        try:
            return True if self.normalise_id(item_id) in self._ids else None
        except (TypeError, ValueError):
            return None


class AcceptedItems:
    """The newest accepted snapshot's item ids (``current``: None while there is none)."""

    def __init__(self, snapshots_dir) -> None:
        self.snapshots_dir = snapshots_dir
        self.current: SnapshotIds | None = None
        self._lock = threading.Lock()
        self._said_unchecked = False

    def refresh(self) -> None:
        """Load the newest accepted snapshot's items if it is not the one loaded."""
        from components.data.columns import ITEM_COL
        from components.data.snapshots import newest_accepted

        with self._lock:
            snapshot = newest_accepted(self.snapshots_dir)
            if snapshot is None or (self.current is not None and self.current.snapshot_id == snapshot.snapshot_id):
                return
            id_type = snapshot.manifest.get("id_type", "int")
            ids = SnapshotIds(snapshot.snapshot_id, id_type, snapshot.items()[ITEM_COL].tolist())
            self.current = ids  # one assignment: a request sees the old set or the new one
            log.info("feedback item ids are checked against snapshot %s (%d items)", ids.snapshot_id, len(ids))

    def checker(self):
        """The ids to check feedback against, or None (accepted unchecked; said once in the log)."""
        current = self.current
        if current is None and not self._said_unchecked:
            self._said_unchecked = True
            log.warning(
                "no champion is loaded and no accepted snapshot exists in %s: feedback item ids are accepted "
                "unchecked until one exists",
                self.snapshots_dir,
            )
        return current
