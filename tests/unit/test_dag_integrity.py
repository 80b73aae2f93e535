"""DAG integrity: every DAG file imports fast with no heavy imports, carries docs, tags and
retries, and wires exactly the expected task graph."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"
HEAVY = ("torch", "transformers", "mlflow", "great_expectations", "bentoml", "pandas", "components")

EXPECTED_PIPELINE = {
    "ingest": set(),
    "validate": {"ingest"},
    "plan_embedding_shards": {"validate"},
    "embed_shard": {"plan_embedding_shards", "validate"},
    "embed": {"embed_shard", "validate"},
    "plan_training": {"embed", "validate"},
    "train_candidate": {"plan_training", "embed", "validate"},
    "evaluate": {"train_candidate"},
    "register": {"evaluate"},
    "promote": {"register"},
}
EXPECTED_WATCH = {"check_feedback": set()}
EXPECTED_EXPERIMENTS = {"decide": set()}
DAG_IDS = ["lm_recsys_pipeline", "lm_recsys_feedback_watch", "lm_recsys_experiments"]


@pytest.fixture(scope="module")
def dag_bag(tmp_path_factory):
    import os

    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow-home")))
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}, bag.import_errors
    return bag


@pytest.mark.parametrize("dag_file", sorted(p.name for p in DAGS.glob("*.py")))
def test_dag_file_imports_fast_without_heavy_modules(dag_file):
    # A fresh interpreter: import airflow.sdk first (the scheduler has it loaded already), then time the file.
    code = (
        "import importlib.util, sys, time\n"
        "import airflow.sdk\n"
        "before = set(sys.modules)\n"
        f"spec = importlib.util.spec_from_file_location('dag_under_test', {str(DAGS / dag_file)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "started = time.perf_counter(); spec.loader.exec_module(module); took = time.perf_counter() - started\n"
        # the settings module (pydantic only) is how a DAG reads its schedule; nothing else of ours
        f"heavy = sorted(m for m in set(sys.modules) - before if m.split('.')[0] in {HEAVY!r}"
        " and m not in ('components', 'components.settings'))\n"
        "print(took); print(','.join(heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    took, heavy = (
        done.stdout.strip().splitlines()[-2:] if done.stdout.strip().count("\n") else (done.stdout.strip(), "")
    )
    assert float(took) < 2.0, f"{dag_file} took {took}s to import"
    assert heavy == "", f"{dag_file} imports heavy modules at module level: {heavy}"


def test_file_name_matches_dag_id(dag_bag):
    assert {p.stem for p in DAGS.glob("*.py")} == set(dag_bag.dags)


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_docs_tags_retries_and_no_overlap(dag_bag, dag_id):
    dag = dag_bag.dags[dag_id]
    assert "lm-recsys" in dag.tags and len(dag.tags) >= 2
    assert dag.doc_md and dag.doc_md.strip().startswith(f"# {dag_id}")
    assert dag.max_active_runs == 1
    for task in dag.tasks:
        assert task.retries >= 1, f"{dag_id}.{task.task_id} has no retries"


def test_long_pipeline_tasks_have_timeouts(dag_bag):
    dag = dag_bag.dags["lm_recsys_pipeline"]
    for task_id in ("validate", "embed_shard", "embed", "train_candidate", "evaluate"):
        assert dag.get_task(task_id).execution_timeout is not None, task_id
    assert dag.get_task("ingest").retry_exponential_backoff


@pytest.mark.parametrize(
    ("dag_id", "expected"),
    [
        ("lm_recsys_pipeline", EXPECTED_PIPELINE),
        ("lm_recsys_feedback_watch", EXPECTED_WATCH),
        ("lm_recsys_experiments", EXPECTED_EXPERIMENTS),
    ],
)
def test_task_graph(dag_bag, dag_id, expected):
    dag = dag_bag.dags[dag_id]
    assert {task.task_id: set(task.upstream_task_ids) for task in dag.tasks} == expected


def test_each_candidate_trains_in_a_mapped_task(dag_bag):
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    train = dag_bag.dags["lm_recsys_pipeline"].get_task("train_candidate")
    assert isinstance(train, MappedOperator)


def test_pipeline_runs_on_feedback_or_schedule(dag_bag):
    pipeline = dag_bag.dags["lm_recsys_pipeline"]
    watch = dag_bag.dags["lm_recsys_feedback_watch"]
    assert type(pipeline.timetable).__name__ == "AssetOrTimeSchedule"
    outlets = {asset.name for asset in watch.get_task("check_feedback").outlets}
    assert outlets == {"lmrecsys_feedback"}
    assert "lmrecsys_feedback" in repr(pipeline.timetable.asset_condition)


def test_experiments_are_decided_on_their_own_schedule(dag_bag):
    """Every ``experiments.decide_interval_s`` (300 s), never two runs at once, no catch-up of missed
    intervals, and no asset: deciding does not start or wait for the pipeline."""
    import datetime

    dag = dag_bag.dags["lm_recsys_experiments"]
    assert type(dag.timetable).__name__ == "DeltaTriggerTimetable"
    assert dag.timetable.delta == datetime.timedelta(seconds=300)
    assert dag.max_active_runs == 1 and dag.catchup is False
    decide = dag.get_task("decide")
    assert decide.execution_timeout is not None and not decide.outlets


@pytest.mark.parametrize("now", ["2026-11-28T00:30:00+00:00", "2026-11-28T01:39:00+00:00", "2026-11-28T13:00:00+00:00"])
def test_first_scheduled_run_waits_for_the_next_cron_time(dag_bag, monkeypatch, now):
    """A new deployment must not start a run by itself. Airflow's default still starts one at once
    when the DAG appears within 10% of the cron period after a cron time (for @daily: until 02:24 UTC)."""
    import datetime

    import airflow.timetables.trigger as trigger
    from airflow.timetables.base import TimeRestriction

    moment = datetime.datetime.fromisoformat(now)
    monkeypatch.setattr(trigger, "utcnow", lambda: moment)
    from airflow.serialization.decoders import decode_timetable
    from airflow.serialization.encoders import encode_timetable

    # What the scheduler uses: the DAG's timetable after serialisation.
    timetable = decode_timetable(encode_timetable(dag_bag.dags["lm_recsys_pipeline"].timetable))
    first = timetable.next_dagrun_info(
        last_automated_data_interval=None, restriction=TimeRestriction(earliest=None, latest=None, catchup=False)
    )
    assert first is not None and first.run_after > moment, f"a run would start at once: {first}"


def test_schedule_and_watch_interval_come_from_settings():
    """The DAG files read their schedule through the settings object (``LMRECSYS_AIRFLOW__*``)."""
    code = (
        "import importlib.util\n"
        "def load(name):\n"
        f"    spec = importlib.util.spec_from_file_location(name, {str(DAGS)!r} + '/' + name + '.py')\n"
        "    module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); return module\n"
        "print(load('lm_recsys_pipeline').SCHEDULE, load('lm_recsys_feedback_watch').INTERVAL_S,"
        " load('lm_recsys_experiments').INTERVAL_S)\n"
    )
    env = {
        **os.environ,
        "LMRECSYS_AIRFLOW__PIPELINE_CRON": "15 3 * * 1",
        "LMRECSYS_AIRFLOW__WATCH_INTERVAL_S": "7.5",
        "LMRECSYS_EXPERIMENTS__DECIDE_INTERVAL_S": "90",
    }
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["15", "3", "*", "*", "1", "7.5", "90.0"]
    bad = {**env, "LMRECSYS_AIRFLOW__WATCH_INTERVAL_S": "-1"}
    failed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=bad)
    assert failed.returncode != 0 and "watch_interval_s" in failed.stderr


def test_a_bad_decide_interval_stops_the_experiments_dag_file(dag_bag, monkeypatch):
    """Parsed in this process (Airflow is loaded already): a non-positive interval is an import error
    naming the setting, not a DAG that runs all the time."""
    import importlib.util

    from pydantic import ValidationError

    monkeypatch.setenv("LMRECSYS_EXPERIMENTS__DECIDE_INTERVAL_S", "0")
    spec = importlib.util.spec_from_file_location("bad_interval", DAGS / "lm_recsys_experiments.py")
    with pytest.raises(ValidationError, match="decide_interval_s"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
