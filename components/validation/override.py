"""The operator's path for a snapshot that validation rejected: accept it on the record, with a reason.

``lmrecsys snapshots accept SNAPSHOT_ID --reason TEXT`` calls :func:`accept_snapshot` (through
``components.operations``, which also records the decision in MLflow). The snapshot's data is not
touched, so its content hash and id stay; its ``validation.json`` becomes a success that names the
override and the checks it overrode, and its manifest gains an ``operator_overrides`` entry. Both files
are rewritten atomically inside the quarantined folder before the folder moves back, so a crash leaves
either the quarantined snapshot or the accepted one, and running the command again finishes the job.
"""

from __future__ import annotations

import json
import os
import shutil
import time

from components.data import handles
from components.data.atomic import atomic_write_text
from components.data.snapshots import Snapshot
from components.errors import LmRecsysError
from components.settings import Settings

MIN_REASON_CHARS = 10
"""An override's reason must say something: at least this many characters."""


def check_reason(reason: str | None) -> str:
    """The stripped reason, or a clear error when it is missing or too short to mean anything."""
    text = (reason or "").strip()
    if len(text) < MIN_REASON_CHARS:
        raise LmRecsysError(f"--reason must explain the decision in at least {MIN_REASON_CHARS} characters")
    if any(ord(c) < 32 and c not in "\t\n" for c in text):
        raise LmRecsysError("--reason must not hold control characters")
    return text


def find_rejected(settings: Settings, snapshot_id: str) -> Snapshot:
    """The quarantined snapshot ``snapshot_id``, or an error that says where it is instead."""
    name = handles.snapshot_id(snapshot_id)
    live = Snapshot(settings.snapshots_dir / name)
    if (live.path / "manifest.json").exists() and live.accepted:
        raise LmRecsysError(f"snapshot {name} is already accepted")
    quarantined = settings.quarantine_dir / name
    if (quarantined / "manifest.json").exists():
        return Snapshot(quarantined)
    if (live.path / "manifest.json").exists():
        raise LmRecsysError(f"snapshot {name} is not quarantined: validate it first (`lmrecsys pipeline run`)")
    known = sorted(p.name for p in settings.quarantine_dir.glob("snap-*")) if settings.quarantine_dir.exists() else []
    raise LmRecsysError(f"no quarantined snapshot {name!r} (quarantined: {', '.join(known) or 'none'})")


def accept_snapshot(settings: Settings, snapshot_id: str, reason: str, actor: str) -> tuple[Snapshot, dict]:
    """Move a quarantined snapshot back among the accepted ones; returns it and the override record."""
    reason = check_reason(reason)
    snapshot = find_rejected(settings, snapshot_id)
    previous = snapshot.validation or {}
    record = {
        "action": "snapshots accept",
        "reason": reason,
        "actor": actor,
        "at": time.time(),
        "overrode": previous.get("failed", []),
    }
    validation = {**previous, "success": True, "override": record}
    manifest = snapshot.manifest
    manifest["operator_overrides"] = [*manifest.get("operator_overrides", []), record]
    atomic_write_text(snapshot.path / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True))
    atomic_write_text(snapshot.path / "validation.json", json.dumps(validation, indent=2, default=str))
    target = settings.snapshots_dir / snapshot.snapshot_id
    settings.snapshots_dir.mkdir(parents=True, exist_ok=True)
    if target.exists():  # an unvalidated copy of the same content, ingested again since: the override wins
        shutil.rmtree(target)
    os.replace(snapshot.path, target)
    return Snapshot(target), record
