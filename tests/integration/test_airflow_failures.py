"""Failure handling, manual runs and the feedback burst on the embedded default stack.

One real scheduler, dag-processor and api-server (SQLite, LocalExecutor) serve every test in this
module, in order; the data root is seeded with the reference run's embedding cache so no test
waits for the encoder. The tests share the registry's history: the first run makes version 1 the
champion and the later tests check what happens to it.

1. The ``lm_sasrec`` ``train_candidate`` task's process is killed with SIGKILL mid-fit: the
   retry succeeds and no temporary folder is left under ``runs/`` or ``snapshots/``.
2. A corrupted source (a rating of 7) fails ``validate``; ``train`` never runs, no version is
   registered, the champion stays, and the task log (read through the REST API) and the
   quarantine report name the failed expectation.
3. A manual run with ``{"snapshot_id": ...}`` reuses that snapshot and completes although the
   scheduler is restarted in the middle of it.
4. With a stricter gate, a rejected challenger ends the run green with the decision in the
   ``promote`` log; feedback arriving in three bursts during that run yields exactly one
   follow-up run.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path

import pandas as pd
import psutil
import pytest
from mlflow.tracking import MlflowClient

from tests.harness import AirflowStack, wait_for
from tests.integration._helpers import (
    DAGS_FOLDER,
    PIPELINE,
    WATCH,
    copy_source,
    describe_run,
    reduced_env,
    reduced_settings,
    seed_embedding_cache,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TRIGGER_MIN_EVENTS = 5
RUN_TIMEOUT = 900


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, movielens_dir, reference_run):
    """The running stack, its settings and its private source copy."""
    root = tmp_path_factory.mktemp("embedded")
    data_root = root / "data"
    seed_embedding_cache(reference_run["cache"], data_root)
    source = copy_source(movielens_dir, root / "movielens")
    env = reduced_env(
        data_root,
        source,
        LMRECSYS_FEEDBACK__TRIGGER_MIN_EVENTS=str(TRIGGER_MIN_EVENTS),
        LMRECSYS_AIRFLOW__WATCH_INTERVAL_S="4",
        # a task orphaned by the scheduler restart is found in seconds, not the default 5 minutes
        AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL="15",
        AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD="15",
        AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT="60",
    )
    stack = AirflowStack(root / "airflow", DAGS_FOLDER, env)
    try:
        stack.start(timeout=180)
        stack.wait_dag(WATCH, timeout=180)
        stack.api("PATCH", f"/dags/{WATCH}", json={"is_paused": True})  # only the burst test needs it
        stack.wait_dag(PIPELINE, timeout=180)
        settings = reduced_settings(data_root, source)
        yield {
            "stack": stack,
            "settings": settings,
            "source": source,
            "client": MlflowClient(settings.tracking_uri),
            "state": {},
        }
    finally:
        stack.stop()


def _leftovers(settings) -> list[Path]:
    patterns = {settings.runs_dir: (".tmp-*", "*/.tmp-*"), settings.snapshots_dir: (".tmp-*",)}
    return [
        p for folder, globs in patterns.items() if folder.exists() for pattern in globs for p in folder.glob(pattern)
    ]


def _ti(stack: AirflowStack, run_id: str, task_id: str, map_index: int = -1) -> dict:
    if map_index < 0:
        return stack.task_instance(PIPELINE, run_id, task_id)
    return stack.api("GET", f"/dags/{PIPELINE}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}")


def _versions(embedded) -> list[str]:
    name = embedded["settings"].registry.model_name
    return sorted(str(v.version) for v in embedded["client"].search_model_versions(f"name='{name}'"))


def _champion(embedded) -> str:
    name = embedded["settings"].registry.model_name
    return str(embedded["client"].get_model_version_by_alias(name, "champion").version)


def test_killed_train_task_is_retried_and_leaves_no_partial_artifacts(embedded):
    stack, settings = embedded["stack"], embedded["settings"]
    lm_index = settings.train.candidates.index("lm_sasrec")  # the longest fit of the default candidates
    run_id = stack.trigger(PIPELINE)

    def train_running():
        ti = _ti(stack, run_id, "train_candidate", lm_index)
        if ti["state"] in ("success", "failed", "upstream_failed"):
            pytest.fail(f"train ended {ti['state']} before it could be killed\n{describe_run(stack, run_id)}")
        return ti if ti["state"] == "running" and ti["pid"] else None

    ti = wait_for(train_running, RUN_TIMEOUT, interval=0.5, what="train to start", procs=stack.procs)
    task = psutil.Process(ti["pid"])
    # the pid the API reports is our own scheduler's descendant, not some other process
    assert task.pid in {p.pid for p in stack.process("scheduler").tree()}, (ti, task.cmdline())

    # kill it mid-fit: once its temporary run folder exists
    def temporary_folder():
        found = list(settings.runs_dir.glob("*/.tmp-lm_sasrec-*")) if settings.runs_dir.exists() else []
        if not found and not task.is_running():
            pytest.fail(f"train finished before its temporary folder was seen\n{describe_run(stack, run_id)}")
        return found

    partial = wait_for(temporary_folder, 300, interval=0.01, what="train's temporary folder")
    os.kill(task.pid, signal.SIGKILL)

    assert stack.wait_run(PIPELINE, run_id, timeout=RUN_TIMEOUT) == "success", describe_run(stack, run_id)
    train = _ti(stack, run_id, "train_candidate", lm_index)
    assert train["state"] == "success" and train["try_number"] >= 2, train
    assert not any(p.exists() for p in partial), f"the killed try's temporary folder {partial} is still there"
    assert _leftovers(settings) == []
    run_dir = Path(stack.xcom(PIPELINE, run_id, "evaluate")).parent
    assert (run_dir / "train.json").exists() and (run_dir / "report.json").exists()
    assert json.loads((run_dir / "lm_sasrec" / "fit.json").read_text())["status"] == "ok"
    assert stack.xcom(PIPELINE, run_id, "promote")["decision"] == "promoted"
    assert _champion(embedded) == "1"
    embedded["state"]["snapshot_id"] = stack.xcom(PIPELINE, run_id, "validate")


def test_failed_validation_stops_before_training_and_keeps_the_champion(embedded):
    stack, settings, source = embedded["stack"], embedded["settings"], embedded["source"]
    versions, champion = _versions(embedded), _champion(embedded)
    ratings = source / "ratings.csv"
    original = ratings.read_bytes()
    frame = pd.read_csv(ratings)
    frame.loc[0, "rating"] = 7.0  # user 1 is inside the reduced config's first 40 users
    corrupted = ratings.with_name(".ratings.csv.tmp")
    frame.to_csv(corrupted, index=False)
    os.replace(corrupted, ratings)
    try:
        run_id = stack.trigger(PIPELINE)
        assert stack.wait_run(PIPELINE, run_id, timeout=RUN_TIMEOUT) == "failed", describe_run(stack, run_id)
    finally:
        ratings.write_bytes(original)

    states = {ti["task_id"]: ti["state"] for ti in stack.task_instances(PIPELINE, run_id)}
    assert states["ingest"] == "success" and states["validate"] == "failed", states
    for task_id in ("plan_training", "train_candidate", "evaluate", "register", "promote"):
        assert states[task_id] == "upstream_failed", states
    assert _versions(embedded) == versions and _champion(embedded) == champion

    snapshot_id = stack.xcom(PIPELINE, run_id, "ingest")
    assert not (settings.snapshots_dir / snapshot_id).exists()
    validation = json.loads((settings.quarantine_dir / snapshot_id / "validation.json").read_text())
    assert any("rating" in failure for failure in validation["failed"]), validation["failed"]
    # the reason as an operator sees it: the first try's log, through the REST API
    log = stack.task_log(PIPELINE, run_id, "validate", 1)
    assert "ValidationFailed" in log and "rating" in log and "quarantine" in log, log[-3000:]


def test_manual_run_on_a_chosen_snapshot_survives_a_scheduler_restart(embedded):
    stack, settings = embedded["stack"], embedded["settings"]
    chosen = embedded["state"].get("snapshot_id") or pytest.skip("needs the first test's snapshot")
    snapshots_before = sorted(p.name for p in settings.snapshots_dir.iterdir())
    run_id = stack.trigger(PIPELINE, {"snapshot_id": chosen})

    def past_validation():
        states = {ti["task_id"]: ti["state"] for ti in stack.task_instances(PIPELINE, run_id)}
        if states.get("validate") == "failed":
            pytest.fail(describe_run(stack, run_id))
        return states if states.get("validate") == "success" else None

    wait_for(past_validation, RUN_TIMEOUT, interval=1, what="validate to finish", procs=stack.procs)
    old_scheduler = stack.process("scheduler").proc.pid
    stack.restart("scheduler")
    assert stack.process("scheduler").proc.pid != old_scheduler

    assert stack.wait_run(PIPELINE, run_id, timeout=RUN_TIMEOUT) == "success", describe_run(stack, run_id)
    assert stack.xcom(PIPELINE, run_id, "ingest") == chosen
    assert stack.xcom(PIPELINE, run_id, "register")["snapshot_id"] == chosen
    assert sorted(p.name for p in settings.snapshots_dir.iterdir()) == snapshots_before
    assert _leftovers(settings) == []


def test_rejected_challenger_ends_green_and_a_feedback_burst_yields_one_follow_up_run(embedded):
    stack, settings = embedded["stack"], embedded["settings"]
    chosen = embedded["state"].get("snapshot_id") or pytest.skip("needs the first test's snapshot")
    # a gate that demands a gain of 1.0 in NDCG@10: no challenger can pass it
    stack.env["LMRECSYS_REGISTRY__TOLERANCE"] = "-1"
    stack.restart("scheduler")
    champion = _champion(embedded)
    asset_runs_before = [r["dag_run_id"] for r in stack.runs(PIPELINE) if r["run_type"] == "asset_triggered"]
    stack.api("PATCH", f"/dags/{WATCH}", json={"is_paused": False})

    run_id = stack.trigger(PIPELINE, {"snapshot_id": chosen})
    wait_for(
        lambda: _ti(stack, run_id, "ingest")["state"] == "success",
        RUN_TIMEOUT,
        interval=1,
        what="ingest",
        procs=stack.procs,
    )

    from components.feedback.store import FeedbackEvent, FeedbackStore

    catalogue = pd.read_parquet(settings.snapshots_dir / chosen / "items.parquet")["item_id"].tolist()
    store = FeedbackStore(settings.feedback_url)
    event_ids = []
    try:
        for burst in range(3):
            batch = [
                FeedbackEvent(user_id="1", item_id=str(item), event="like", event_id=f"burst-{uuid.uuid4().hex}")
                for item in catalogue[burst * TRIGGER_MIN_EVENTS : (burst + 1) * TRIGGER_MIN_EVENTS]
            ]
            store.append(batch)
            event_ids += [event.event_id for event in batch]
            watermark = store.watermark()
            # each burst alone is enough for a trigger: wait until the watch DAG has claimed it
            wait_for(
                lambda watermark=watermark: store.last_trigger_watermark() >= watermark,
                180,
                interval=1,
                what=f"the trigger for burst {burst + 1}",
                procs=stack.procs,
            )
    finally:
        store.close()
    assert stack.run_state(PIPELINE, run_id) == "running", (
        "the run ended before the bursts were claimed; the test proves nothing"
    )

    # the rejected challenger: the run is green and the promote log says why
    assert stack.wait_run(PIPELINE, run_id, timeout=RUN_TIMEOUT) == "success", describe_run(stack, run_id)
    decision = stack.xcom(PIPELINE, run_id, "promote")
    assert decision["decision"] == "rejected" and "below the champion" in decision["reason"], decision
    promote_log = stack.task_log(PIPELINE, run_id, "promote", _ti(stack, run_id, "promote")["try_number"])
    assert f"version {decision['version']} rejected" in promote_log, promote_log[-3000:]
    assert _champion(embedded) == champion

    # three claimed triggers during the run -> exactly one follow-up run
    def follow_ups():
        return [
            r
            for r in stack.runs(PIPELINE)
            if r["run_type"] == "asset_triggered" and r["dag_run_id"] not in asset_runs_before
        ]

    follow_up = wait_for(follow_ups, 240, interval=2, what="the follow-up run", procs=stack.procs)[0]
    assert stack.wait_run(PIPELINE, follow_up["dag_run_id"], timeout=RUN_TIMEOUT) == "success", describe_run(
        stack, follow_up["dag_run_id"]
    )
    snapshot = settings.snapshots_dir / stack.xcom(PIPELINE, follow_up["dag_run_id"], "validate")
    assert set(event_ids) <= set(pd.read_parquet(snapshot / "interactions.parquet")["event_id"])
    time.sleep(20)  # several watch intervals: a second follow-up would have been created by now
    assert [r["dag_run_id"] for r in follow_ups()] == [follow_up["dag_run_id"]]
    assert stack.api("GET", f"/dags/{PIPELINE}/dagRuns", params={"state": ["queued", "running"]})["total_entries"] == 0
    stack.api("PATCH", f"/dags/{WATCH}", json={"is_paused": True})
