"""Bad input stops the pipeline with a clear error and leaves no snapshot, model or alias change."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from components.data.snapshots import list_snapshots
from components.errors import ChecksumError, SourceError, ValidationFailed
from components.pipeline import run_pipeline
from components.settings import load_settings
from tests.unit._data_fixtures import TINY_RATINGS_CSV, write_movielens


@pytest.fixture(scope="module")
def registry_with_champion(tmp_path_factory):
    """A data root whose registry already has a champion, trained on the tiny MovieLens folder."""
    base = tmp_path_factory.mktemp("pipeline")
    good = write_movielens(base / "good")
    settings = load_settings(data_root=base / "root", ingest={"source": str(good)}, train={"bootstrap_samples": 50})
    decision = run_pipeline(settings)
    assert decision["decision"] == "promoted", decision
    return base, settings


def _state(settings):
    client = MlflowClient(settings.tracking_uri)
    versions = sorted(str(v.version) for v in client.search_model_versions("name='recommender'"))
    champion = str(client.get_model_version_by_alias("recommender", "champion").version)
    return versions, champion, [s.snapshot_id for s in list_snapshots(settings.snapshots_dir)]


def _bad_source(base: Path, case: str) -> tuple[str, dict]:
    if case == "missing_dir":
        return str(base / "does-not-exist"), {}
    if case == "empty_dir":
        (base / "empty").mkdir(exist_ok=True)
        return str(base / "empty"), {}
    if case == "missing_column":
        folder = write_movielens(
            base / "nocol",
            ratings=TINY_RATINGS_CSV.replace("userId,movieId,rating,timestamp", "userId,movieId,timestamp")
            .replace(",4.0,", ",")
            .replace(",3.5,", ",")
            .replace(",5.0,", ",")
            .replace(",2.5,", ",")
            .replace(",4.5,", ",")
            .replace(",1.0,", ","),
        )
        return str(folder), {}
    if case == "zip_hash_mismatch":
        folder = write_movielens(base / "zipped" / "ml-latest-small")
        archive = base / "ml.zip"
        with zipfile.ZipFile(archive, "w") as out:
            for path in folder.iterdir():
                out.write(path, f"ml-latest-small/{path.name}")
        return str(archive), {"download_sha256": "0" * 64}
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "error", "words"),
    [
        ("missing_dir", SourceError, "does not exist"),
        ("empty_dir", SourceError, "is empty"),
        ("missing_column", SourceError, "lacks required column(s) ['rating']"),
        ("zip_hash_mismatch", ChecksumError, "expected 000000"),
    ],
)
def test_bad_source_changes_nothing(registry_with_champion, case, error, words):
    base, settings = registry_with_champion
    before = _state(settings)
    source, extra = _bad_source(base, case)
    bad = load_settings(data_root=settings.data_root, ingest={"source": source, **extra})
    with pytest.raises(error) as info:
        run_pipeline(bad)
    assert words in str(info.value)
    assert _state(settings) == before


def test_failed_validation_trains_nothing(registry_with_champion):
    base, settings = registry_with_champion
    before = _state(settings)
    folder = write_movielens(
        base / "rating7", ratings=TINY_RATINGS_CSV.replace("1,4,5.0,964983100", "1,4,7.0,964983100")
    )
    bad = load_settings(data_root=settings.data_root, ingest={"source": str(folder)})
    with pytest.raises(ValidationFailed) as info:
        run_pipeline(bad)
    assert "expect_column_values_to_be_between on column 'value'" in str(info.value)
    assert _state(settings) == before
    assert len(list_snapshots(settings.quarantine_dir)) == 1
