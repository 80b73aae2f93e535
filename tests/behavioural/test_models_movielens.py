"""Model behaviour on the real ml-latest-small data: the reference figures reproduce."""

import numpy as np
import pytest

from components.data.dataset import InteractionData, leave_last_out
from components.data.sources import read_movielens
from components.evaluation.splits import evaluate_on_split, global_time_split, shuffled_split, time_cutoffs
from components.models import EASE, Popularity

pytestmark = [pytest.mark.behavioural, pytest.mark.slow]


@pytest.fixture(scope="module")
def movielens(movielens_dir) -> InteractionData:
    source = read_movielens(movielens_dir)
    return InteractionData.from_frames(source.items, source.interactions)


def test_ease_reproduces_the_reference_and_beats_popularity(movielens):
    split = leave_last_out(movielens)
    ease = EASE().fit(split.test_train)  # λ tuned on each user's validation item
    assert ease.form == "dual"
    assert ease.chosen_l2 == 50.0
    result = evaluate_on_split(ease, split, bootstrap_samples=200)
    assert result.metrics["hr@10"] == pytest.approx(0.0852, abs=0.02)
    assert result.metrics["ndcg@10"] == pytest.approx(0.0411, abs=0.01)
    popularity = evaluate_on_split(Popularity().fit(split.test_train), split, bootstrap_samples=200)
    assert popularity.metrics["hr@10"] == pytest.approx(0.0410, abs=0.01)
    assert result.metrics["ndcg@10"] > popularity.metrics["ndcg@10"]


def test_second_views_keep_their_promises(movielens):
    plain, control = leave_last_out(movielens), shuffled_split(movielens, seed=0)
    np.testing.assert_array_equal(plain.test_targets, control.test_targets)
    _, test_cutoff = time_cutoffs(movielens)
    by_time = global_time_split(movielens)
    assert len(by_time.test_targets) > 10
    for history in by_time.test_train.histories:
        assert (history.timestamps < test_cutoff).all()
