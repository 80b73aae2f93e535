"""Shared, generic fixtures for the unit tests: tiny hand-written data sets and settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from components.settings import load_settings

# Four movies, three users, seven ratings; written by hand (not MovieLens data).
from tests.unit._data_fixtures import TINY_MOVIES_CSV, TINY_RATINGS_CSV, TINY_TAGS_CSV, write_movielens  # noqa: F401


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch):
    """No LMRECSYS_* variable or proxy from the calling shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("LMRECSYS_") or name.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture
def movielens_folder(tmp_path):
    """Factory: ``movielens_folder(name, movies=..., ratings=..., tags=...)`` writes a MovieLens folder
    under tmp_path, defaulting each file to the tiny data set (``tags=None`` leaves tags.csv out)."""

    def make(name: str = "ml", **files) -> Path:
        return write_movielens(tmp_path / name, **files)

    return make


@pytest.fixture
def tiny_movielens(tmp_path) -> Path:
    """A 4-movie / 3-user MovieLens folder: ratings.csv, movies.csv, tags.csv."""
    return write_movielens(tmp_path / "ml-tiny")


@pytest.fixture
def make_settings(tmp_path, tiny_movielens):
    """Factory for settings rooted in the test's tmp dir; keyword sections override the defaults."""

    def make(**overrides):
        overrides.setdefault("data_root", tmp_path / "root")
        ingest = {"source": str(tiny_movielens), **overrides.pop("ingest", {})}
        return load_settings(ingest=ingest, **overrides)

    return make


@pytest.fixture
def settings(make_settings):
    """Settings over a fresh data root, ingesting the tiny MovieLens folder (SQLite feedback store)."""
    return make_settings()


@pytest.fixture
def small_loop(monkeypatch, tmp_path, movielens_folder) -> Path:
    """The environment of a whole small loop run through ``lmrecsys``: a fresh data root (returned)
    ingesting 30 users × 12 items with varied ratings, enough for every candidate to be evaluated;
    50 bootstrap samples and a few LM-SASRec epochs keep each run to seconds."""
    movies = "movieId,title,genres\n" + "".join(
        f"{i},Film {i} (1999),{('Drama', 'Comedy')[i % 2]}\n" for i in range(1, 13)
    )
    ratings = "userId,movieId,rating,timestamp\n" + "".join(
        f"{u},{i},{1.0 + (u * 3 + i * 5) % 9 / 2},{1_000_000_000 + u * 100 + i}\n"
        for u in range(1, 31)
        for i in range(1, 13)
        if (u + i) % 3
    )
    root = tmp_path / "root"
    monkeypatch.setenv("LMRECSYS_DATA_ROOT", str(root))
    monkeypatch.setenv(
        "LMRECSYS_INGEST__SOURCE", str(movielens_folder("small", movies=movies, ratings=ratings, tags=None))
    )
    monkeypatch.setenv("LMRECSYS_TRAIN__BOOTSTRAP_SAMPLES", "50")
    monkeypatch.setenv("LMRECSYS_TRAIN__MODEL_CONFIGS", '{"lm_sasrec": {"max_epochs": 4}}')
    return root
