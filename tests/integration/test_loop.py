"""The walking skeleton's proof: the whole loop on real components, through the exact function
behind `make demo` (``devtools.demo.run_demo``) on a reduced ml-latest-small (first 40 users).

Real Airflow scheduler, dag-processor and api-server (SQLite, LocalExecutor) in a temporary
AIRFLOW_HOME, MLflow on SQLite, and ``bentoml serve`` in a subprocess. It shows each link:

1. the first run (triggered through the REST API with a token) registers version 1 as champion;
2. the service answers /recommend (and /search, /similar_items);
3. N events posted to the service's feedback endpoint start a new DAG run by themselves;
4. that run's snapshot holds the events;
5. version 2 is registered, and when the gate promotes it the service swaps to it.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from components.settings import load_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]
N_EVENTS = 5


def test_feedback_closes_the_loop(tmp_path, movielens_dir):
    from devtools.demo import run_demo

    data_root = tmp_path / "demo"
    shown = run_demo(
        data_root,
        source=str(movielens_dir),
        max_users=40,
        feedback_events=N_EVENTS,
        keep_running=False,
        airflow_port=0,
        mlflow_port=0,
        bento_port=0,
    )
    settings = load_settings(data_root=data_root)
    client = MlflowClient(settings.tracking_uri)

    # 1. version 1 is the first champion
    assert shown["first_version"] == "1" and shown["first_decision"] == "promoted"
    assert str(client.get_model_version(settings.registry.model_name, "1").tags["gate.decision"]) == "promoted"

    # 2. the service answered, excluding what the user had seen
    known = shown["known_user"]
    assert len(known["items"]) == 5 and known["source"] == "history" and known["model_version"] == "1"
    first_interactions = pd.read_parquet(settings.snapshots_dir / shown["first_snapshot_id"] / "interactions.parquet")
    seen = set(first_interactions.loc[first_interactions["user_id"] == shown["user"], "item_id"])
    assert not seen & {item["item_id"] for item in known["items"]}
    assert len(shown["search"]["items"]) == 5 and shown["new_item"]["items"]

    # 3. the posted feedback started a run with no human step
    assert shown["feedback_written"]["new"] == N_EVENTS
    assert shown["second_run"]["run_type"] == "asset_triggered"

    # 4. that run's snapshot holds the events
    snapshot_dir = settings.snapshots_dir / shown["second_snapshot_id"]
    interactions = pd.read_parquet(snapshot_dir / "interactions.parquet")
    assert set(shown["feedback_event_ids"]) <= set(interactions["event_id"])
    manifest = json.loads((snapshot_dir / "manifest.json").read_text())
    assert manifest["feedback_watermark"] >= N_EVENTS and manifest["parent"] == shown["first_snapshot_id"]

    # 5. version 2 is registered from that snapshot; the service serves the champion
    version = client.get_model_version(settings.registry.model_name, "2")
    assert version.tags["snapshot_id"] == shown["second_snapshot_id"]
    assert version.tags["gate.decision"] == shown["second_decision"]
    expected = "2" if shown["second_decision"] == "promoted" else "1"
    assert shown["final"]["model_version"] == expected
