"""Safe model artifacts: versions are logged from code (nothing pickled) with a signature, and
every load checks the bundle against the SHA-256 recorded in the registry at registration.

One module-scoped registry on SQLite (real MLflow); each test that tampers with a bundle
registers its own version, so the tests do not depend on their order.
"""

# Telemetry and network switches are set once for every test in tests/conftest.py.

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from components.engine import write_bundle
from components.errors import ChampionUnreadable, RegistryError
from components.models import LMContent
from components.registry import (
    CHAMPION,
    RecommenderPyfunc,
    configure,
    force_promote,
    load_champion_engine,
    log_bundle_model,
    promote_if_better,
    rollback,
)
from components.registry.history import move_champion
from components.registry.integrity import BUNDLE_HASH_TAG, BundleMismatch, bundle_digests, bundle_sha256, check_bundle
from components.registry.pyfunc import COLUMNS, load_version_engine
from components.settings import Settings, load_settings
from tests.harness import restored_mlflow_state
from tests.unit._model_fixtures import cluster_vectors, tiny_data


@dataclass
class Registry:
    settings: Settings
    client: MlflowClient
    bundle: Path

    @property
    def name(self) -> str:
        return self.settings.registry.model_name

    def log(self) -> str:
        with mlflow.start_run():
            version, _ = log_bundle_model(self.bundle, self.name)
        return version

    def model_dir(self, version: str) -> Path:
        """The version's model folder in the local artifact store."""
        model_id = self.client.get_model_version(self.name, version).source.rsplit("/", 1)[-1]
        return Path(unquote(urlparse(self.client.get_logged_model(model_id).artifact_location).path))

    def stored_bundle(self, version: str) -> Path:
        return self.model_dir(version) / "artifacts" / "bundle"

    def make_champion(self, version: str) -> None:
        move_champion(self.client, self.name, version, {"action": "promoted", "by": "test", "reason": "test"})


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Registry:
    with restored_mlflow_state():
        root = tmp_path_factory.mktemp("artifacts")
        settings = load_settings(data_root=root)
        client = configure(settings)
        data = tiny_data()
        model = LMContent({"whiten_dim": None}).fit(data, cluster_vectors())
        meta = {"model_name": "lm_content", "id_type": "int"}
        bundle = write_bundle(root / "bundle", model, data, cluster_vectors(), meta, validation_model=model)
        yield Registry(settings, client, bundle)


def tamper(path: Path) -> None:
    """Rewrite a bundle file with different but valid content (the model would still load)."""
    values = np.load(path)
    np.save(path, values[::-1].copy())


# ---------------------------------------------------------------------------- the hash itself
def test_bundle_hash_covers_paths_and_bytes_and_not_the_order_files_were_written(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for folder, order in ((one, ["a.txt", "sub/b.bin"]), (two, ["sub/b.bin", "a.txt"])):
        for name in order:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(name.encode())
    assert bundle_sha256(one) == bundle_sha256(two)
    reference = bundle_sha256(one)
    (two / "a.txt").write_bytes(b"A.txt")
    assert bundle_sha256(two) != reference  # same size, other bytes
    (two / "a.txt").write_bytes(b"a.txt")
    (two / "a.txt").rename(two / "c.txt")
    assert bundle_sha256(two) != reference  # same bytes, other path
    (two / "c.txt").rename(two / "a.txt")
    (two / "extra").write_bytes(b"")
    assert bundle_sha256(two) != reference  # an added empty file
    (two / "extra").unlink()
    (two / "a.txt").unlink()
    os.symlink(one / "a.txt", two / "a.txt")
    assert bundle_sha256(two) != reference  # a link to identical bytes is not the file
    _, files = bundle_digests(one)
    (one / "sub" / "b.bin").write_bytes(b"other")
    with pytest.raises(BundleMismatch, match=r"\(changed: sub/b.bin\)"):
        check_bundle(one, reference, "probe", files)


# ---------------------------------------------------------------------------- logged from code
def test_versions_are_logged_from_code_with_a_signature_and_the_hash_recorded(registry, caplog):
    with caplog.at_level(logging.WARNING):
        version = registry.log()
    assert not [r for r in caplog.records if "CloudPickle" in r.getMessage()], "the model was pickled"
    model_dir = registry.model_dir(version)
    assert not list(model_dir.rglob("*.pkl")), sorted(p.name for p in model_dir.iterdir())
    flavor = yaml.safe_load((model_dir / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model" and "python_model" not in flavor
    assert (model_dir / Path(flavor["model_code_path"]).name).is_file()

    digest = bundle_sha256(registry.bundle)
    assert registry.client.get_model_version(registry.name, version).tags[BUNDLE_HASH_TAG] == digest
    run_id = registry.client.get_model_version(registry.name, version).run_id
    assert registry.client.get_run(run_id).data.tags[BUNDLE_HASH_TAG] == digest
    assert flavor["config"]["bundle_sha256"] == digest

    model = mlflow.pyfunc.load_model(f"models:/{registry.name}/{version}")
    inputs = {c.name: (c.type.name, c.required) for c in model.metadata.signature.inputs}
    assert inputs == {"user_id": ("string", True), "k": ("long", False)}
    assert [c.name for c in model.metadata.signature.outputs] == COLUMNS
    example = model.metadata.load_input_example(str(model_dir))
    assert list(example.columns) == ["user_id", "k"] and isinstance(example["user_id"][0], str)
    assert model.unwrap_python_model().engine.folder == registry.stored_bundle(version)
    answer = model.predict(pd.DataFrame([{"user_id": "1", "k": 3}]))
    assert list(answer.columns) == COLUMNS and len(answer) == 3
    assert answer["user_id"].tolist() == ["1"] * 3 and answer["rank"].tolist() == [1, 2, 3]
    default_k = model.predict(pd.DataFrame([{"user_id": "4"}]))
    assert len(default_k) == min(10, 8 - 3)  # user 4 has seen three of the eight items


# ---------------------------------------------------------------------------- the check on load
def test_an_intact_champion_loads(registry):
    version = registry.log()
    registry.make_champion(version)
    engine, loaded = load_champion_engine(registry.settings)
    assert str(loaded) == version and engine.folder == registry.stored_bundle(version)
    assert engine.validation_model() is not None


def test_a_tampered_champion_is_refused_naming_the_version_and_both_hashes(registry):
    version = registry.log()
    registry.make_champion(version)
    recorded = registry.client.get_model_version(registry.name, version).tags[BUNDLE_HASH_TAG]
    tamper(registry.stored_bundle(version) / "popularity.npy")
    actual = bundle_sha256(registry.stored_bundle(version))
    with pytest.raises(ChampionUnreadable) as raised:
        load_champion_engine(registry.settings)
    message = str(raised.value)
    assert raised.value.version == version
    assert f"version {version}" in message and recorded in message and actual in message
    assert "changed: popularity.npy" in message
    # MLflow's own loader (mlflow models serve, a plain load_model) refuses too, through the model config
    with pytest.raises(BundleMismatch, match="popularity.npy"):
        mlflow.pyfunc.load_model(f"models:/{registry.name}/{version}")


def test_a_removed_or_added_file_is_refused(registry):
    removed, added = registry.log(), registry.log()
    (registry.stored_bundle(removed) / "text_vectors.npy").unlink()
    (registry.stored_bundle(added) / "model" / "extra.npy").write_bytes(b"")
    for version, change in ((removed, "missing: text_vectors.npy"), (added, "added: model/extra.npy")):
        with pytest.raises(BundleMismatch, match=change):
            load_version_engine(registry.client.get_model_version(registry.name, version))


def test_a_version_registered_before_the_hash_loads_with_a_warning(registry, caplog):
    version = registry.log()
    registry.client.delete_model_version_tag(registry.name, version, BUNDLE_HASH_TAG)
    registry.make_champion(version)
    with caplog.at_level(logging.WARNING, logger="components.registry.integrity"):
        engine, loaded = load_champion_engine(registry.settings)
    assert str(loaded) == version and engine.folder == registry.stored_bundle(version)
    assert any(
        "no recorded bundle hash" in r.getMessage() and f"version {version}" in r.getMessage() for r in caplog.records
    )


def test_an_old_pickled_version_still_loads(registry, caplog):
    """Versions logged before models from code hold a cloudpickle of RecommenderPyfunc by name."""
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="recommender",
            python_model=RecommenderPyfunc(),
            artifacts={"bundle": str(registry.bundle)},
            registered_model_name=registry.name,
            pip_requirements=[],
        )
    version = str(info.registered_model_version)
    assert list(registry.model_dir(version).rglob("python_model.pkl"))
    model = mlflow.pyfunc.load_model(f"models:/{registry.name}/{version}")
    assert model.unwrap_python_model().engine.folder == registry.stored_bundle(version)
    assert len(model.predict(pd.DataFrame([{"user_id": 1, "k": 2}]))) == 2  # no signature: ids as given
    registry.make_champion(version)
    with caplog.at_level(logging.WARNING, logger="components.registry.integrity"):
        engine, loaded = load_champion_engine(registry.settings)
    assert str(loaded) == version and "no recorded bundle hash" in caplog.text


# ---------------------------------------------------------------------------- humans moving the champion
def test_rollback_and_force_refuse_a_tampered_version(registry):
    target, current = registry.log(), registry.log()
    registry.make_champion(target)
    registry.make_champion(current)
    tamper(registry.stored_bundle(target) / "popularity.npy")
    with pytest.raises(RegistryError, match=f"refusing to roll back to version {target}.*popularity.npy"):
        rollback(registry.settings, "the new one misbehaves")
    with pytest.raises(RegistryError, match=f"refusing to force version {target}.*popularity.npy"):
        force_promote(registry.settings, target, "urgent")
    assert str(registry.client.get_model_version_by_alias(registry.name, CHAMPION).version) == current


def test_the_gate_rejects_a_tampered_challenger_before_its_smoke_test(registry, monkeypatch):
    from components.registry import smoke

    champion, challenger = registry.log(), registry.log()
    registry.make_champion(champion)
    tamper(registry.stored_bundle(challenger) / "popularity.npy")
    monkeypatch.setattr(smoke, "smoke_test", lambda *a, **k: pytest.fail("the tampered bundle was loaded"))
    decision = promote_if_better(
        registry.client,
        registry.settings,
        challenger,
        0.5,
        0.3,
        0.1,
        f"models:/{registry.name}/{challenger}",
        expected_champion=champion,
    )
    assert decision["decision"] == "rejected" and "popularity.npy" in decision["reason"], decision
    assert "content hash" in registry.client.get_model_version(registry.name, challenger).tags["gate.smoke_test"]
    assert str(registry.client.get_model_version_by_alias(registry.name, CHAMPION).version) == champion
