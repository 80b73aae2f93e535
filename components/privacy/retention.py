"""Retention: old snapshots and model versions do not stay forever (``privacy.keep_*``).

Applied after every promotion, with the erasure purge. The newest ``keep_snapshots`` accepted snapshots
stay, and so does the champion's; older accepted snapshots are deleted, with the run folders that
trained on them. Model versions beyond the newest ``keep_model_versions`` are retired (tag
``retired=retention``, artifacts deleted), except the champion. Impressions logged outside an online
experiment, and their attributions, are deleted after ``keep_impressions_days``.
"""

from __future__ import annotations

import json
import shutil
import time

from components.data.snapshots import list_snapshots
from components.privacy.purge import RETIRED_TAG, retire_version
from components.settings import Settings


def apply_retention(settings: Settings) -> dict:
    from components.registry.tracking import CHAMPION, aliased_version, configure

    client = configure(settings)
    name = settings.registry.model_name
    champion = aliased_version(client, name, CHAMPION)
    versions = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    keep_snapshot = {v.tags.get("snapshot_id") for v in versions if str(v.version) == str(champion)}
    live = [v for v in versions if not (v.tags or {}).get(RETIRED_TAG)]
    retired = []
    for version in live[: max(0, len(live) - settings.privacy.keep_model_versions)]:
        if str(version.version) != str(champion):
            retire_version(client, name, version, "retention")
            retired.append(str(version.version))
    accepted = [s for s in list_snapshots(settings.snapshots_dir) if s.accepted]
    keep_snapshot |= {s.snapshot_id for s in accepted[-settings.privacy.keep_snapshots :]}
    deleted = [s for s in accepted if s.snapshot_id not in keep_snapshot]
    gone = {s.snapshot_id for s in deleted}
    runs = []
    if gone and settings.runs_dir.exists():
        for run in sorted(p for p in settings.runs_dir.iterdir() if (p / "train.json").exists()):
            if json.loads((run / "train.json").read_text()).get("snapshot_id") in gone:
                shutil.rmtree(run)
                runs.append(run.name)
    for snapshot in deleted:
        shutil.rmtree(snapshot.path)
    pruned = _prune_impressions(settings)
    return {
        "versions_retired": retired,
        "snapshots_deleted": sorted(gone),
        "run_folders_deleted": runs,
        "impressions_deleted": pruned,
    }


def _prune_impressions(settings: Settings) -> dict[str, int]:
    from components.feedback.store import FeedbackStore

    store = FeedbackStore(settings.feedback_url)
    try:
        return store.prune_impressions(time.time() - 86_400 * settings.privacy.keep_impressions_days)
    finally:
        store.close()
