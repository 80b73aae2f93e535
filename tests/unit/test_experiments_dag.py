"""The ``lm_recsys_experiments`` DAG decides online experiments where the service may not write the
registry: its task body (the real DAG file's, called as a worker would) against a real SQLite MLflow
registry and feedback store, beside a second decider acting at the same moment."""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

import pytest

from components.experiments import CHALLENGER, CHAMPION, evaluate, get_experiment, start_experiment, stop_experiment
from components.pipeline import decide_experiments
from components.registry import champion_history, configure, get_alias_version
from components.settings import load_settings
from tests.harness import restored_mlflow_state
from tests.unit._experiment_fixtures import fill, register_copies

DAG_FILE = Path(__file__).resolve().parents[2] / "dags" / "lm_recsys_experiments.py"
MIN_IMPRESSIONS = 50


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Settings over a registry with a champion (version 1) and a servable copy of it (version 2)."""
    with restored_mlflow_state():
        root = tmp_path_factory.mktemp("experiments-dag")
        settings = load_settings(data_root=root, experiments={"min_impressions": MIN_IMPRESSIONS})
        register_copies(settings, 2)
        yield settings


@pytest.fixture(scope="module")
def decide_task(tmp_path_factory):
    """The ``decide`` task's body from the DAG file, parsed as the dag-processor parses it."""
    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow-home")))
    spec = importlib.util.spec_from_file_location("lm_recsys_experiments_under_test", DAG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.lm_recsys_experiments().get_task("decide").python_callable


@pytest.fixture
def worker_env(registry, monkeypatch):
    """The environment a worker's task reads its settings from."""
    monkeypatch.setenv("LMRECSYS_DATA_ROOT", str(registry.data_root))
    monkeypatch.setenv("LMRECSYS_EXPERIMENTS__MIN_IMPRESSIONS", str(MIN_IMPRESSIONS))
    return registry


def _log(settings) -> list[tuple]:
    """The champion history's recorded entries (without the fields computed when it is read)."""
    return [(e.get("seq"), e["action"], e["version"], e["reason"]) for e in champion_history(settings)]


def _experiment_tags(settings, version: str) -> dict:
    tags = configure(settings).get_model_version(settings.registry.model_name, version).tags
    return {k: v for k, v in tags.items() if k.startswith("experiment.")}


def test_with_no_running_experiment_the_task_is_skipped(worker_env, decide_task):
    from airflow.sdk.exceptions import AirflowSkipException

    assert decide_experiments(worker_env) == []
    with pytest.raises(AirflowSkipException, match="no online experiment is running"):
        decide_task()


def test_an_undecided_experiment_is_left_running(worker_env, decide_task):
    settings = worker_env
    experiment = start_experiment(settings, "2", smoke=False)
    exp_id = experiment["experiment_id"]
    try:
        history = _log(settings)
        fill(settings, experiment, {CHAMPION: 0.05, CHALLENGER: 0.45}, MIN_IMPRESSIONS - 20, seed=0)
        [decision] = decide_task()  # a clear difference, but too few impressions per arm to decide
        assert decision["experiment_id"] == exp_id and decision["decision"] == "continue", decision
        assert decision["changed"] is False and "decisive units" in decision["reason"]
        assert get_experiment(settings, exp_id)["state"] == "running"
        assert str(get_alias_version(configure(settings), "recommender", "champion").version) == "1"
        assert _log(settings) == history
        assert _experiment_tags(settings, "2")["experiment.state"] == "running"
        assert "experiment.decision" not in _experiment_tags(settings, "2")
    finally:
        stop_experiment(settings, exp_id, "the next test starts its own")


def test_the_task_decides_once_beside_the_service_deciding_at_the_same_moment(worker_env, decide_task):
    settings = worker_env
    experiment = start_experiment(settings, "2", smoke=False)
    exp_id = experiment["experiment_id"]
    fill(settings, experiment, {CHAMPION: 0.05, CHALLENGER: 0.45}, 300, seed=1)
    history = _log(settings)

    # The DAG's task and a service replica with auto_decide (Arms._decide calls evaluate) act together.
    start, results, errors = threading.Barrier(2), {}, []

    def run(name, call):
        try:
            start.wait(timeout=30)
            results[name] = call()
        except Exception as exc:  # reported below, with the other decider's result
            errors.append((name, exc))

    deciders = [
        threading.Thread(target=run, args=("dag", decide_task)),
        threading.Thread(target=run, args=("service", lambda: evaluate(settings, experiment)["decision"])),
    ]
    for thread in deciders:
        thread.start()
    for thread in deciders:
        thread.join(timeout=120)
    assert not errors and set(results) == {"dag", "service"}, (errors, results)
    [by_dag], by_service = results["dag"], results["service"]
    assert by_dag["experiment_id"] == exp_id and by_dag["decision"] == "promoted", by_dag
    assert by_service["state"] == "promoted", by_service
    assert [by_dag["changed"], by_service["changed"]].count(True) == 1, (by_dag, by_service)  # decided once

    client = configure(settings)
    assert str(get_alias_version(client, "recommender", "champion").version) == "2"
    [entry] = champion_history(settings)[len(history) :]
    assert entry["action"] == "promoted" and entry["version"] == "2" and entry["by"] == "experiment", entry
    assert entry["reason"].startswith(f"online experiment {exp_id}: the challenger is better")
    record = get_experiment(settings, exp_id)
    assert record["state"] == "promoted" and record["reason"] == entry["reason"]
    assert record["decision"]["sample"] >= MIN_IMPRESSIONS
    if by_dag["changed"]:
        assert by_dag["reason"] == record["reason"]
    else:
        assert by_dag["reason"] == "already promoted; nothing was changed"
    for version, role in (("1", "champion"), ("2", "challenger")):
        tags = _experiment_tags(settings, version)
        assert tags["experiment.id"] == exp_id and tags["experiment.role"] == role
        assert tags["experiment.state"] == tags["experiment.decision"] == "promoted"
        assert tags["experiment.reason"] == record["reason"] and float(tags["experiment.p_value"]) < 0.05
    decided = _experiment_tags(settings, "2")

    # the next scheduled run finds nothing running: skipped, and nothing changes
    from airflow.sdk.exceptions import AirflowSkipException

    with pytest.raises(AirflowSkipException):
        decide_task()
    assert decide_experiments(settings) == []
    assert _log(settings) == history + [(entry.get("seq"), "promoted", "2", entry["reason"])]
    assert get_experiment(settings, exp_id) == record
    assert _experiment_tags(settings, "2") == decided
    assert str(get_alias_version(client, "recommender", "champion").version) == "2"
