"""A full disk (``RLIMIT_FSIZE``, see ``disk.py``) during ingest, during training and during a feedback write.

Each time: a clear error, nothing half-written where a reader would see it (no partial snapshot,
no partial candidate or bundle, no acknowledged event missing), and the champion alias unchanged.
"""

from __future__ import annotations

import sqlite3
import time

import pytest
import requests

from components.feedback.store import FeedbackEvent, FeedbackStore
from tests.faults.catalogue import small_env, small_settings
from tests.faults.conftest import serve
from tests.faults.disk import (
    INGEST_LIMIT,
    TRAIN_LIMIT,
    candidate_folders_complete,
    champion_version,
    cli_pipeline_run,
    hidden_entries,
    says_disk_full,
    set_tree_limit,
    train_stage,
    visible_entries,
)
from tests.faults.traffic import FeedbackPump, stored_event_ids
from tests.harness import wait_for

pytestmark = [pytest.mark.integration]


def test_disk_full_during_ingest_and_training(own_champion):
    data_root, source = own_champion
    settings = small_settings(data_root, source)
    champion = champion_version(settings)
    store = FeedbackStore(settings.feedback_url)  # new users' views: the next snapshot has a lot to write
    store.append(
        [FeedbackEvent(str(1000 + n), str(1 + n % 30), "view", None, 1.6e9 + n, f"d-{n}") for n in range(20_000)]
    )
    store.close()
    snapshots = visible_entries(settings.snapshots_dir)

    ingest = cli_pipeline_run(small_env(data_root, source), INGEST_LIMIT)
    assert ingest.returncode != 0, ingest.stdout
    assert says_disk_full(ingest.stderr), ingest.stderr[-2000:]
    assert visible_entries(settings.snapshots_dir) == snapshots
    assert not hidden_entries(settings.snapshots_dir), "the temporary snapshot folder was left behind"
    assert champion_version(settings) == champion

    (snapshot_id,) = snapshots
    embeddings = next((settings.embeddings_dir / snapshot_id).iterdir())
    train = train_stage(small_env(data_root, source), snapshot_id, str(embeddings), "disk-full", TRAIN_LIMIT)
    assert train.returncode != 0 and says_disk_full(train.stderr), train.stderr[-2000:]
    run = settings.runs_dir / "disk-full"
    assert candidate_folders_complete(run) == {"popularity": "ok"}  # written whole; lm_content not at all
    assert not hidden_entries(run) and not (run / "bundle").exists()
    assert champion_version(settings) == champion

    # the CLI says what went wrong in one line, as it does for every handled error (components/cli.py)
    assert "error: " in ingest.stderr and "Traceback" not in ingest.stderr, ingest.stderr[-2000:]


def test_disk_full_during_feedback_writes(small_champion, tmp_path):
    data_root, _ = small_champion
    db = tmp_path / "feedback.db"
    server = serve(data_root, tmp_path / "bento", f"sqlite:///{db}")
    pump = FeedbackPump(server.base, "disk", threads=4)
    try:
        pump.start().wait_acknowledged(100, timeout=60)
        pids = [p.pid for p in server.tree()]
        assert set_tree_limit(pids, 4096)  # the disk is full: no file may grow, nor be written past its first page
        full = time.monotonic()
        time.sleep(2)
        refused = requests.post(
            f"{server.base}/feedback", json={"user_id": 2, "item_id": 1, "event": "view"}, timeout=30
        )
        set_tree_limit(pids, None)  # space is freed
        freed = time.monotonic()
        wait_for(
            lambda: pump.first_ok_after(freed), 15, interval=0.05, what="a 2xx once space is freed", procs=[server]
        )
        pump.stop()
        assert server.alive()
    finally:
        pump.stop()
        server.stop()
    during = [o for o in pump.snapshot() if full + 0.5 <= o.sent and o.done <= freed]
    assert refused.status_code == 503 and "nothing was acknowledged" in refused.json()["error"], refused.text
    assert during and all(o.status == 503 for o in during), {o.status for o in during}
    assert {status for status in pump.statuses() if status >= 500} <= {503}, pump.statuses()
    acknowledged = pump.acknowledged()
    missing = set(acknowledged) - stored_event_ids(f"sqlite:///{db}", acknowledged)
    assert not missing, f"{len(missing)} acknowledged events lost: {sorted(missing)[:10]}"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
