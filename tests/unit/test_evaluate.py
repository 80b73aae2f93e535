"""The offline protocol: metrics at their limits, a hand-computed example, ties, the split."""

# Telemetry and network switches are set once for every test in tests/conftest.py.

import math

import numpy as np
import pandas as pd
import pytest

from components.data.columns import EVENT_COL, ITEM_COL, TIMESTAMP_COL, TITLE_COL, USER_COL, VALUE_COL
from components.data.dataset import History, InteractionData, leave_last_out
from components.evaluation.metrics import (
    COLD_START_MAX_TRAIN,
    METRICS,
    bootstrap_interval,
    evaluate_in_chunks,
    evaluate_scores,
    per_user_metrics,
    target_ranks,
    top10_coverage,
)


def empty_histories(n: int) -> list[History]:
    return [History(np.array([], dtype=np.int64)) for _ in range(n)]


def descending_scores(n_users: int, n_items: int) -> np.ndarray:
    """Every user ranks item 0 first, item 1 second, ...: item j sits at rank j."""
    return np.tile(np.arange(n_items, 0, -1, dtype=np.float32), (n_users, 1))


# --------------------------------------------------------------------------- limits


def test_perfect_ranking_scores_one_everywhere():
    n_users, n_items = 5, 30
    rng = np.random.default_rng(1)
    scores = rng.random((n_users, n_items)).astype(np.float32)
    targets = np.argmax(scores, axis=1)
    result = evaluate_scores(scores, empty_histories(n_users), targets, bootstrap_samples=50)
    for name in METRICS:
        assert result.metrics[name] == pytest.approx(1.0), name
        assert result.intervals[name] == pytest.approx((1.0, 1.0)), name
    assert result.users == n_users
    assert result.hr_curve[0] == pytest.approx(1.0)


def test_ranking_that_never_hits_scores_zero():
    n_users, n_items = 4, 40
    scores = descending_scores(n_users, n_items)
    targets = np.full(n_users, n_items - 1)  # always ranked last (rank 39)
    result = evaluate_scores(scores, empty_histories(n_users), targets, bootstrap_samples=50)
    for name in METRICS:
        assert result.metrics[name] == 0.0, name
    assert result.hr_curve == [0.0] * 39 + [1.0] * 11


def test_hand_computed_three_users():
    # target ranks 0, 2 and 15 among 20 items with distinct scores
    scores = descending_scores(3, 20)
    targets = np.array([0, 2, 15])
    histories = empty_histories(3)
    assert target_ranks(scores, histories, targets).tolist() == [0, 2, 15]
    result = evaluate_scores(scores, histories, targets, bootstrap_samples=50)
    assert result.metrics["hr@10"] == pytest.approx(2 / 3)
    assert result.metrics["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4)) / 3)
    assert result.metrics["mrr@10"] == pytest.approx((1 + 1 / 3) / 3)
    assert result.metrics["recall@20"] == pytest.approx(1.0)
    # the HR curve: HR@1 = 1/3, HR@3 = 2/3, HR@16 = 1
    assert result.hr_curve[0] == pytest.approx(1 / 3)
    assert result.hr_curve[2] == pytest.approx(2 / 3)
    assert result.hr_curve[14] == pytest.approx(2 / 3)
    assert result.hr_curve[15] == pytest.approx(1.0)


def test_per_user_metrics_values():
    values = per_user_metrics(np.array([0, 1, 9, 10, 19, 20]))
    assert values["hr@10"].tolist() == [1, 1, 1, 0, 0, 0]
    assert values["recall@20"].tolist() == [1, 1, 1, 1, 1, 0]
    np.testing.assert_allclose(values["ndcg@10"], [1, 1 / math.log2(3), 1 / math.log2(11), 0, 0, 0])
    np.testing.assert_allclose(values["mrr@10"], [1, 1 / 2, 1 / 10, 0, 0, 0])


# --------------------------------------------------------------------------- ties and exclusions


def test_constant_scores_rank_target_after_every_tied_unseen_item():
    n_items = 30
    scores = np.zeros((2, n_items), dtype=np.float32)
    histories = [History(np.array([1, 2, 3])), History(np.array([], dtype=np.int64))]
    targets = np.array([0, 29])
    ranks = target_ranks(scores, histories, targets)
    # 27 unseen items for user 0 (target included), 30 for user 1: the target comes last
    assert ranks.tolist() == [26, 29]
    result = evaluate_scores(scores, histories, targets, bootstrap_samples=20)
    assert result.metrics["hr@10"] == 0.0
    assert result.metrics["ndcg@10"] == 0.0


def test_partial_ties_are_pessimistic():
    scores = np.array([[3.0, 2.0, 2.0, 2.0, 1.0]], dtype=np.float32)
    histories = empty_histories(1)
    for target in (1, 2, 3):  # tied with two others, whatever its index: after both of them
        assert target_ranks(scores, histories, np.array([target])).tolist() == [3]
    assert target_ranks(scores, histories, np.array([0])).tolist() == [0]
    assert target_ranks(scores, histories, np.array([4])).tolist() == [4]


def test_seen_items_are_excluded_from_the_ranking():
    scores = np.array([[10.0, 9.0, 8.0, 1.0, 0.5]], dtype=np.float32)
    seen = [History(np.array([0, 1, 2]))]
    assert target_ranks(scores, empty_histories(1), np.array([3])).tolist() == [3]
    assert target_ranks(scores, seen, np.array([3])).tolist() == [0]


def test_target_among_seen_items_never_counts_as_a_hit():
    # a re-consumed item: the target is also in the history, so it can never be recommended
    scores = descending_scores(1, 30)
    ranks = target_ranks(scores, [History(np.array([0, 4]))], np.array([0]))
    assert ranks[0] >= 30
    result = evaluate_scores(scores, [History(np.array([0, 4]))], np.array([0]), bootstrap_samples=10)
    assert all(result.metrics[name] == 0.0 for name in METRICS)


def test_target_among_seen_items_is_no_hit_in_a_small_catalogue():
    scores = np.array([[10.0, 9.0, 8.0]], dtype=np.float32)
    ranks = target_ranks(scores, [History(np.array([0]))], np.array([0]))
    assert per_user_metrics(ranks)["hr@10"].tolist() == [0.0]


def test_target_ranks_does_not_modify_the_scores():
    scores = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    before = scores.copy()
    target_ranks(scores, [History(np.array([2]))], np.array([0]))
    np.testing.assert_array_equal(scores, before)


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_interval_contains_the_mean_and_is_deterministic():
    rng = np.random.default_rng(3)
    values = (rng.random(200) < 0.3).astype(np.float64)
    low, high = bootstrap_interval(values, samples=500, seed=7)
    assert low <= values.mean() <= high
    assert low < high
    assert bootstrap_interval(values, samples=500, seed=7) == (low, high)
    assert bootstrap_interval(values, samples=500, seed=8) != (low, high)


def test_bootstrap_interval_edge_cases():
    assert bootstrap_interval(np.full(10, 0.25), samples=100) == pytest.approx((0.25, 0.25))
    low, high = bootstrap_interval(np.array([]), samples=100)
    assert math.isnan(low) and math.isnan(high)


def test_evaluate_scores_intervals_follow_the_seed():
    rng = np.random.default_rng(0)
    scores = rng.random((50, 40)).astype(np.float32)
    targets = rng.integers(0, 40, 50)
    histories = empty_histories(50)
    first = evaluate_scores(scores, histories, targets, bootstrap_samples=200, seed=5)
    second = evaluate_scores(scores, histories, targets, bootstrap_samples=200, seed=5)
    assert first.intervals == second.intervals
    for name in METRICS:
        low, high = first.intervals[name]
        assert low <= first.metrics[name] <= high


# --------------------------------------------------------------------------- coverage and cold start


def test_coverage_at_10():
    n_items = 20
    same = descending_scores(3, n_items)
    assert top10_coverage(same, empty_histories(3)) == pytest.approx(10 / 20)
    # user 1 prefers the other half of the catalogue: the union of top-10s is everything
    split = same.copy()
    split[1] = np.arange(n_items, dtype=np.float32)
    assert top10_coverage(split, empty_histories(3)) == pytest.approx(1.0)
    # seen items leave the top 10 and let the next ones in
    seen = [History(np.arange(5))] + empty_histories(2)
    assert top10_coverage(same, seen) == pytest.approx(15 / 20)
    assert top10_coverage(same, []) == 0.0


def test_coverage_never_counts_seen_items():
    # 5 items, the only user has seen 3: only items 3 and 4 can be recommended, so coverage is 2/5
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]], dtype=np.float32)
    assert top10_coverage(scores, [History(np.array([0, 1, 2]))]) == pytest.approx(2 / 5)


def test_cold_start_slice_counts_users_whose_target_is_rare_in_training():
    n_items = 20
    scores = descending_scores(4, n_items)
    targets = np.array([0, 1, 12, 13])  # hits for the first two users only
    train_counts = np.full(n_items, 100)
    train_counts[[1, 13]] = COLD_START_MAX_TRAIN  # at the threshold: cold
    train_counts[12] = COLD_START_MAX_TRAIN + 1  # just above: warm
    result = evaluate_scores(scores, empty_histories(4), targets, train_counts=train_counts, bootstrap_samples=20)
    assert result.cold_users == 2
    assert result.cold["hr@10"] == pytest.approx(0.5)  # item 1 hit, item 13 missed
    assert result.metrics["hr@10"] == pytest.approx(0.5)
    flat = result.flat("test.")
    assert flat["test.cold_users"] == 2.0
    assert flat["test.cold_hr_at_10"] == pytest.approx(0.5)
    assert flat["test.hr_at_10_low"] <= flat["test.hr_at_10"] <= flat["test.hr_at_10_high"]
    assert "test.coverage_at_10" in flat and "test.ndcg_at_10" in flat


def test_no_train_counts_means_no_cold_slice():
    result = evaluate_scores(descending_scores(2, 12), empty_histories(2), np.array([0, 1]), bootstrap_samples=10)
    assert result.cold == {} and result.cold_users == 0


# --------------------------------------------------------------------------- the split


def split_fixture() -> InteractionData:
    """3 users: 'a' with 4 interactions (one timestamp tie), 'b' with 3, 'c' with 2; rows shuffled."""
    items = pd.DataFrame({ITEM_COL: [40, 30, 20, 10], TITLE_COL: ["d", "c", "b", "a"], "categories": ["", "", "", ""]})
    rows = [
        ("a", 30, 100, "rating"),
        ("b", 30, 3, "rating"),
        ("a", 20, 200, "rating"),  # tie with item 10 at t=200: item 10 comes first
        ("c", 10, 5, "rating"),
        ("a", 10, 200, "rating"),
        ("b", 10, 1, "rating"),
        ("a", 40, 50, "rating"),
        ("c", 20, 6, "rating"),
        ("b", 20, 2, "rating"),
        ("b", 40, 4, "dislike"),  # negative events never enter histories
    ]
    interactions = pd.DataFrame(rows, columns=[USER_COL, ITEM_COL, TIMESTAMP_COL, EVENT_COL]).assign(**{VALUE_COL: 4.0})
    return InteractionData.from_frames(items, interactions)


def test_from_frames_orders_histories_by_timestamp_then_item_id():
    data = split_fixture()
    index = data.catalogue.index
    assert index == {10: 0, 20: 1, 30: 2, 40: 3}
    histories = dict(zip(data.user_ids.tolist(), data.histories))
    assert histories["a"].items.tolist() == [index[40], index[30], index[10], index[20]]
    assert histories["b"].items.tolist() == [index[10], index[20], index[30]]
    assert histories["c"].items.tolist() == [index[10], index[20]]
    assert data.item_counts().tolist() == [3, 3, 2, 1]


def test_leave_last_out_split():
    data = split_fixture()
    i = data.catalogue.index
    split = leave_last_out(data)
    assert split.eval_users.tolist() == ["a", "b"]
    # test item = the last, validation item = the second-to-last
    assert split.test_targets.tolist() == [i[20], i[30]]
    assert split.val_targets.tolist() == [i[10], i[20]]
    assert [h.items.tolist() for h in split.val_histories] == [[i[40], i[30]], [i[10]]]
    assert [h.items.tolist() for h in split.test_histories] == [[i[40], i[30], i[10]], [i[10], i[20]]]
    # training sides: eval users lose their held-out items, short histories stay whole
    val_train = dict(zip(split.val_train.user_ids.tolist(), (h.items.tolist() for h in split.val_train.histories)))
    test_train = dict(zip(split.test_train.user_ids.tolist(), (h.items.tolist() for h in split.test_train.histories)))
    assert val_train == {"a": [i[40], i[30]], "b": [i[10]], "c": [i[10], i[20]]}
    assert test_train == {"a": [i[40], i[30], i[10]], "b": [i[10], i[20]], "c": [i[10], i[20]]}
    assert "c" not in split.eval_users.tolist()
    # no leakage: the held-out item never appears in the matching training history
    for history, target in zip(split.val_histories, split.val_targets):
        assert target not in history.items
    for history, target in zip(split.test_histories, split.test_targets):
        assert target not in history.items


# --------------------------------------------------------------------------- bounded memory


@pytest.mark.parametrize("chunk", [1, 3, 7, 40, 1000])
def test_evaluating_in_chunks_gives_the_same_numbers_as_one_matrix(chunk):
    rng = np.random.default_rng(5)
    n_users, n_items = 40, 25
    scores = rng.integers(0, 6, size=(n_users, n_items)).astype(np.float32)  # many ties
    histories = [History(rng.choice(n_items, size=int(rng.integers(0, 6)), replace=False)) for _ in range(n_users)]
    targets = rng.integers(0, n_items, size=n_users)
    counts = rng.integers(0, 8, size=n_items)
    calls = []

    def scorer(part):
        start = sum(calls)
        calls.append(len(part))
        assert len(part) <= chunk
        return scores[start : start + len(part)]

    kwargs = {"train_counts": counts, "bootstrap_samples": 50, "seed": 3}
    whole = evaluate_scores(scores, histories, targets, **kwargs)
    chunked = evaluate_in_chunks(scorer, histories, targets, chunk_users=chunk, **kwargs)
    assert sum(calls) == n_users and len(calls) == -(-n_users // chunk)
    assert chunked == whole
    assert 0 < whole.coverage_at_10 <= 1


def test_evaluating_no_users_in_chunks_is_empty_not_an_error():
    result = evaluate_in_chunks(lambda part: np.zeros((0, 5)), [], np.array([], dtype=np.int64), bootstrap_samples=10)
    assert result.users == 0 and result.coverage_at_10 == 0.0
