"""Registry faults, each on real MLflow: server down, racing gates, a broken artifact, a killed run.

One pipeline run (ingest, validate, embed, train, evaluate) on a small hand-written MovieLens
folder feeds every test; each test registers versions of its own model name in the shared
SQLite store, so the tests are independent. The smoke tests under test run for real, in fresh
processes; only the set-up champion's smoke test is stubbed.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from mlflow.tracking import MlflowClient

from components import pipeline
from components.errors import RegistryError
from components.registry import CHALLENGER, CHAMPION, champion_history, configure, get_alias_version, list_versions
from components.settings import Settings, load_settings
from tests.harness import TELEMETRY_OFF, MlflowServer, restored_mlflow_state

pytestmark = pytest.mark.integration
_names = itertools.count(1)

# Twelve films in two genres and ten users who each stay mostly within one genre; written by
# hand (not MovieLens data), in the MovieLens file layout.
MOVIES = ["movieId,title,genres"] + [
    f"{i},{'Space' if i <= 6 else 'Love'} Story {i} ({1990 + i}),{'Sci-Fi|Action' if i <= 6 else 'Romance|Drama'}"
    for i in range(1, 13)
]
RATINGS = ["userId,movieId,rating,timestamp"]
for _user in range(1, 11):
    _genre = range(1, 7) if _user <= 5 else range(7, 13)
    for _step, _movie in enumerate(list(_genre)[(_user % 3) :] + [13 - _user]):
        RATINGS.append(f"{_user},{_movie},{3.5 + (_step % 3) * 0.5},{1_500_000_000 + _user * 10_000 + _step * 100}")


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory) -> tuple[Path, Path, str]:
    """(data root, MovieLens folder, report path) of one evaluated pipeline run."""
    with restored_mlflow_state():
        root = tmp_path_factory.mktemp("faults")
        source = root / "movielens"
        source.mkdir()
        (source / "movies.csv").write_text("\n".join(MOVIES) + "\n")
        (source / "ratings.csv").write_text("\n".join(RATINGS) + "\n")
        settings = settings_for(root / "data", source, "setup")
        snapshot_id = pipeline.stage_ingest(settings)
        pipeline.stage_validate(settings, snapshot_id)
        embeddings = pipeline.stage_embed(settings, snapshot_id)
        run_dir = pipeline.stage_train(settings, snapshot_id, embeddings, "faults")
        report = pipeline.stage_evaluate(settings, run_dir)
        yield root / "data", source, report


def settings_for(data_root: Path, source: Path, model_name: str, **registry) -> Settings:
    return load_settings(
        data_root=data_root,
        ingest={"source": str(source)},
        train={"bootstrap_samples": 50},
        registry={"model_name": model_name, **registry},
    )


@pytest.fixture
def settings(evaluated_run) -> Settings:
    """Settings over the shared run, with a registered-model name of the test's own."""
    data_root, source, _ = evaluated_run
    return settings_for(data_root, source, f"faults-{next(_names)}")


def alias(settings: Settings, name: str = CHAMPION) -> str | None:
    found = get_alias_version(MlflowClient(settings.tracking_uri), settings.registry.model_name, name)
    return None if found is None else str(found.version)


def as_compared_with(registration: dict, champion: dict) -> dict:
    """The handle a run evaluated against ``champion`` would carry (same split, same model)."""
    return {**registration, "champion_version": champion["version"], "champion_metric": champion["challenger_metric"]}


def first_champion(settings: Settings, report: str) -> dict:
    """Set-up: version 1 as champion. Its smoke test is stubbed (it is not what these tests test)."""
    registration = pipeline.stage_register(settings, report)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("components.registry.smoke.smoke_test", lambda *args, **kwargs: (True, "ok (set-up, stubbed)"))
        decision = pipeline.stage_promote(settings, registration)
    assert decision["decision"] == "promoted", decision
    return registration


def child_env(settings: Settings) -> dict:
    return {
        **os.environ,
        **TELEMETRY_OFF,
        "LMRECSYS_DATA_ROOT": str(settings.data_root),
        "LMRECSYS_INGEST__SOURCE": str(settings.ingest.source),
        "LMRECSYS_REGISTRY__MODEL_NAME": settings.registry.model_name,
        "LMRECSYS_TRAIN__BOOTSTRAP_SAMPLES": "50",
    }


def test_a_missing_artifact_is_never_promoted(settings, evaluated_run):
    champion = first_champion(settings, evaluated_run[2])
    broken = as_compared_with(pipeline.stage_register(settings, evaluated_run[2]), champion)
    client = MlflowClient(settings.tracking_uri)
    model_id = client.get_model_version(settings.registry.model_name, broken["version"]).source.rsplit("/", 1)[-1]
    bundle = Path(unquote(urlparse(client.get_logged_model(model_id).artifact_location).path)) / "artifacts" / "bundle"
    (bundle / "histories" / "items.npy").unlink()
    decision = pipeline.stage_promote(settings, broken)
    assert decision["decision"] == "rejected", decision
    assert decision["reason"].startswith("smoke test failed") and "items.npy" in decision["reason"]
    assert alias(settings) == champion["version"]
    assert alias(settings, CHALLENGER) == broken["version"]
    tags = client.get_model_version(settings.registry.model_name, broken["version"]).tags
    assert tags["gate.decision"] == "rejected" and "champion_since" not in tags
    assert [e["version"] for e in champion_history(settings)] == [champion["version"]]


def test_tracking_server_down_gives_a_clear_error_and_leaves_the_champion(settings, evaluated_run, tmp_path):
    store = tmp_path / "server.db"
    server = MlflowServer(f"sqlite:///{store}", tmp_path / "artifacts", tmp_path / "logs")
    try:
        server.wait_ready()
        remote = settings_for(
            settings.data_root, Path(settings.ingest.source), settings.registry.model_name, tracking_uri=server.base
        )
        champion = first_champion(remote, evaluated_run[2])
        pending = as_compared_with(pipeline.stage_register(remote, evaluated_run[2]), champion)
    finally:
        server.stop()
    for attempt in (
        lambda: pipeline.stage_promote(remote, pending),
        lambda: pipeline.stage_register(remote, evaluated_run[2]),
    ):
        started = time.monotonic()
        with pytest.raises(RegistryError, match="cannot use the MLflow tracking store at http://127.0.0.1") as raised:
            attempt()
        elapsed = time.monotonic() - started
        assert 1.0 < elapsed < 30, f"gave up after {elapsed:.1f}s"  # it retried, and it was bounded
        assert "retries" in str(raised.value)
    # the store behind the stopped server still names the old champion, and nothing was decided
    offline = settings_for(
        settings.data_root,
        Path(settings.ingest.source),
        settings.registry.model_name,
        tracking_uri=f"sqlite:///{store}",
    )
    assert alias(offline) == champion["version"]
    rows = {row["version"]: row for row in list_versions(offline)}
    assert rows[pending["version"]]["decision"] == "undecided"
    assert [e["version"] for e in champion_history(offline)] == [champion["version"]]


PROMOTE_IN_CHILD = """
import json, sys, time
from components.pipeline import stage_promote
from components.settings import load_settings
registration, start_at = json.loads(sys.argv[1]), float(sys.argv[2])
settings = load_settings()
time.sleep(max(0.0, start_at - time.time()))
print("DECISION " + json.dumps(stage_promote(settings, registration)), flush=True)
"""


def test_two_racing_gates_leave_one_champion_and_a_consistent_history(settings, evaluated_run):
    champion = first_champion(settings, evaluated_run[2])
    challengers = [as_compared_with(pipeline.stage_register(settings, evaluated_run[2]), champion) for _ in range(2)]
    start_at = time.time() + 8  # both children are past their imports by then
    children = [
        subprocess.Popen(
            [sys.executable, "-c", PROMOTE_IN_CHILD, json.dumps(c), str(start_at)],
            env=child_env(settings),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for c in challengers
    ]
    decisions = []
    for child in children:
        out, err = child.communicate(timeout=180)
        assert child.returncode == 0, err[-3000:]
        decisions.append(
            json.loads(next(line for line in out.splitlines() if line.startswith("DECISION "))[len("DECISION ") :])
        )
    promoted = [d for d in decisions if d["decision"] == "promoted"]
    rejected = [d for d in decisions if d["decision"] == "rejected"]
    assert len(promoted) == 1 and len(rejected) == 1, decisions
    winner, loser = promoted[0], rejected[0]
    assert f"the champion moved from version {champion['version']} to {winner['version']}" in loser["reason"]
    assert alias(settings) == winner["version"]
    assert alias(settings, CHALLENGER) == max((c["version"] for c in challengers), key=int)
    history = champion_history(settings)
    assert [(e["version"], e["previous"]) for e in history] == [
        (champion["version"], None),
        (winner["version"], champion["version"]),
    ]


REGISTER_THEN_DIE = """
import os, signal, sys
import components.registry as registry
from components.pipeline import stage_register
from components.settings import load_settings
register = registry.log_bundle_model
def register_then_die(*args, **kwargs):
    version, uri = register(*args, **kwargs)
    print("REGISTERED", version, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # dies inside the MLflow run, before tags and the gate
registry.log_bundle_model = register_then_die
stage_register(load_settings(), sys.argv[1])
"""


def test_a_run_killed_between_registration_and_promotion_reruns_cleanly(settings, evaluated_run):
    child = subprocess.run(
        [sys.executable, "-c", REGISTER_THEN_DIE, evaluated_run[2]],
        env=child_env(settings),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    orphan = next(line.split()[1] for line in child.stdout.splitlines() if line.startswith("REGISTERED"))
    assert alias(settings) is None and alias(settings, CHALLENGER) is None
    # the re-run: the same stages again, to completion
    registration = pipeline.stage_register(settings, evaluated_run[2])
    decision = pipeline.stage_promote(settings, registration)
    assert decision["decision"] == "promoted", decision
    assert int(registration["version"]) > int(orphan)
    assert alias(settings) == registration["version"] and alias(settings, CHALLENGER) == registration["version"]
    rows = {row["version"]: row for row in list_versions(settings)}
    assert rows[orphan]["aliases"] == [] and rows[orphan]["decision"] == "abandoned"
    assert rows[registration["version"]]["aliases"] == [CHALLENGER, CHAMPION]
    assert [e["version"] for e in champion_history(settings)] == [registration["version"]]
    killed = MlflowClient(settings.tracking_uri).get_model_version(settings.registry.model_name, orphan)
    assert configure(settings) and killed.run_id != registration["run_id"]
