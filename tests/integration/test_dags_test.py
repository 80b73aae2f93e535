"""`airflow dags test` runs the whole pipeline DAG in one process on the embedded SQLite default."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from components.settings import load_settings
from tests.harness import AirflowStack

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_airflow_dags_test_runs_the_pipeline(tmp_path, movielens_dir):
    from components.settings import PROJECT_ROOT

    data_root = tmp_path / "data"
    env = {
        "LMRECSYS_DATA_ROOT": str(data_root),
        "LMRECSYS_INGEST__SOURCE": str(movielens_dir),
        "LMRECSYS_INGEST__MAX_USERS": "20",
        "LMRECSYS_TRAIN__BOOTSTRAP_SAMPLES": "100",
        "LMRECSYS_AIRFLOW__EMBED_SHARDS": "2",
    }
    stack = AirflowStack(tmp_path / "airflow", PROJECT_ROOT / "dags", env)
    migrated = stack.airflow("db", "migrate")
    assert migrated.returncode == 0, migrated.stderr[-2000:]
    done = stack.airflow("dags", "test", "lm_recsys_pipeline", timeout=900)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    output = done.stdout + done.stderr
    assert "promoted" in output  # the promote task prints the gate's decision

    settings = load_settings(data_root=data_root)
    champion = MlflowClient(settings.tracking_uri).get_model_version_by_alias("recommender", "champion")
    assert str(champion.version) == "1" and champion.tags["gate.decision"] == "promoted"
    assert (settings.snapshots_dir / champion.tags["snapshot_id"] / "validation.json").exists()
