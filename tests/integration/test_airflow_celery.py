"""Scale-out: the pipeline on PostgreSQL + CeleryExecutor (Redis broker) with two workers.

The Airflow metadata DB is a fresh PostgreSQL database, Celery's broker is Redis and its result
backend PostgreSQL, and two Celery workers (concurrency 1, distinct names) run the tasks. The
test shows the two mapped ``embed_shard`` tasks ran on different workers, each encoding texts of
its own, and that the run ends with exactly the result of the same reduced pipeline run in one
process with no Airflow (same snapshot id, same evaluation numbers).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

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
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
WORKERS = ["w1", "w2"]


def test_celery_workers_share_the_mapped_shards_and_match_the_embedded_result(
    tmp_path, movielens_dir, reference_run, airflow_postgres_url, celery_broker_url
):
    data_root = tmp_path / "data"
    # Most texts come from the reference's cache; two of every ten (alternating shards) do not,
    # so both mapped shards have real encoding work.
    left_out = seed_embedding_cache(reference_run["cache"], data_root, leave_out_every=10)
    assert left_out > 2
    result_backend = "db+" + airflow_postgres_url.replace("+psycopg2", "")
    env = {
        **reduced_env(data_root, movielens_dir),
        "AIRFLOW__CELERY__BROKER_URL": celery_broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": result_backend,
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
        "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
        "AIRFLOW__CORE__PARALLELISM": "8",  # room for every training task at once (and the watch DAG's)
    }
    stack = AirflowStack(tmp_path / "airflow", DAGS_FOLDER, env, executor="CeleryExecutor", db_url=airflow_postgres_url)
    try:
        stack.start(workers=WORKERS, timeout=180)
        stack.wait_dag(WATCH, timeout=180)
        stack.api("PATCH", f"/dags/{WATCH}", json={"is_paused": True})  # no feedback in this test
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

        # one mapped training task per candidate, all queued at once, so free workers share them.
        # Which worker takes which is Celery's call: the reduced fits take about a second each, so
        # one worker can run all four while the other is still tearing down its last task (seen in
        # CI). The shards above show both workers taking mapped instances of one task.
        fits = [ti for ti in tis if ti["task_id"] == "train_candidate"]
        assert sorted(ti["map_index"] for ti in fits) == list(range(len(reference_run["report"]["candidates"])))
        queued = [datetime.fromisoformat(ti["queued_when"]).timestamp() for ti in fits]
        assert max(queued) - min(queued) < 2.0, {
            ti["map_index"]: ti["queued_when"] for ti in fits
        }  # one after another would be seconds apart

        # the same result as the reduced pipeline run in one process
        snapshot_id = stack.xcom(PIPELINE, run_id, "validate")
        assert snapshot_id == reference_run["report"]["snapshot_id"] == reference_run["decision"]["snapshot_id"]
        report = json.loads(Path(stack.xcom(PIPELINE, run_id, "evaluate")).read_text())
        assert report["best"] == reference_run["report"]["best"]
        assert metric_numbers(report) == metric_numbers(reference_run["report"])

        decision = stack.xcom(PIPELINE, run_id, "promote")
        assert decision["decision"] == reference_run["decision"]["decision"] == "promoted"
        settings = reduced_settings(data_root, movielens_dir)
        champion = MlflowClient(settings.tracking_uri).get_model_version_by_alias(
            settings.registry.model_name, "champion"
        )
        assert str(champion.version) == decision["version"] == "1"
        assert champion.tags["snapshot_id"] == snapshot_id
    finally:
        stack.stop()
