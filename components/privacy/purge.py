"""The purge: once a model trained without the forgotten users is champion, older artifacts lose them too.

For the requests in state ``serving-clean`` (and for retention, see ``retention.py``):

1. **Model versions.** Every version whose bundle holds a forgotten user (its history index
   ``histories/``, or ``histories.parquet`` in bundles written before it, is the data it trained on)
   is *retired*: tagged ``retired=erasure`` with the time, its logged-model artifacts (bundle,
   weights, input example) deleted from the artifact store, and any alias but ``champion`` removed.
   Rollback skips retired versions; ``lmrecsys models list`` shows them.
2. **Run folders** under ``runs/`` whose snapshot held a forgotten user, or whose files do, are deleted.
3. **Snapshots.** A quarantined snapshot that holds one is deleted. An accepted (or unvalidated) one is
   rewritten without the users' rows: it gets a new id (its content changed), keeps its place in time,
   and its manifest records ``rewritten`` (from which id, why, when); the old folder is deleted.
4. The requests move to ``done``, with what each step did in their ``detail``.

MLflow goes first: if it cannot be reached, nothing on disk changes and the requests stay
``serving-clean``, so the next purge (after the next promotion, or ``lmrecsys users purge``) retries.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import pandas as pd

from components.data.atomic import atomic_write_text
from components.data.erasure import Forgetter, erasure_key
from components.data.snapshots import Snapshot, list_snapshots, write_snapshot
from components.errors import LmRecsysError
from components.feedback.store import FeedbackStore
from components.settings import Settings

log = logging.getLogger(__name__)
RETIRED_TAG = "retired"


def _holds(forgetter: Forgetter, path: Path) -> bool:
    try:
        users = pd.read_parquet(path, columns=["user_id"])["user_id"]
    except (OSError, ValueError, KeyError):
        return False
    return bool(forgetter.mask(users).any())


def _index_holds(forgetter: Forgetter, folder: Path) -> bool:
    """Whether a bundle's history index (``components.engine.history_index``) holds a forgotten user."""
    from components.engine.history_index import HistoryIndex

    try:
        users = HistoryIndex.open(folder).user_ids()
    except ValueError:  # an unreadable index is reported by the audit, not guessed at here
        return False
    return bool(forgetter.mask(pd.Series(users.tolist(), dtype=object)).any())


def _folder_holds(forgetter: Forgetter, root: Path, pattern: str = "histories.parquet") -> bool:
    """Whether any file matching ``pattern`` or any history index under ``root`` holds a forgotten user."""
    from components.engine.history_index import find_history_indexes

    return any(_holds(forgetter, p) for p in root.rglob(pattern)) or any(
        _index_holds(forgetter, folder) for folder in find_history_indexes(root)
    )


def _retire_versions(settings: Settings, forgetter: Forgetter, reason: str) -> list[str]:
    """Retire every non-retired version whose bundle holds a forgotten user; returns their numbers."""
    import tempfile

    import mlflow

    from components.registry.tracking import CHAMPION, aliased_version, configure

    client = configure(settings)
    name = settings.registry.model_name
    champion = aliased_version(client, name, CHAMPION)
    retired = []
    versions = client.search_model_versions(f"name = '{name}'")
    for version in sorted(versions, key=lambda v: int(v.version)):
        if (version.tags or {}).get(RETIRED_TAG):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version.version}", dst_path=tmp))
            except Exception as exc:  # no readable artifact: nothing of the user can be served from it
                log.warning("version %s: artifacts unreadable (%s); leaving it as it is", version.version, exc)
                continue
            holds = _folder_holds(forgetter, local)
        if not holds:
            continue
        if str(version.version) == str(champion):
            raise LmRecsysError(f"the champion (version {champion}) holds a forgotten user; purge refused")
        retire_version(client, name, version, reason)
        retired.append(str(version.version))
    return retired


def retire_version(client, name: str, version, reason: str) -> None:
    """Tag the version retired (with why and when), drop its aliases, delete its model artifacts."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    from components.registry.tracking import utc_now

    for alias in version.aliases or []:
        client.delete_registered_model_alias(name, alias)
    client.set_model_version_tag(name, version.version, RETIRED_TAG, reason)
    client.set_model_version_tag(name, version.version, "retired_at", utc_now())
    model_id = version.model_id or (version.source or "").removeprefix("models:/").split("/")[0]
    if model_id.startswith("m-"):  # a logged model (MLflow 3): its whole artifact folder goes
        location = client.get_logged_model(model_id).artifact_location
    else:  # an older, run-relative source
        location = version.source
    get_artifact_repository(location).delete_artifacts()


def _tainted_snapshots(settings: Settings, forgetter: Forgetter) -> list[Snapshot]:
    return [
        s
        for folder in (settings.snapshots_dir, settings.quarantine_dir)
        for s in list_snapshots(folder)
        if _holds(forgetter, s.path / "interactions.parquet")
    ]


def _delete_runs(settings: Settings, forgetter: Forgetter, tainted_ids: set[str]) -> list[str]:
    deleted = []
    if not settings.runs_dir.exists():
        return deleted
    for run in sorted(p for p in settings.runs_dir.iterdir() if p.is_dir()):
        meta = run / "train.json"
        snapshot_id = json.loads(meta.read_text()).get("snapshot_id") if meta.exists() else None
        if snapshot_id in tainted_ids or _folder_holds(forgetter, run, "*.parquet"):
            shutil.rmtree(run)
            deleted.append(run.name)
    return deleted


def rewrite_snapshot(snapshot: Snapshot, forgetter: Forgetter, reason: str) -> Snapshot:
    """The snapshot without the forgotten users' rows, under a new id; the old folder is deleted.

    When the result equals a snapshot already there (the erasure run's own snapshot, when nothing else
    changed), that one is kept as it is, with its own time and validation, and its manifest records
    the rewrite (``same_as_existing``)."""
    manifest, validation = snapshot.manifest, snapshot.validation
    interactions = snapshot.interactions()
    kept = interactions[~forgetter.mask(interactions["user_id"])]
    fixed = {"snapshot_id", "content_hash", "created_at", "row_counts", "time_range", "feedback_watermark"}
    extra = {k: v for k, v in manifest.items() if k not in fixed | {"parent", "id_type", "sources"}}
    removed = len(interactions) - len(kept)
    record = {"from": snapshot.snapshot_id, "reason": reason, "at": time.time(), "rows_removed": removed}
    extra["rewritten"] = [*manifest.get("rewritten", []), record]
    existing = {p.name for p in snapshot.path.parent.iterdir()}
    new = write_snapshot(
        snapshot.path.parent,
        snapshot.items(),
        kept,
        id_type=manifest["id_type"],
        feedback_watermark=manifest["feedback_watermark"],
        parent=manifest.get("parent"),
        sources=manifest.get("sources", {}),
        extra=extra,
    )
    placed = new.manifest
    if new.snapshot_id in existing:  # the rewrite equals a snapshot already there (e.g. the erasure run's own)
        placed["rewritten"] = [*placed.get("rewritten", []), {**record, "same_as_existing": True}]
        atomic_write_text(new.path / "manifest.json", json.dumps(placed, indent=2, sort_keys=True))
        shutil.rmtree(snapshot.path)
        return new
    placed["created_at"] = manifest["created_at"]  # keeps its place in the lineage (newest_accepted is by time)
    atomic_write_text(new.path / "manifest.json", json.dumps(placed, indent=2, sort_keys=True))
    if validation is not None:
        validation = {**validation, "snapshot_id": new.snapshot_id, "rewritten_from": snapshot.snapshot_id}
        atomic_write_text(new.path / "validation.json", json.dumps(validation, indent=2, default=str))
    shutil.rmtree(snapshot.path)
    return new


def _purge_impressions(settings: Settings, forgetter: Forgetter) -> int:
    """Impressions served to a forgotten user after the erasure but before the replica applied it."""
    store = FeedbackStore(settings.feedback_url)
    try:
        users = store.impression_user_ids()
        held = [u for u, hit in zip(users, forgetter.mask(pd.Series(users, dtype=object))) if hit]
        return store.forget_impressions(held) if held else 0
    finally:
        store.close()


def purge(settings: Settings, reason: str = "erasure") -> dict:
    """Purge older artifacts of every ``serving-clean`` request; returns what was done."""
    store = FeedbackStore(settings.feedback_url)
    try:
        clean = store.erasures("serving-clean")
    finally:
        store.close()
    if clean.empty:
        return {"requests": 0}
    forgetter = Forgetter(erasure_key(settings), set(clean["user_key"]))
    retired = _retire_versions(settings, forgetter, reason)
    tainted = _tainted_snapshots(settings, forgetter)
    runs = _delete_runs(settings, forgetter, {s.snapshot_id for s in tainted})
    impressions = _purge_impressions(settings, forgetter)
    rewritten, deleted = {}, []
    for snapshot in tainted:
        if snapshot.path.parent == settings.quarantine_dir:
            shutil.rmtree(snapshot.path)
            deleted.append(snapshot.snapshot_id)
        else:
            rewritten[snapshot.snapshot_id] = rewrite_snapshot(snapshot, forgetter, reason).snapshot_id
    result = {
        "requests": len(clean),
        "versions_retired": retired,
        "run_folders_deleted": runs,
        "snapshots_rewritten": rewritten,
        "quarantined_snapshots_deleted": deleted,
        "impression_rows_deleted": impressions,
        "at": time.time(),
    }
    store = FeedbackStore(settings.feedback_url)
    try:
        for key, detail in zip(clean["user_key"], clean["detail"]):
            store.set_erasure_state([key], "done", json.dumps({**json.loads(detail or "{}"), "purge": result}))
    finally:
        store.close()
    log.info("purge for %d erasure request(s): %s", len(clean), result)
    return result
