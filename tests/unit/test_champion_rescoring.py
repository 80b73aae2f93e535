"""The gate re-scores the champion honestly: with its validation-side fit, not the served model
that has already seen the held-out items."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.pipeline import run_pipeline
from components.settings import load_settings
from tests.unit._data_fixtures import write_movielens

MOVIES = "movieId,title,genres\n" + "".join(
    f"{i},Film {i} (2001),{['Comedy', 'Drama', 'Action'][i % 3]}\n" for i in range(1, 31)
)
RATINGS = "userId,movieId,rating,timestamp\n" + "".join(
    f"{u},{(u * 7 + k * 3) % 30 + 1},4.0,{1_000_000_000 + u * 100 + k}\n" for u in range(1, 21) for k in range(8)
)


@pytest.mark.parametrize("candidate", ["ease", "lm_content"])
def test_same_data_same_recipe_scores_the_same(tmp_path, candidate):
    source = write_movielens(tmp_path / "ml", movies=MOVIES, ratings=RATINGS, tags=None)
    settings = load_settings(
        data_root=tmp_path / "root",
        ingest={"source": str(source)},
        train={"candidates": [candidate], "bootstrap_samples": 20},
    )
    first = run_pipeline(settings)
    second = run_pipeline(settings)
    assert (first["decision"], second["decision"]) == ("promoted", "promoted"), second["reason"]
    reports = sorted(Path(settings.runs_dir).glob("*/report.json"), key=lambda p: p.stat().st_mtime)
    report = json.loads(reports[-1].read_text())
    metric = report["gate_metric"]
    # Same snapshot, same recipe: the champion's validation-side fit is the challenger's twin.
    assert report["champion"]["val"][metric] == pytest.approx(report["candidates"][candidate]["val"][metric])
