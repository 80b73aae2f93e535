"""Champion history, rollback, forced promotion and logged settings, on a real MLflow registry.

One SQLite registry per module (creating it costs seconds); every test registers its own model
name, so each starts with an empty history and the tests do not depend on their order. The
smoke test is stubbed where only the alias bookkeeping matters; the gate test module and the
force-refusal test here run it for real.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from components.engine import write_bundle
from components.errors import RegistryError
from components.evaluation.plots import PLOT_FILES, write_report_plots
from components.models import LMContent
from components.registry import (
    CHALLENGER,
    CHAMPION,
    champion_history,
    configure,
    flatten_params,
    force_promote,
    get_alias_version,
    list_versions,
    log_bundle_model,
    promote_if_better,
    promotion_lock_target,
    rollback,
    settings_for_logging,
)
from components.settings import Settings, load_settings
from tests.harness import restored_mlflow_state
from tests.unit._model_fixtures import cluster_vectors, tiny_data

POPULARITY = 0.10
_names = itertools.count(1)


@dataclass
class Model:
    """One registered model in the shared registry, with helpers to add and inspect versions."""

    settings: Settings
    client: MlflowClient
    bundle: Path

    @property
    def name(self) -> str:
        return self.settings.registry.model_name

    def log(self) -> tuple[str, str]:
        with mlflow.start_run():
            version, uri = log_bundle_model(self.bundle, self.name)
        return str(version), uri

    def gate(
        self, metric: float, champion_metric: float | None = None, expected: str | None = None
    ) -> tuple[str, dict]:
        version, uri = self.log()
        return version, promote_if_better(
            self.client, self.settings, version, metric, champion_metric, POPULARITY, uri, expected_champion=expected
        )

    def alias(self, alias: str = CHAMPION) -> str | None:
        found = get_alias_version(self.client, self.name, alias)
        return None if found is None else str(found.version)

    def tags(self, version: str) -> dict:
        return self.client.get_model_version(self.name, version).tags


@pytest.fixture(scope="module")
def shared_registry(tmp_path_factory):
    with restored_mlflow_state():
        root = tmp_path_factory.mktemp("history")
        configure(load_settings(data_root=root))
        data = tiny_data()
        model = LMContent({"whiten_dim": None}).fit(data, cluster_vectors())
        bundle = write_bundle(
            root / "bundle", model, data, cluster_vectors(), {"model_name": "lm_content", "id_type": "int"}
        )
        yield root, bundle


@pytest.fixture
def model(shared_registry) -> Model:
    """A fresh registered-model name in the shared registry."""
    root, bundle = shared_registry
    settings = load_settings(data_root=root, registry={"model_name": f"history-{next(_names)}"})
    return Model(settings, configure(settings), bundle)


@pytest.fixture
def passing_smoke_test(monkeypatch):
    """The smoke test has its own tests; here only the alias bookkeeping matters."""
    monkeypatch.setattr("components.registry.smoke.smoke_test", lambda *args, **kwargs: (True, "ok (stubbed)"))


def promote_chain(model: Model, count: int) -> list[str]:
    """Register ``count`` versions that each pass the gate in turn; returns their numbers."""
    versions, champion = [], None
    for step in range(count):
        version, decision = model.gate(
            0.30 + 0.01 * step, None if champion is None else 0.30 + 0.01 * (step - 1), champion
        )
        assert decision["decision"] == "promoted", decision
        versions.append(version)
        champion = version
    return versions


def test_empty_history_and_rollback_without_a_champion(model):
    assert champion_history(model.settings) == []
    assert list_versions(model.settings) == []
    with pytest.raises(RegistryError, match="has no champion"):
        rollback(model.settings, "nothing to undo")


def test_history_records_every_gate_promotion_in_order(model, passing_smoke_test):
    v1, v2, v3 = promote_chain(model, 3)
    history = champion_history(model.settings)
    assert [e["seq"] for e in history] == [1, 2, 3]
    assert [e["version"] for e in history] == [v1, v2, v3]
    assert [e["previous"] for e in history] == [None, v1, v2]
    assert {e["action"] for e in history} == {"promoted"} and {e["by"] for e in history} == {"gate"}
    assert history[0]["reason"] == "first champion"
    assert history[1]["reason"] == f"at least as good as version {v1}"
    assert history[1]["challenger_metric"] == "0.310000" and history[1]["champion_metric"] == "0.300000"
    assert [e["until"] for e in history] == [history[1]["at"], history[2]["at"], None]
    assert [e["current"] for e in history] == [False, False, True]
    assert all(e["recorded"] for e in history)
    # the version's own tags agree with the log
    assert model.tags(v3)["champion_since"] == history[2]["at"] == model.tags(v3)["gate.decided_at"]


def test_rejections_do_not_enter_the_champion_history(model, passing_smoke_test):
    (v1,) = promote_chain(model, 1)
    v2, decision = model.gate(0.20, 0.30, v1)
    assert decision["decision"] == "rejected"
    assert [e["version"] for e in champion_history(model.settings)] == [v1]
    rows = {row["version"]: row for row in list_versions(model.settings)}
    assert rows[v1]["decision"] == "promoted" and rows[v1]["aliases"] == [CHAMPION]
    assert rows[v2]["decision"] == "rejected" and rows[v2]["aliases"] == [CHALLENGER]
    assert "below the champion's" in rows[v2]["reason"]


def test_rollback_walks_back_along_the_champion_chain(model, passing_smoke_test):
    v1, v2, v3 = promote_chain(model, 3)
    first = rollback(model.settings, "CTR dropped after v3")
    assert (first["version"], first["previous"], first["action"], first["by"]) == (v2, v3, "rollback", "human")
    assert model.alias() == v2
    assert model.tags(v2)["human.action"] == "rollback" and model.tags(v2)["human.reason"] == "CTR dropped after v3"
    assert model.tags(v3)["rolled_back_reason"] == "CTR dropped after v3"
    second = rollback(model.settings, "v2 is no better")
    assert (second["version"], second["previous"]) == (v1, v2)
    assert model.alias() == v1
    with pytest.raises(RegistryError, match="no previous champion"):
        rollback(model.settings, "one more")
    assert model.alias() == v1
    history = champion_history(model.settings)
    assert [(e["action"], e["version"]) for e in history] == [
        ("promoted", v1),
        ("promoted", v2),
        ("promoted", v3),
        ("rollback", v2),
        ("rollback", v1),
    ]
    assert history[-1]["reason"] == "v2 is no better" and history[-1]["current"]
    # a new champion after the rollbacks: rolling back returns to v1, not to the rolled-back ones
    v4, decision = model.gate(0.40, 0.30, v1)
    assert decision["decision"] == "promoted"
    assert rollback(model.settings, "v4 misbehaves")["version"] == v1


def test_rollback_needs_a_reason(model, passing_smoke_test):
    promote_chain(model, 2)
    with pytest.raises(ValueError, match="needs a reason"):
        rollback(model.settings, "   ")


def test_force_promote_is_recorded_as_a_human_decision(model, passing_smoke_test):
    (v1,) = promote_chain(model, 1)
    v2, decision = model.gate(0.05, 0.30, v1)
    assert decision["decision"] == "rejected"
    event = force_promote(model.settings, v2, "the offline metric under-rates it; A/B test says otherwise")
    assert event["changed"] and (event["version"], event["previous"], event["action"], event["by"]) == (
        v2,
        v1,
        "forced",
        "human",
    )
    assert model.alias() == v2
    tags = model.tags(v2)
    assert tags["gate.decision"] == "rejected"  # the gate's own verdict is kept
    assert tags["human.action"] == "forced" and tags["human.by"] == "human" and "A/B test" in tags["human.reason"]
    assert tags["champion_since"] == event["at"]
    assert force_promote(model.settings, v2, "again")["changed"] is False
    with pytest.raises(RegistryError, match="no version 999"):
        force_promote(model.settings, 999, "does not exist")
    with pytest.raises(ValueError, match="needs a reason"):
        force_promote(model.settings, v1, "")
    assert rollback(model.settings, "undo the forced promotion")["version"] == v1
    assert [e["action"] for e in champion_history(model.settings)] == ["promoted", "forced", "rollback"]


def test_force_promote_refuses_a_version_that_cannot_load(model, passing_smoke_test, monkeypatch):
    (v1,) = promote_chain(model, 1)
    monkeypatch.undo()  # the real smoke test, in a fresh process, from here on
    v2, uri = model.log()
    model_id = model.client.get_model_version(model.name, v2).source.rsplit("/", 1)[-1]
    artifacts = Path(unquote(urlparse(model.client.get_logged_model(model_id).artifact_location).path))
    (artifacts / "artifacts" / "bundle" / "catalogue.parquet").unlink()
    with pytest.raises(RegistryError, match="refusing to force version"):
        force_promote(model.settings, v2, "urgent")
    assert model.alias() == v1
    assert [e["version"] for e in champion_history(model.settings)] == [v1]


def test_alias_moved_by_hand_is_shown_then_recorded(model, passing_smoke_test):
    v1, v2 = promote_chain(model, 2)
    model.client.set_registered_model_alias(model.name, CHAMPION, v1)  # e.g. through the MLflow UI
    history = champion_history(model.settings)
    assert history[-1]["action"] == "untracked" and history[-1]["version"] == v1 and history[-1]["recorded"] is False
    assert history[-1]["current"] and not history[-2]["current"]
    event = rollback(model.settings, "back to the last recorded champion")
    assert (event["version"], event["previous"]) == (v2, v1)
    history = champion_history(model.settings)
    assert [(e["action"], e["version"], e["recorded"]) for e in history] == [
        ("promoted", v1, True),
        ("promoted", v2, True),
        ("untracked", v1, True),
        ("rollback", v2, True),
    ]


def test_challenger_never_moves_back_and_orphans_are_marked(model, passing_smoke_test):
    (v1,) = promote_chain(model, 1)
    orphan, orphan_uri = model.log()  # its run died before the gate
    v3, decision = model.gate(0.35, 0.30, v1)
    assert decision["decision"] == "promoted"
    assert model.tags(orphan)["gate.decision"] == "abandoned"
    assert model.alias(CHALLENGER) == v3
    # the old run resumes after all: its decision replaces the mark, the challenger stays newest
    late = promote_if_better(
        model.client, model.settings, orphan, 0.50, 0.30, POPULARITY, orphan_uri, expected_champion=v1
    )
    assert late["decision"] == "rejected" and f"moved from version {v1} to {v3}" in late["reason"]
    assert model.tags(orphan)["gate.decision"] == "rejected"
    assert model.alias(CHALLENGER) == v3 and model.alias() == v3


def test_racing_forced_promotions_leave_one_champion_and_a_gap_free_log(model, passing_smoke_test):
    (v1,) = promote_chain(model, 1)
    versions = [model.log()[0] for _ in range(4)]
    start = threading.Barrier(len(versions))
    errors = []

    def force(version):
        try:
            start.wait()
            force_promote(model.settings, version, f"race {version}")
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=force, args=(v,)) for v in versions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    history = champion_history(model.settings)
    assert [e["seq"] for e in history] == list(range(1, len(versions) + 2))
    assert sorted(e["version"] for e in history[1:]) == sorted(versions)
    for before, after in zip(history, history[1:]):
        assert after["previous"] == before["version"], history  # each move saw the one before it
    assert model.alias() == history[-1]["version"]


def test_settings_are_logged_without_secrets(tmp_path):
    settings = load_settings(
        data_root=tmp_path,
        serving={"admin_token": "s3cret-token"},
        feedback={"url": "postgresql://app:hunter2@db.example:5432/feedback"},
        train={"model_configs": {"lm_content": {"whiten_dim": 64}}, "candidates": ["popularity", "lm_content"]},
    )
    logged = settings_for_logging(settings)
    text = repr(logged)
    assert "s3cret-token" not in text and "hunter2" not in text
    assert logged["serving"]["admin_token"] == "***"
    assert logged["feedback"]["url"] == "postgresql://app:***@db.example:5432/feedback"
    params = flatten_params(logged)
    assert params["train.seed"] == "42"
    assert params["train.model_configs.lm_content.whiten_dim"] == "64"
    assert params["train.candidates"] == '["popularity", "lm_content"]'
    assert all(len(value) <= 500 for value in params.values())


def test_secret_settings_are_masked_by_type_and_still_used(tmp_path):
    """URL settings are SecretStr: their passwords never reach a log or MLflow, the rest of the URL does."""
    settings = Settings(
        data_root=tmp_path,
        registry={
            "tracking_uri": "postgresql://app:hunter2@db.example:5432/mlflow",
            "lock_url": "postgresql://locker:s3cret@db.example/locks",
        },
        feedback={"url": "postgresql://fb:pa55@db.example/feedback"},
        serving={"admin_token": "a" * 40},
    )
    assert "hunter2" not in repr(settings) and "pa55" not in repr(settings) and "s3cret" not in repr(settings)
    logged = settings_for_logging(settings)
    assert not {"hunter2", "s3cret", "pa55", "a" * 40} & set(flatten_params(logged).values())
    assert "hunter2" not in repr(logged) and "s3cret" not in repr(logged) and "pa55" not in repr(logged)
    assert logged["registry"]["tracking_uri"] == "postgresql://app:***@db.example:5432/mlflow"
    assert logged["registry"]["lock_url"] == "postgresql://locker:***@db.example/locks"
    assert logged["resolved"]["tracking_uri"] == "postgresql://app:***@db.example:5432/mlflow"
    assert logged["serving"]["admin_token"] == "***" and logged["registry"]["model_name"] == "recommender"
    assert settings.tracking_uri == "postgresql://app:hunter2@db.example:5432/mlflow"  # still usable
    assert settings.feedback_url == "postgresql://fb:pa55@db.example/feedback"
    assert promotion_lock_target(settings) == "postgresql://locker:s3cret@db.example/locks"
    unset = settings_for_logging(Settings(data_root=tmp_path))
    assert unset["registry"]["lock_url"] is None and unset["resolved"]["tracking_uri"].startswith("sqlite:///")


def _hand_report() -> dict:
    def result(hr: float) -> dict:
        test = {"cold_users": 3.0, "coverage_at_10": 0.5}
        for index, key in enumerate(("hr_at_10", "ndcg_at_10", "mrr_at_10", "recall_at_20")):
            value = hr / (index + 1)
            test.update({key: value, key + "_low": value * 0.5, key + "_high": value * 1.5, "cold_" + key: value / 2})
        return {
            "val": {"ndcg_at_10": hr / 2},
            "test": test,
            "test_curve": [min(1.0, hr * k / 10) for k in range(1, 51)],
        }

    return {
        "snapshot_id": "snap-hand",
        "users": 6,
        "items": 8,
        "gate_metric": "ndcg_at_10",
        "best": "lm_content",
        "candidates": {"popularity": result(0.1), "lm_content": result(0.3)},
        "champion": {"version": "1", "model": "popularity", **result(0.2)},
    }


def test_report_plots_are_written_as_png(tmp_path):
    paths = write_report_plots(_hand_report(), tmp_path / "plots")
    assert {path.name for path in paths.values()} == set(PLOT_FILES.values())
    for path in paths.values():
        content = path.read_bytes()
        assert content[:8] == b"\x89PNG\r\n\x1a\n" and len(content) > 5000, path
    assert not [p for p in (tmp_path / "plots").iterdir() if p.name.startswith(".")]  # no temporary files left
