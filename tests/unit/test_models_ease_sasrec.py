"""EASE, SASRec and LM-SASRec: the shared contract, known answers on tiny data, and the protocols.

The contract classes subclass :class:`RecommenderContract`, so the guard in
test_models_contract.py sees every model registered here.
"""

import numpy as np
import pydantic
import pytest

from components.data.dataset import History, InteractionData, leave_last_out
from components.evaluation.splits import (
    evaluate_on_split,
    global_time_split,
    shuffle_histories,
    shuffled_split,
    time_cutoffs,
)
from components.models import EASE, LMSASRec, SASRec, build_model, load_model
from components.models.ease import _primal_item_weights, interaction_matrix
from tests.unit._model_fixtures import cluster_vectors, interactions_frame, items_frame, tiny_data
from tests.unit.test_models_contract import RecommenderContract

FAST = {"hidden": 8, "max_len": 6, "batch_size": 8, "max_epochs": 2, "patience": 1, "progress": False, "device": "cpu"}


# --------------------------------------------------------------------------- the shared contract


class TestEASEContract(RecommenderContract):
    model_name = "ease"


class TestSASRecContract(RecommenderContract):
    model_name = "sasrec"
    config = FAST


class TestLMSASRecWhitenedContract(RecommenderContract):
    model_name = "lm_sasrec"
    config = {**FAST, "text_dim": 2, "heads": 2}


# --------------------------------------------------------------------------- EASE known answers


def random_histories(n_users: int, n_items: int, seed: int = 0) -> list[History]:
    rng = np.random.default_rng(seed)
    return [History(rng.choice(n_items, size=rng.integers(2, n_items // 2), replace=False)) for _ in range(n_users)]


def as_data(histories: list[History], n_items: int) -> InteractionData:
    ids = list(range(100, 100 + n_items))
    base = InteractionData.from_frames(items_frame(ids), interactions_frame({1: [0]}, item_ids=ids))
    return InteractionData(base.catalogue, np.arange(len(histories)), histories)


@pytest.mark.parametrize("n_users,n_items", [(5, 12), (12, 6)])
def test_ease_matches_the_closed_form(n_users, n_items):
    """Dual (fewer users than items) and primal forms both equal x·B with B from the textbook formula."""
    histories = random_histories(n_users, n_items)
    model = EASE({"l2": 3.0}).fit(as_data(histories, n_items))
    assert model.form == ("dual" if n_users < n_items else "primal")
    matrix = interaction_matrix(histories, n_items)
    gram = matrix.T @ matrix + 3.0 * np.eye(n_items)
    precision = np.linalg.inv(gram)
    weights = np.eye(n_items) - precision / np.diag(precision)
    np.testing.assert_allclose(np.diag(weights), 0.0, atol=1e-12)
    np.testing.assert_allclose(model.score(histories), matrix @ weights, atol=1e-4)
    np.testing.assert_allclose(_primal_item_weights(matrix, 3.0), weights, atol=1e-10)


def test_ease_scores_a_few_users_exactly_as_the_dense_product():
    """Serving's sparse overlap path (a few rows) gives what the dense product gives, bit for bit,
    also for a history that repeats an item or is empty; and it agrees with batched scoring."""
    histories = random_histories(30, 40, seed=3)
    model = EASE({"l2": 3.0}).fit(as_data(histories, 40))
    assert model.form == "dual"
    probes = histories[:3] + [History(np.array([5, 5, 7, 5])), History(np.zeros(0, dtype=np.int64))]
    for probe in probes:
        users = interaction_matrix([probe], 40).astype(np.float32)
        projected = (users - (users @ model.train_matrix.T) @ model.dual_weights) / np.float32(model.chosen_l2)
        np.testing.assert_array_equal(model.score([probe]), users - projected / model.dual_diagonal)
    batched = model.score(probes + histories[3:])[: len(probes)]  # many rows: the dense product
    np.testing.assert_allclose(model.score(probes), batched, atol=1e-5)


def test_ease_recommends_the_co_consumed_item():
    # items 0 and 1 always go together, as do 2 and 3: a user with 0 wants 1 next
    histories = [History(np.array(h)) for h in ([0, 1], [0, 1], [2, 3], [2, 3], [0, 1, 4], [2, 3, 4])]
    model = EASE({"l2": 0.5}).fit(as_data(histories, 5))
    assert model.recommend([History(np.array([0]))], 1)[0][0, 0] == 1
    assert model.recommend([History(np.array([3]))], 1)[0][0, 0] == 2


def test_ease_tunes_l2_on_the_last_item_and_never_sees_it_for_scoring():
    data = tiny_data()
    model = EASE({"l2_grid": [0.5, 5.0, 500.0]}).fit(data)
    assert set(model.tuning) == {0.5, 5.0, 500.0}
    assert model.chosen_l2 in model.tuning
    assert model.tuning[model.chosen_l2] == max(model.tuning.values())
    # the saved model remembers the chosen λ
    assert (
        EASE({"l2": model.chosen_l2}).fit(data).score(data.histories).tolist() == model.score(data.histories).tolist()
    )


def test_ease_config_rejects_bad_weights():
    with pytest.raises(pydantic.ValidationError, match="l2 must be positive"):
        build_model("ease", {"l2": 0})
    with pytest.raises(pydantic.ValidationError, match="l2_grid"):
        build_model("ease", {"l2_grid": []})
    with pytest.raises(pydantic.ValidationError, match="tune_metric"):
        build_model("ease", {"tune_metric": "auc"})


# --------------------------------------------------------------------------- SASRec known answers


def cyclic_data(n_items: int = 6, n_users: int = 24, length: int = 12) -> InteractionData:
    """Every user walks the catalogue in one fixed cycle 0→1→…→n-1→0 from a different start."""
    ids = list(range(100, 100 + n_items))
    histories = {user: [(user + step) % n_items for step in range(length)] for user in range(1, n_users + 1)}
    return InteractionData.from_frames(items_frame(ids), interactions_frame(histories, item_ids=ids))


def test_sasrec_learns_the_next_item_of_a_cycle():
    data = cyclic_data()
    model = SASRec({**FAST, "hidden": 16, "max_epochs": 40, "patience": 40, "lr": 1e-2, "dropout": 0.0}).fit(data)
    # the next item in the cycle is never in this short history, so it can be recommended
    for start in range(data.n_items):
        history = History(np.array([(start + step) % data.n_items for step in range(3)]))
        assert model.recommend([history], 1)[0][0, 0] == (start + 3) % data.n_items
    assert model.best_epoch >= 1
    assert len(model.validation_curve) >= model.best_epoch

    # order matters: the same items read backwards point elsewhere
    assert model.recommend([History(np.array([2, 1, 0]))], 1)[0][0, 0] != 3


def test_sasrec_with_the_weight_average_and_the_seen_mask_still_learns_the_cycle():
    data = cyclic_data()
    config = {**FAST, "hidden": 16, "max_epochs": 40, "patience": 40, "lr": 1e-2, "dropout": 0.0}
    model = SASRec({**config, "weight_average": 0.5, "mask_seen": True}).fit(data)
    for start in range(data.n_items):
        history = History(np.array([(start + step) % data.n_items for step in range(3)]))
        assert model.recommend([history], 1)[0][0, 0] == (start + 3) % data.n_items


def test_sasrec_fixed_epochs_with_the_weight_average_ends_on_the_average():
    import torch

    # fits of 1, 2 and 3 epochs from one seed follow one trajectory: w1, w2, w3
    w1, w2, w3 = (
        [p.detach().clone() for p in SASRec({**FAST, "epochs": n}).fit(tiny_data()).network.parameters()]
        for n in (1, 2, 3)
    )
    averaged = SASRec({**FAST, "epochs": 3, "weight_average": 0.5}).fit(tiny_data())
    for a, b, c, got in zip(w1, w2, w3, averaged.network.parameters(), strict=True):
        # decay 0.5: ((w1 · 0.5 + w2 · 0.5) · 0.5 + w3 · 0.5)
        torch.testing.assert_close(got.detach(), 0.25 * a + 0.25 * b + 0.5 * c)
    assert not torch.allclose(w3[0], next(averaged.network.parameters()))


def test_the_serving_epochs_continue_the_weight_average_from_the_served_weights():
    import copy

    import torch

    averaged = SASRec({**FAST, "epochs": 2, "weight_average": 0.5, "serve_epochs": 1}).fit(tiny_data())
    start = [p.detach().clone() for p in averaged.network.parameters()]
    plain = copy.deepcopy(averaged)
    plain.config = plain.config.model_copy(update={"weight_average": 0.0})
    after = [p.detach().clone() for p in plain.continue_training(tiny_data()).network.parameters()]
    for s0, w1, got in zip(start, after, averaged.continue_training(tiny_data()).network.parameters(), strict=True):
        torch.testing.assert_close(got.detach(), 0.5 * s0 + 0.5 * w1)


def test_sasrec_fixed_epochs_trains_without_a_hold_out():
    model = SASRec({**FAST, "epochs": 2}).fit(tiny_data())
    assert model.best_epoch == 2
    assert model.validation_curve == []


def test_sasrec_empty_history_falls_back_to_popularity():
    data = tiny_data()
    model = SASRec(FAST).fit(data)
    np.testing.assert_array_equal(model.score([History(np.array([], dtype=np.int64))])[0], data.item_counts())


def test_sasrec_does_not_change_the_global_determinism_flag():
    import torch

    before = torch.are_deterministic_algorithms_enabled()
    SASRec(FAST).fit(tiny_data())
    assert torch.are_deterministic_algorithms_enabled() == before


def test_sasrec_different_seeds_give_different_models():
    data = tiny_data()
    a, b = SASRec({**FAST, "seed": 1}).fit(data), SASRec({**FAST, "seed": 2}).fit(data)
    assert not np.array_equal(a.score(data.histories), b.score(data.histories))


def test_lm_sasrec_recommends_items_never_seen_in_training():
    """Item 3 (Action) has no training interactions: text alone places it with the Action items."""
    data = tiny_data()
    assert data.item_counts()[3] == 0
    model = LMSASRec({**FAST, "text_dim": None, "max_epochs": 30, "patience": 30, "lr": 1e-2}).fit(
        data, cluster_vectors()
    )
    assert model.network.id_mask[3] == 0 and model.network.id_mask[0] == 1
    action_history = History(np.array([0, 1, 2]))
    indexes, _ = model.recommend([action_history], 1)
    assert indexes[0, 0] == 3


def test_lm_sasrec_needs_aligned_vectors():
    data = tiny_data()
    with pytest.raises(ValueError, match="item text vectors"):
        LMSASRec(FAST).fit(data, None)
    with pytest.raises(ValueError, match="item text vectors"):
        LMSASRec(FAST).fit(data, cluster_vectors(n_items=data.n_items - 1))


def test_sasrec_config_rejects_bad_values():
    with pytest.raises(pydantic.ValidationError):
        build_model("sasrec", {"dropout": 1.5})
    with pytest.raises(pydantic.ValidationError):
        build_model("lm_sasrec", {"text_dim": 0})


def test_sasrec_loads_on_cpu_with_identical_scores(tmp_path):
    data = tiny_data()
    model = LMSASRec({**FAST, "text_dim": 2}).fit(data, cluster_vectors())
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.best_epoch == model.best_epoch
    np.testing.assert_array_equal(loaded.score(data.histories), model.score(data.histories))


# --------------------------------------------------------------------------- protocols


def test_shuffle_keeps_the_last_items_and_the_item_sets():
    data = cyclic_data(n_items=8, n_users=5, length=8)
    shuffled = shuffle_histories(data, keep_last=2, seed=3)
    changed = 0
    for before, after in zip(data.histories, shuffled.histories):
        assert sorted(before.items.tolist()) == sorted(after.items.tolist())
        assert before.items[-2:].tolist() == after.items[-2:].tolist()
        np.testing.assert_array_equal(before.timestamps, after.timestamps)
        changed += before.items.tolist() != after.items.tolist()
    assert changed > 0
    # seeded: the same seed gives the same order; the input is left alone
    again = shuffle_histories(data, keep_last=2, seed=3)
    assert [h.items.tolist() for h in again.histories] == [h.items.tolist() for h in shuffled.histories]


def test_shuffled_split_has_the_same_targets():
    data = cyclic_data(n_items=8, n_users=5, length=8)
    plain, control = leave_last_out(data), shuffled_split(data, seed=1)
    np.testing.assert_array_equal(plain.val_targets, control.val_targets)
    np.testing.assert_array_equal(plain.test_targets, control.test_targets)


def test_global_time_split_cuts_everyone_at_one_time():
    # user 1: items at t=0,1,2,3; user 2: at t=10,11; user 3: at t=2,12
    ids = list(range(100, 106))
    from components.data.columns import TIMESTAMP_COL, USER_COL

    frame = interactions_frame({1: [0, 1, 2, 3], 2: [4, 5], 3: [1, 4]}, item_ids=ids)
    stamps = {1: [0, 1, 2, 3], 2: [10, 11], 3: [2, 12]}
    frame[TIMESTAMP_COL] = [t for user in (1, 2, 3) for t in stamps[user]]
    assert frame[USER_COL].tolist() == [1, 1, 1, 1, 2, 2, 3, 3]
    data = InteractionData.from_frames(items_frame(ids), frame)
    val_cut, test_cut = time_cutoffs(data, test_quantile=0.8, val_quantile=0.3)
    split = global_time_split(data, test_quantile=0.8, val_quantile=0.3)
    # every training history ends before the test cut-off
    for history in split.test_train.histories:
        assert (history.timestamps < test_cut).all()
    for history in split.test_histories:
        assert len(history) > 0
    assert test_cut == 11  # 80% quantile of [0,1,2,2,3,10,11,12]
    # user 2 (history before 11, next at 11) and user 3 (history at 2, next at 12) are scored
    assert split.eval_users.tolist() == [2, 3]
    assert split.test_targets.tolist() == [5, 4]
    assert val_cut < test_cut
    with pytest.raises(ValueError, match="val_quantile"):
        global_time_split(data, test_quantile=0.5, val_quantile=0.6)


def test_evaluate_on_split_gives_protocol_metrics():
    data = cyclic_data(n_items=6, n_users=6, length=6)
    split = leave_last_out(data)
    model = build_model("popularity").fit(split.test_train)
    result = evaluate_on_split(model, split, "test", bootstrap_samples=20)
    assert result.users == len(split.test_targets)
    assert set(result.metrics) == {"hr@10", "ndcg@10", "mrr@10", "recall@20"}
    # six items, at most four unseen: every target is in the top 10
    assert result.metrics["hr@10"] == 1.0
    with pytest.raises(ValueError, match="side"):
        evaluate_on_split(model, split, "train")
