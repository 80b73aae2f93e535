"""The champion/challenger gate against a real MLflow registry on SQLite.

One module-scoped registry: version 1 passes the gate (with a real smoke test in a fresh
process) and stays champion; every other test registers its own challenger, which the gate
must reject, so the tests do not depend on their order.
"""

# Telemetry and network switches are set once for every test in tests/conftest.py.

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from components.engine import write_bundle
from components.models import LMContent
from components.registry import CHALLENGER, CHAMPION, configure, get_alias_version, log_bundle_model, promote_if_better
from components.settings import Settings, load_settings
from tests.harness import restored_mlflow_state
from tests.unit._model_fixtures import cluster_vectors, tiny_data

CHAMPION_METRIC = 0.30
POPULARITY_METRIC = 0.10


@dataclass
class Registry:
    settings: Settings
    client: MlflowClient
    bundle: Path
    champion_version: str
    first_decision: dict

    @property
    def name(self) -> str:
        return self.settings.registry.model_name

    def log(self) -> tuple[str, str]:
        with mlflow.start_run():
            return log_bundle_model(self.bundle, self.name)

    def tags(self, version: str) -> dict:
        return self.client.get_model_version(self.name, version).tags

    def alias(self, alias: str) -> str | None:
        found = get_alias_version(self.client, self.name, alias)
        return None if found is None else str(found.version)


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Registry:
    # configure() sets MLflow's process-wide tracking URI and experiment (and their environment
    # variables); put them back afterwards so no later test talks to this module's registry.
    with restored_mlflow_state():
        root = tmp_path_factory.mktemp("registry")
        settings = load_settings(data_root=root)
        client = configure(settings)
        data = tiny_data()
        model = LMContent({"whiten_dim": None}).fit(data, cluster_vectors())
        bundle = write_bundle(
            root / "bundle", model, data, cluster_vectors(), {"model_name": "lm_content", "id_type": "int"}
        )
        with mlflow.start_run():
            version, uri = log_bundle_model(bundle, settings.registry.model_name)
        decision = promote_if_better(client, settings, version, CHAMPION_METRIC, None, POPULARITY_METRIC, uri)
        yield Registry(settings, client, bundle, str(version), decision)


def test_configure_uses_sqlite_under_data_root(registry):
    assert registry.settings.tracking_uri.startswith("sqlite:///")
    assert (registry.settings.root / "mlflow.db").exists()
    experiment = registry.client.get_experiment_by_name(registry.settings.registry.experiment_name)
    assert experiment is not None
    assert (
        configure(registry.settings).get_experiment_by_name(registry.settings.registry.experiment_name).experiment_id
        == experiment.experiment_id
    )


def test_first_version_becomes_champion(registry):
    decision = registry.first_decision
    assert decision["decision"] == "promoted", decision
    assert decision["reason"] == "first champion"
    assert decision["smoke_test"].startswith("ok")
    assert registry.champion_version == "1"
    assert registry.alias(CHAMPION) == "1"
    tags = registry.tags("1")
    assert tags["gate.decision"] == "promoted"
    assert tags["gate.reason"] == "first champion"
    assert tags["gate.metric"] == registry.settings.registry.gate_metric
    assert float(tags["gate.challenger_metric"]) == pytest.approx(CHAMPION_METRIC)
    assert tags["gate.champion_metric"] == "none"
    assert tags["gate.previous_champion"] == "none"
    assert tags["gate.smoke_test"].startswith("ok")
    assert tags["gate.by"] == "gate"
    assert "gate.decided_at" in tags and tags["champion_since"] == tags["gate.decided_at"]


def test_promoting_the_champion_again_is_a_no_op(registry):
    decision = promote_if_better(
        registry.client,
        registry.settings,
        registry.champion_version,
        0.0,
        CHAMPION_METRIC,
        POPULARITY_METRIC,
        f"models:/{registry.name}/{registry.champion_version}",
        expected_champion=registry.champion_version,
    )
    assert decision["decision"] == "promoted" and "already the champion" in decision["reason"]
    assert registry.alias(CHAMPION) == registry.champion_version


def assert_rejected(registry: Registry, version: str, decision: dict, reason_part: str) -> None:
    assert decision["decision"] == "rejected", decision
    assert reason_part in decision["reason"]
    assert registry.alias(CHAMPION) == registry.champion_version
    assert registry.alias(CHALLENGER) == str(version)
    tags = registry.tags(version)
    assert tags["gate.decision"] == "rejected"
    assert reason_part in tags["gate.reason"]
    assert tags["gate.previous_champion"] == registry.champion_version
    assert "champion_since" not in tags


def test_worse_challenger_is_rejected(registry):
    version, uri = registry.log()
    assert str(version) != registry.champion_version
    decision = promote_if_better(
        registry.client,
        registry.settings,
        version,
        CHAMPION_METRIC - 0.05,
        CHAMPION_METRIC,
        POPULARITY_METRIC,
        uri,
        expected_champion=registry.champion_version,
    )
    assert_rejected(registry, version, decision, "below the champion's")
    assert decision["smoke_test"] == "skipped"
    assert float(registry.tags(version)["gate.champion_metric"]) == pytest.approx(CHAMPION_METRIC)


def test_challenger_that_does_not_beat_popularity_is_rejected(registry):
    version, uri = registry.log()
    decision = promote_if_better(
        registry.client,
        registry.settings,
        version,
        POPULARITY_METRIC,
        None,
        POPULARITY_METRIC,
        uri,
        expected_champion=registry.champion_version,
    )
    assert_rejected(registry, version, decision, "does not beat popularity")


def test_stale_comparison_is_rejected(registry):
    version, uri = registry.log()
    decision = promote_if_better(
        registry.client,
        registry.settings,
        version,
        CHAMPION_METRIC + 0.2,
        CHAMPION_METRIC,
        POPULARITY_METRIC,
        uri,
        expected_champion="999",
    )
    assert_rejected(registry, version, decision, "the champion moved from version 999")
    # no expected champion while one exists: the challenger was compared with nothing
    version, uri = registry.log()
    decision = promote_if_better(
        registry.client,
        registry.settings,
        version,
        CHAMPION_METRIC + 0.2,
        None,
        POPULARITY_METRIC,
        uri,
    )
    assert_rejected(registry, version, decision, "became champion after evaluation")


def logged_artifact_dir(registry: Registry, model_uri: str) -> Path:
    model_id = model_uri.rsplit("/", 1)[-1]
    location = registry.client.get_logged_model(model_id).artifact_location
    return Path(unquote(urlparse(location).path))


def test_challenger_with_a_broken_bundle_fails_the_smoke_test(registry):
    version, uri = registry.log()
    bundle_copy = logged_artifact_dir(registry, uri) / "artifacts" / "bundle"
    assert (bundle_copy / "model" / "state.npz").exists(), sorted(p.name for p in bundle_copy.parent.iterdir())
    (bundle_copy / "model" / "state.npz").unlink()
    decision = promote_if_better(
        registry.client,
        registry.settings,
        version,
        CHAMPION_METRIC + 0.1,
        CHAMPION_METRIC,
        POPULARITY_METRIC,
        uri,
        expected_champion=registry.champion_version,
    )
    assert_rejected(registry, version, decision, "smoke test failed")
    assert "state.npz" in decision["reason"]
    assert registry.tags(version)["gate.smoke_test"].startswith("smoke test failed")


@pytest.fixture
def restore_champion(registry):
    """For tests that may move the alias: put version 1 back afterwards, so order never matters."""
    yield
    registry.client.set_registered_model_alias(registry.name, CHAMPION, registry.champion_version)


@pytest.fixture
def passing_smoke_test(monkeypatch):
    """The smoke test itself is covered above; here only the metric comparison matters."""
    calls = []

    def fake(model_uri, tracking_uri, user_id=None, timeout_s=300):
        calls.append(model_uri)
        return True, "ok (stubbed)"

    monkeypatch.setattr("components.registry.smoke.smoke_test", fake)
    return calls


def test_better_challenger_is_promoted(registry, restore_champion, passing_smoke_test):
    version, uri = registry.log()
    decision = promote_if_better(
        registry.client,
        registry.settings,
        version,
        CHAMPION_METRIC,
        CHAMPION_METRIC,
        POPULARITY_METRIC,
        uri,
        expected_champion=registry.champion_version,
    )
    assert decision["decision"] == "promoted", decision
    assert decision["reason"] == f"at least as good as version {registry.champion_version}"
    assert passing_smoke_test == [uri]
    assert registry.alias(CHAMPION) == str(version)
    tags = registry.tags(version)
    assert tags["gate.decision"] == "promoted" and tags["gate.previous_champion"] == registry.champion_version
    assert "champion_since" in tags


def test_challenger_with_a_nan_metric_is_rejected(registry, restore_champion, passing_smoke_test):
    version, uri = registry.log()
    decision = promote_if_better(
        registry.client,
        registry.settings,
        version,
        float("nan"),
        CHAMPION_METRIC,
        POPULARITY_METRIC,
        uri,
        expected_champion=registry.champion_version,
    )
    assert decision["decision"] == "rejected"
