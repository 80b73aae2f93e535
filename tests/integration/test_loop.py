"""The walking skeleton's proof: the whole loop on real components.

A real Airflow scheduler, dag-processor and api-server (SQLite, LocalExecutor), MLflow on
SQLite, and ``bentoml serve`` in a subprocess, on a reduced ml-latest-small (the first 60 users):

1. the first run registers version 1 as champion;
2. the service answers /recommend;
3. N events posted to /feedback start a new DAG run by themselves;
4. that run's snapshot holds the events;
5. version 2 is registered, and the service swaps to the new champion.
"""

from __future__ import annotations

import json
import time
import uuid

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from components.settings import load_settings
from components.snapshots import list_snapshots
from harness import AirflowStack, BentoServer, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
N_EVENTS = 5


def test_feedback_closes_the_loop(tmp_path, movielens_dir):
    from conftest import PROJECT_ROOT

    data_root = tmp_path / "data"
    lm_env = {
        "LMRECSYS_DATA_ROOT": str(data_root),
        "LMRECSYS_INGEST__SOURCE": str(movielens_dir),
        "LMRECSYS_INGEST__MAX_USERS": "60",
        "LMRECSYS_FEEDBACK__TRIGGER_MIN_EVENTS": str(N_EVENTS),
        "LMRECSYS_WATCH_INTERVAL_S": "8",
        "LMRECSYS_PIPELINE_CRON": "0 0 1 1 *",
        "LMRECSYS_EMBED_SHARDS": "2",
        "LMRECSYS_SERVING__POLL_INTERVAL_S": "2",
        "LMRECSYS_TRAIN__BOOTSTRAP_SAMPLES": "200",
    }
    settings = load_settings(data_root=data_root)
    stack = AirflowStack(tmp_path / "airflow", PROJECT_ROOT / "dags", lm_env)
    server = None
    try:
        stack.start()
        stack.wait_dag("lm_recsys_pipeline")
        stack.wait_dag("lm_recsys_feedback_watch")

        # 1. the first run, started through the REST API, registers version 1 as champion
        first = stack.trigger("lm_recsys_pipeline")
        assert stack.wait_run("lm_recsys_pipeline", first, timeout=900) == "success", _task_states(stack, first)
        client = MlflowClient(settings.tracking_uri)
        champion = client.get_model_version_by_alias("recommender", "champion")
        assert str(champion.version) == "1"
        assert champion.tags["gate.decision"] == "promoted"

        # 2. the service answers /recommend
        server = BentoServer(lm_env, tmp_path / "bento", PROJECT_ROOT).wait_ready()
        response = server.post("/recommend", {"user_id": 1, "k": 5})
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["items"]) == 5 and body["model_version"] == "1"
        seen = set(pd.read_parquet(list_snapshots(settings.snapshots_dir)[0].path / "interactions.parquet").query("user_id == 1")["item_id"])
        assert not seen & {item["item_id"] for item in body["items"]}

        # 3. N feedback events start a new pipeline run with no human step
        runs_before = {run["dag_run_id"] for run in stack.runs("lm_recsys_pipeline")}
        catalogue = pd.read_parquet(list_snapshots(settings.snapshots_dir)[0].path / "items.parquet")["item_id"].tolist()
        event_ids = [f"loop-{uuid.uuid4().hex}" for _ in range(N_EVENTS)]
        for event_id, item_id in zip(event_ids, catalogue[-N_EVENTS:]):
            posted = server.post("/feedback", {"user_id": 7, "item_id": item_id, "event": "like", "event_id": event_id})
            assert posted.status_code == 200, posted.text

        def new_run():
            fresh = [run for run in stack.runs("lm_recsys_pipeline") if run["dag_run_id"] not in runs_before]
            return fresh[0] if fresh else None

        second = wait_for(new_run, 240, interval=2, what="a feedback-triggered pipeline run", procs=stack.procs)
        assert second["run_type"] == "asset_triggered", second
        assert stack.wait_run("lm_recsys_pipeline", second["dag_run_id"], timeout=900) == "success", _task_states(stack, second["dag_run_id"])

        # 4. that run's snapshot holds the events
        snapshot_id = stack.xcom("lm_recsys_pipeline", second["dag_run_id"], "validate")
        snapshot_dir = settings.snapshots_dir / snapshot_id
        manifest = json.loads((snapshot_dir / "manifest.json").read_text())
        interactions = pd.read_parquet(snapshot_dir / "interactions.parquet")
        assert set(event_ids) <= set(interactions["event_id"])
        assert manifest["feedback_watermark"] >= N_EVENTS
        assert manifest["parent"] is not None

        # 5. version 2 is registered (and, being as good on the same split, promoted and served)
        versions = {str(v.version): v for v in client.search_model_versions("name='recommender'")}
        assert "2" in versions and versions["2"].tags["snapshot_id"] == snapshot_id
        assert versions["2"].tags["gate.decision"] in ("promoted", "rejected")
        if versions["2"].tags["gate.decision"] == "promoted":
            wait_for(lambda: server.post("/recommend", {"user_id": 1, "k": 5}).json()["model_version"] == "2", 60, what="the service to swap to version 2", procs=[server])
    finally:
        if server is not None:
            server.stop()
        stack.stop()


def _task_states(stack: AirflowStack, run_id: str) -> str:
    try:
        states = {ti["task_id"]: ti["state"] for ti in stack.task_instances("lm_recsys_pipeline", run_id)}
    except Exception as exc:  # noqa: BLE001 - diagnostics only
        states = {"error": str(exc)}
    logs = "\n".join(f"--- {p.name}\n{p.tail(30)}" for p in stack.procs)
    return f"task states: {states}\n{logs}"
