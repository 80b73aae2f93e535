"""Drift against the reference snapshot: each kind of drift is rejected with its name and value."""

from __future__ import annotations

import numpy as np
import pytest

from components.data.snapshots import list_snapshots
from components.errors import ValidationFailed
from components.ingest import ingest
from components.validation.runner import js_divergence, validate_snapshot
from tests.unit._data_fixtures import write_movielens


def _movies(n_items: int) -> str:
    genres = ["Comedy", "Drama", "Action|Thriller", "Animation|Children"]
    return "movieId,title,genres\n" + "".join(
        f"{i},Film number {i} ({1990 + i % 30}),{genres[i % 4]}\n" for i in range(1, n_items + 1)
    )


def _ratings(users: range, items: range, value=lambda u, i: 0.5 + ((u * 7 + i * 3) % 10) / 2) -> str:
    rows = [f"{u},{i},{value(u, i)},{1_000_000_000 + u * 1000 + i}" for u in users for i in items]
    return "userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n"


@pytest.fixture
def accepted_reference(tmp_path, make_settings):
    """An accepted snapshot of 40 users × 10 items; returns a factory for the next source."""
    folder = write_movielens(
        tmp_path / "v1", movies=_movies(40), ratings=_ratings(range(1, 41), range(1, 11)), tags=None
    )
    settings = make_settings(ingest={"source": str(folder)})
    validate_snapshot(settings, ingest(settings))

    def next_settings(name: str, movies: str, ratings: str):
        folder = write_movielens(tmp_path / name, movies=movies, ratings=ratings, tags=None)
        return make_settings(ingest={"source": str(folder)})

    return next_settings


def _reject(settings, use_parent=True) -> str:
    with pytest.raises(ValidationFailed) as info:
        validate_snapshot(settings, ingest(settings, use_parent=use_parent))
    assert len(list_snapshots(settings.snapshots_dir)) == 1  # only the reference stays accepted
    return str(info.value)


def test_similar_next_batch_is_accepted(accepted_reference):
    settings = accepted_reference("v2", _movies(40), _ratings(range(1, 42), range(1, 11)))
    snapshot = validate_snapshot(settings, ingest(settings))
    assert snapshot.validation["drift"]["volume_ratio"] == pytest.approx(410 / 400)


def test_sudden_volume_drop_is_rejected(accepted_reference):
    message = _reject(accepted_reference("drop", _movies(40), _ratings(range(1, 5), range(1, 11))))
    assert "[drift] expect_column_values_to_be_between on column 'volume_ratio'" in message


def test_interactions_on_unknown_items_are_rejected(accepted_reference):
    message = _reject(
        accepted_reference(
            "newitems",
            _movies(60),
            _ratings(range(1, 41), range(1, 11)) + _ratings(range(1, 41), range(41, 51)).split("\n", 1)[1],
        )
    )
    assert "column 'unknown_item_share'" in message


def test_many_new_users_are_rejected(accepted_reference):
    message = _reject(
        accepted_reference(
            "newusers",
            _movies(40),
            _ratings(range(1, 41), range(1, 11)) + _ratings(range(100, 160), range(1, 3)).split("\n", 1)[1],
        )
    )
    assert "column 'new_user_ratio'" in message


def test_rating_distribution_shift_is_rejected(accepted_reference):
    settings = accepted_reference("shift", _movies(40), _ratings(range(1, 41), range(1, 11), value=lambda u, i: 1.0))
    message = _reject(settings, use_parent=False)
    assert "column 'event_divergence'" in message


def test_js_divergence_limits():
    import pandas as pd

    same = pd.Series({"a": 0.5, "b": 0.5})
    assert js_divergence(same, same) == pytest.approx(0.0)
    assert js_divergence(pd.Series({"a": 1.0}), pd.Series({"b": 1.0})) == pytest.approx(1.0)
    # in between, the textbook definition: mean KL (base 2) to the mixture
    p, q = pd.Series({"a": 0.75, "b": 0.25}), pd.Series({"a": 0.25, "b": 0.75, "c": 0.0})
    m = {"a": 0.5, "b": 0.5}
    expected = 0.5 * sum(p[k] * np.log2(p[k] / m[k]) for k in m) + 0.5 * sum(q[k] * np.log2(q[k] / m[k]) for k in m)
    assert js_divergence(p, q) == pytest.approx(expected, rel=1e-9)
    assert js_divergence(p, q) == pytest.approx(js_divergence(q, p), rel=1e-12)
