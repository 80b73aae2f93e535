"""Scale-out: the pipeline on PostgreSQL + CeleryExecutor (Redis broker) with two workers.

The Airflow metadata DB is a fresh PostgreSQL database, Celery's broker is Redis and its result
backend PostgreSQL, and two Celery workers (concurrency 1, distinct names) run the tasks. The
test shows the two mapped ``embed_shard`` tasks and the mapped ``train_candidate`` tasks each ran
on both workers, the shards each encoding texts of their own, and that the run ends with exactly
the result of the same reduced pipeline run in one process with no Airflow (same snapshot id,
same evaluation numbers).

The training tasks are made to last: two sequential candidates with a fixed number of epochs
(``FIT_CONFIG``). Both are queued at once and a worker runs one task at a time, so for one worker
to take both, the other would have to stay busy for two whole fits; the reduced defaults' fits
take about a second, short enough for that to happen. These settings are this test's only, so its
reference trains them on the shared reference's snapshot and vectors (``train_reference``).
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from unittest import mock

import pytest
from mlflow.tracking import MlflowClient

from tests.harness import AirflowStack
from tests.integration._helpers import (
    DAGS_FOLDER,
    PIPELINE,
    WATCH,
    describe_run,
    metric_numbers,
    reduced_env,
    reduced_settings,
    seed_embedding_cache,
    train_reference,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
WORKERS = ["w1", "w2"]
EXPERIMENTS = "lm_recsys_experiments"
CANDIDATES = ["lm_sasrec", "sasrec"]
FIT_CONFIG = {"max_epochs": 12, "patience": 12, "threads": 1, "progress": False}
"""12 epochs, never stopped early, on one thread each: several seconds per fit (with the task's
imports), and the two fits side by side do not oversubscribe two cores."""
TRAIN = {"candidates": CANDIDATES, "model_configs": {name: FIT_CONFIG for name in CANDIDATES}}


@pytest.fixture(scope="module")
def celery_reference(tmp_path_factory, movielens_dir, reference_run) -> dict:
    """This test's candidates trained in this process on the shared reference's snapshot."""
    data_root = tmp_path_factory.mktemp("celery-reference")
    settings = reduced_settings(data_root, movielens_dir, **TRAIN)
    return {"settings": settings, "report": train_reference(reference_run, data_root, settings)}


def test_celery_workers_share_the_mapped_shards_and_match_the_embedded_result(
    tmp_path, movielens_dir, reference_run, celery_reference, airflow_postgres_url, celery_broker_url
):
    data_root = tmp_path / "data"
    # Most texts come from the reference's cache; two of every ten (alternating shards) do not,
    # so both mapped shards have real encoding work.
    left_out = seed_embedding_cache(reference_run["cache"], data_root, leave_out_every=10)
    assert left_out > 2
    result_backend = "db+" + airflow_postgres_url.replace("+psycopg2", "")
    env = {
        **reduced_env(
            data_root,
            movielens_dir,
            LMRECSYS_TRAIN__CANDIDATES=json.dumps(TRAIN["candidates"]),
            LMRECSYS_TRAIN__MODEL_CONFIGS=json.dumps(TRAIN["model_configs"]),
        ),
        "AIRFLOW__CELERY__BROKER_URL": celery_broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": result_backend,
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
        "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
        "AIRFLOW__CORE__PARALLELISM": "8",  # room for every training task at once (and the watch DAG's)
    }
    from components.settings import load_settings

    with mock.patch.dict(os.environ, env):  # what the workers will read
        assert load_settings().train == celery_reference["settings"].train
    stack = AirflowStack(tmp_path / "airflow", DAGS_FOLDER, env, executor="CeleryExecutor", db_url=airflow_postgres_url)
    try:
        stack.start(workers=WORKERS, timeout=180)
        stack.wait_dag(WATCH, timeout=180)
        stack.api("PATCH", f"/dags/{WATCH}", json={"is_paused": True})  # no feedback in this test
        # nor experiments: a run of its own would take a worker, perhaps while the fits are queued
        stack.wait_dag(EXPERIMENTS, timeout=180)
        stack.api("PATCH", f"/dags/{EXPERIMENTS}", json={"is_paused": True})
        stack.wait_dag(PIPELINE, timeout=180)

        run_id = stack.trigger(PIPELINE)
        assert stack.wait_run(PIPELINE, run_id, timeout=900) == "success", describe_run(stack, run_id)

        tis = stack.task_instances(PIPELINE, run_id)
        # only the Celery workers report "<worker>@<machine>": every task ran on one of them
        assert {ti["hostname"].split("@")[0] for ti in tis} <= set(WORKERS), {
            ti["task_id"]: ti["hostname"] for ti in tis
        }
        shards = sorted((ti for ti in tis if ti["task_id"] == "embed_shard"), key=lambda ti: ti["map_index"])
        assert [ti["map_index"] for ti in shards] == [0, 1]
        hosts = {ti["hostname"] for ti in shards}
        assert {host.split("@")[0] for host in hosts} == set(WORKERS), f"shards ran on {hosts}"
        reports = [stack.xcom(PIPELINE, run_id, "embed_shard", map_index=ti["map_index"]) for ti in shards]
        assert all(report["encoded"] > 0 for report in reports), reports
        assert sum(report["encoded"] for report in reports) == left_out

        # one mapped training task per candidate, all queued at once; each fit lasts long enough
        # that while one worker runs it the other takes the next (see the module docstring)
        fits = sorted((ti for ti in tis if ti["task_id"] == "train_candidate"), key=lambda ti: ti["map_index"])
        assert [ti["map_index"] for ti in fits] == list(range(len(CANDIDATES)))
        queued = [datetime.fromisoformat(ti["queued_when"]).timestamp() for ti in fits]
        assert max(queued) - min(queued) < 2.0, {ti["map_index"]: ti["queued_when"] for ti in fits}
        fit_hosts = {ti["map_index"]: (ti["hostname"], ti["start_date"], ti["duration"]) for ti in fits}
        assert {ti["hostname"].split("@")[0] for ti in fits} == set(WORKERS), f"fits ran on {fit_hosts}"

        # the same result as the reduced pipeline run in one process
        snapshot_id = stack.xcom(PIPELINE, run_id, "validate")
        assert snapshot_id == reference_run["report"]["snapshot_id"] == reference_run["decision"]["snapshot_id"]
        report = json.loads(Path(stack.xcom(PIPELINE, run_id, "evaluate")).read_text())
        expected = celery_reference["report"]
        assert report["snapshot_id"] == expected["snapshot_id"] == snapshot_id
        assert sorted(report["candidates"]) == sorted(CANDIDATES)
        assert report["best"] == expected["best"]
        assert metric_numbers(report) == metric_numbers(expected)

        decision = stack.xcom(PIPELINE, run_id, "promote")
        assert decision["decision"] == "promoted"  # the first run: no champion yet
        assert decision["model_kind"] == expected["best"]
        settings = reduced_settings(data_root, movielens_dir, **TRAIN)
        champion = MlflowClient(settings.tracking_uri).get_model_version_by_alias(
            settings.registry.model_name, "champion"
        )
        assert str(champion.version) == decision["version"] == "1"
        assert champion.tags["snapshot_id"] == snapshot_id
    finally:
        stack.stop()
