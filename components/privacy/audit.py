"""``lmrecsys users audit``: every place the platform keeps that still holds a user.

The places: the feedback store (events, held-back events, impressions and their attributions), snapshots
and quarantined snapshots, every Parquet file with a ``user_id`` column and every bundle's history index
(``histories/``) under the data root (run folders, serving bundles) and under a local MLflow artifact
root (the artifacts of runs and model versions). With a tracking server, each registered version's
bundle is downloaded and read. A running service can be asked too (``service_url``), through its admin audit endpoint.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from components.feedback.store import FeedbackStore
from components.privacy.forget import check_user_id, snapshots_holding
from components.settings import Settings


def _parquet_holds(path: Path, user_id: str) -> int:
    """Rows of ``path`` whose ``user_id`` is the user (0 when the file has no such column)."""
    try:
        if "user_id" not in pq.read_schema(path).names:
            return 0
        users = pd.read_parquet(path, columns=["user_id"])["user_id"]
    except (OSError, ValueError):
        return 0
    return int((users.astype(str) == user_id).sum())


def _index_holds(folder: Path, user_id: str) -> int:
    """Interactions of the user in a bundle's history index (0 when it cannot be read)."""
    from components.engine.history_index import HistoryIndex

    try:
        return HistoryIndex.open(folder).rows_of_text(user_id)
    except ValueError:
        return 0


def _scan_folder(root: Path, user_id: str, skip: tuple[Path, ...] = ()) -> list[dict]:
    from components.engine.history_index import find_history_indexes

    found = []
    if not root.exists():
        return found
    for path in sorted(root.rglob("*.parquet")):
        if any(path.is_relative_to(s) for s in skip):
            continue
        rows = _parquet_holds(path, user_id)
        if rows:
            found.append({"place": "file", "path": str(path), "rows": rows})
    for folder in find_history_indexes(root):
        if any(folder.is_relative_to(s) for s in skip):
            continue
        rows = _index_holds(folder, user_id)
        if rows:
            found.append({"place": "file", "path": str(folder), "rows": rows})
    return found


def _store_places(settings: Settings, user_id: str) -> list[dict]:
    store = FeedbackStore(settings.feedback_url)
    try:
        events = store.user_event_count(user_id)
        held = store.quarantined()
        shown = store.user_impression_counts(user_id)  # impressions and attributions of online experiments
    finally:
        store.close()
    places = [{"place": "feedback store", "table": "feedback_events", "rows": events}] if events else []
    held_rows = int((held["user_id"].astype(str) == user_id).sum())
    if held_rows:
        places.append({"place": "feedback store", "table": "feedback_quarantine", "rows": held_rows})
    places += [{"place": "feedback store", "table": table, "rows": rows} for table, rows in shown.items() if rows]
    return places


def _registry_places(settings: Settings, user_id: str) -> list[dict]:
    """With a tracking server: each version's bundle histories, downloaded (a local store is scanned as files)."""
    if not settings.tracking_uri.startswith(("http://", "https://")):
        return []
    import mlflow

    from components.registry.tracking import configure

    client = configure(settings)
    found = []
    for version in client.search_model_versions(f"name = '{settings.registry.model_name}'"):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = mlflow.artifacts.download_artifacts(
                    f"models:/{settings.registry.model_name}/{version.version}", dst_path=tmp
                )
            except Exception:  # a deleted or unreadable artifact holds nothing we can read
                continue
            from components.engine.history_index import find_history_indexes

            rows = sum(_parquet_holds(p, user_id) for p in Path(local).rglob("*.parquet"))
            rows += sum(_index_holds(folder, user_id) for folder in find_history_indexes(Path(local)))
        if rows:
            found.append({"place": "mlflow model version", "version": str(version.version), "rows": rows})
    return found


def _service_places(service_url: str, admin_token: str | None, client_key: str | None, user_id: str) -> list[dict]:
    import requests

    headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
    if client_key:  # with client keys configured, the admin routes need one too
        headers["X-API-Key"] = client_key
    answer = requests.get(f"{service_url.rstrip('/')}/admin/users/{user_id}/audit", headers=headers, timeout=10)
    answer.raise_for_status()
    return [{"place": "service memory", **place} for place in answer.json().get("places", [])]


def audit_user(settings: Settings, user_id, *, service_url: str | None = None) -> dict:
    """``{"user_id", "found", "places"}``: every place that still holds the user."""
    user_id = check_user_id(user_id)
    places = _store_places(settings, user_id)
    for snapshot in snapshots_holding(settings, user_id):
        kind = "quarantined snapshot" if snapshot.path.parent == settings.quarantine_dir else "snapshot"
        places.append({"place": kind, "snapshot_id": snapshot.snapshot_id, "path": str(snapshot.path)})
    skip = (settings.snapshots_dir, settings.quarantine_dir)
    places += _scan_folder(settings.root, user_id, skip)
    artifact_root = settings.artifact_root
    if "://" not in artifact_root or artifact_root.startswith("file://"):  # a remote store is read below
        local = Path(artifact_root.removeprefix("file://")).resolve()
        if not local.is_relative_to(settings.root):
            places += _scan_folder(local, user_id)
    places += _registry_places(settings, user_id)
    if service_url:
        token, keys = settings.serving.admin_token, settings.serving.client_keys
        secret = token.get_secret_value() if token else None
        places += _service_places(service_url, secret, keys[0].get_secret_value() if keys else None, user_id)
    return {"user_id": user_id, "found": len(places), "places": places}
