"""The at-scale backend: ``mlflow server`` on PostgreSQL, driven over HTTP by the pipeline stages.

A fresh PostgreSQL database holds the tracking and registry tables; artifacts are proxied by the
server. The real stages run on a reduced ml-latest-small (the first 40 users): the first run's
challenger becomes champion, a second run is compared with it on the same split, and a forced
promotion and a rollback are recorded. Everything is checked through the server's REST API.
"""

from __future__ import annotations

import pytest
import requests

from components import pipeline
from components.registry import champion_history, force_promote, rollback
from components.settings import load_settings
from tests.harness import MlflowServer, restored_mlflow_state

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def mlflow_server(postgres_url, tmp_path):
    with restored_mlflow_state():
        server = MlflowServer(postgres_url, tmp_path / "mlartifacts", tmp_path / "logs")
        try:
            yield server.wait_ready()
        finally:
            server.stop()


class Rest:
    """The few MLflow REST calls the assertions need (no client library in between)."""

    def __init__(self, base: str):
        self.base = base

    def get(self, endpoint: str, **params) -> dict:
        response = requests.get(f"{self.base}/api/2.0/mlflow/{endpoint}", params=params, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    def by_alias(self, alias: str) -> dict:
        return self.get("registered-models/alias", name="recommender", alias=alias)["model_version"]

    def artifacts(self, run_id: str, path: str) -> set[str]:
        return {entry["path"] for entry in self.get("artifacts/list", run_id=run_id, path=path).get("files", [])}


def tags_of(entity: dict) -> dict:
    return {tag["key"]: tag["value"] for tag in entity.get("tags", [])}


def test_register_and_promote_over_http_on_postgres(mlflow_server, movielens_dir, tmp_path):
    settings = load_settings(
        data_root=tmp_path / "data",
        ingest={"source": str(movielens_dir), "max_users": 40},
        train={"bootstrap_samples": 200},
        registry={"tracking_uri": mlflow_server.base},
    )
    rest = Rest(mlflow_server.base)
    snapshot_id = pipeline.stage_ingest(settings)
    pipeline.stage_validate(settings, snapshot_id)
    embeddings = pipeline.stage_embed(settings, snapshot_id)
    first_run = pipeline.stage_train(settings, snapshot_id, embeddings, "first")
    first = pipeline.stage_promote(
        settings, pipeline.stage_register(settings, pipeline.stage_evaluate(settings, first_run))
    )
    assert first["decision"] == "promoted" and first["reason"] == "first champion", first

    # the champion and its decision, as the server reports them
    champion = rest.by_alias("champion")
    assert champion["version"] == first["version"] == "1"
    version_tags = tags_of(champion)
    assert version_tags["gate.decision"] == "promoted" and version_tags["gate.by"] == "gate"
    assert version_tags["gate.smoke_test"].startswith("ok")
    assert version_tags["snapshot_id"] == snapshot_id and version_tags["run_id"] == first["run_id"]
    assert "best of" in champion["description"]

    # the run's lineage: tags, settings as params, metrics with intervals, every artifact
    run = rest.get("runs/get", run_id=first["run_id"])["run"]
    run_tags = {tag["key"]: tag["value"] for tag in run["data"]["tags"]}
    for key in (
        "snapshot_id",
        "encoder_id",
        "git_commit",
        "version.mlflow",
        "validation.success",
        "mlflow.note.content",
    ):
        assert run_tags.get(key), key
    assert run_tags["validation.success"] == "True"
    params = {param["key"]: param["value"] for param in run["data"]["params"]}
    assert (
        params["settings.ingest.max_users"] == "40" and params["settings.registry.tracking_uri"] == mlflow_server.base
    )
    metrics = {metric["key"] for metric in run["data"]["metrics"]}
    for model in ("popularity", "lm_content"):
        assert {
            f"{model}.test.hr_at_10",
            f"{model}.test.hr_at_10_low",
            f"{model}.test.hr_at_10_high",
            f"{model}.test.cold_hr_at_10",
        } <= metrics
    curve = rest.get("metrics/get-history", run_id=first["run_id"], metric_key="lm_content.test.hr_curve")["metrics"]
    assert sorted(point["step"] for point in curve) == list(range(1, 51))
    assert rest.artifacts(first["run_id"], "plots") == {
        "plots/metric_comparison.png",
        "plots/hr_at_k.png",
        "plots/cold_start.png",
    }
    assert {"evaluation/report.json", "evaluation/report.md"} <= rest.artifacts(first["run_id"], "evaluation")
    assert rest.artifacts(first["run_id"], "config") == {"config/settings.json"}
    assert rest.artifacts(first["run_id"], "snapshot") == {"snapshot/manifest.json"}
    assert rest.artifacts(first["run_id"], "validation") == {"validation/validation.json"}
    assert rest.artifacts(first["run_id"], "embeddings") == {"embeddings/manifest.json"}

    # a second run is compared with the champion on its own split; the decision is recorded either way
    second_run = pipeline.stage_train(settings, snapshot_id, embeddings, "second")
    report = pipeline.stage_evaluate(settings, second_run)
    second = pipeline.stage_promote(settings, pipeline.stage_register(settings, report))
    assert second["version"] == "2" and second["champion_version"] == "1"
    assert (
        tags_of(rest.get("model-versions/get", name="recommender", version="2")["model_version"])["gate.decision"]
        == second["decision"]
    )
    assert rest.by_alias("challenger")["version"] == "2"
    assert rest.by_alias("champion")["version"] == ("2" if second["decision"] == "promoted" else "1")

    # humans: force version 2 if the gate kept it out, then roll back to version 1
    if second["decision"] != "promoted":
        forced = force_promote(settings, "2", "integration test: force over HTTP")
        assert forced["changed"] and forced["by"] == "human"
    assert rest.by_alias("champion")["version"] == "2"
    back = rollback(settings, "integration test: roll back over HTTP")
    assert (back["version"], back["previous"]) == ("1", "2")
    assert rest.by_alias("champion")["version"] == "1"
    history = champion_history(settings)
    assert [(e["version"], e["previous"]) for e in history] == [("1", None), ("2", "1"), ("1", "2")]
    assert history[-1]["action"] == "rollback" and history[-1]["by"] == "human" and history[-1]["current"]
    log_tags = tags_of(rest.get("registered-models/get", name="recommender")["registered_model"])
    assert sorted(key for key in log_tags if key.startswith("champion_log.")) == [
        "champion_log.000001",
        "champion_log.000002",
        "champion_log.000003",
    ]
