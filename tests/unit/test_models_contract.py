"""Every recommender honours one contract; each model also has known-answer tests.

To cover a new model, subclass :class:`RecommenderContract` with ``model_name`` (and ``config``
if needed) and name the class ``Test...``; ``test_every_registered_model_has_a_contract_test``
fails until you do.
"""

# Telemetry and network switches are set once for every test in tests/conftest.py.

import sys
from pathlib import Path

import numpy as np
import pydantic
import pytest

from components.data.dataset import History, InteractionData
from components.models import MODEL_REGISTRY, LMContent, Popularity, build_model, load_model
from components.models.base import Recommender, top_k
from components.models.lm_content import fit_whitening
from tests.unit._model_fixtures import ACTION, DRAMA, HISTORIES, cluster_vectors, tiny_data

# --------------------------------------------------------------------------- the shared contract


class RecommenderContract:
    """Mixin: the behaviour every registered recommender must have, on the tiny two-cluster data."""

    model_name: str = ""
    config: dict = {}

    def build(self) -> Recommender:
        return build_model(self.model_name, dict(self.config))

    def vectors(self, data: InteractionData) -> np.ndarray | None:
        return cluster_vectors(data.n_items) if MODEL_REGISTRY[self.model_name].uses_text else None

    def fit(self, data: InteractionData) -> Recommender:
        return self.build().fit(data, self.vectors(data))

    @pytest.fixture
    def data(self) -> InteractionData:
        return tiny_data()

    @pytest.fixture
    def model(self, data) -> Recommender:
        return self.fit(data)

    def probe_histories(self, data: InteractionData) -> list[History]:
        """Training histories plus an empty one and an unseen single-item one."""
        return list(data.histories) + [History(np.array([], dtype=np.int64)), History(np.array([3]))]

    # -- the contract
    def test_is_registered_under_its_name(self, model):
        assert MODEL_REGISTRY[self.model_name] is type(model)
        assert model.name == self.model_name

    def test_fit_returns_the_model_and_sets_n_items(self, data):
        model = self.build()
        assert model.fit(data, self.vectors(data)) is model
        assert model.n_items == data.n_items

    def test_score_shape_and_finite(self, model, data):
        histories = self.probe_histories(data)
        scores = np.asarray(model.score(histories))
        assert scores.shape == (len(histories), data.n_items)
        assert np.isfinite(scores).all()
        assert np.asarray(model.score([])).shape[0] == 0

    def test_recommend_excludes_seen_items_and_sorts_scores(self, model, data):
        k = 3
        histories = self.probe_histories(data)
        indexes, scores = model.recommend(histories, k)
        assert indexes.shape == (len(histories), k) and scores.shape == (len(histories), k)
        full = np.asarray(model.score(histories))
        for row, history in enumerate(histories):
            assert not set(indexes[row].tolist()) & set(history.items.tolist())
            assert len(set(indexes[row].tolist())) == k
            assert np.all(np.diff(scores[row]) <= 0), "scores must be best first"
            assert np.isfinite(scores[row]).all()
            np.testing.assert_allclose(scores[row], full[row, indexes[row]], rtol=1e-6)
            unseen = np.setdiff1d(np.arange(data.n_items), history.items)
            # nothing unseen that was left out scores strictly better than the k-th pick
            assert full[row, unseen].max() == pytest.approx(scores[row, 0])
            left_out = np.setdiff1d(unseen, indexes[row])
            assert (full[row, left_out] <= scores[row, -1] + 1e-6).all()

    def test_recommend_without_exclusion_may_return_seen_items(self, model, data):
        histories = self.probe_histories(data)
        indexes, scores = model.recommend(histories, data.n_items, exclude_seen=False)
        assert indexes.shape == (len(histories), data.n_items)
        for row in range(len(histories)):
            assert sorted(indexes[row].tolist()) == list(range(data.n_items))

    def test_recommend_k_is_clipped_to_the_catalogue(self, model, data):
        indexes, _ = model.recommend([History(np.array([], dtype=np.int64))], data.n_items + 5)
        assert indexes.shape == (1, data.n_items)

    def test_save_load_roundtrip_gives_identical_scores(self, model, data, tmp_path):
        model.save(tmp_path / "model")
        loaded = load_model(tmp_path / "model")
        assert type(loaded) is type(model)
        assert loaded.n_items == model.n_items
        assert loaded.config == model.config
        histories = self.probe_histories(data)
        np.testing.assert_array_equal(np.asarray(loaded.score(histories)), np.asarray(model.score(histories)))
        a, b = loaded.recommend(histories, 4), model.recommend(histories, 4)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])

    def test_deterministic(self, data):
        histories = self.probe_histories(data)
        first, second = self.fit(data), self.fit(data)
        np.testing.assert_array_equal(np.asarray(first.score(histories)), np.asarray(second.score(histories)))
        np.testing.assert_array_equal(np.asarray(first.score(histories)), np.asarray(first.score(histories)))

    def test_score_does_not_change_the_histories(self, model, data):
        histories = self.probe_histories(data)
        before = [h.items.copy() for h in histories]
        model.recommend(histories, 3)
        for history, items in zip(histories, before):
            np.testing.assert_array_equal(history.items, items)


class TestPopularityContract(RecommenderContract):
    model_name = "popularity"


class TestLMContentContract(RecommenderContract):
    model_name = "lm_content"
    config = {"whiten_dim": None}


class TestLMContentWhitenedContract(RecommenderContract):
    model_name = "lm_content"
    config = {"whiten_dim": 3}


def test_every_registered_model_has_a_contract_test():
    # Contract subclasses for other models live in sibling test modules: import them all first,
    # so this guard gives the same answer whether this file runs alone or with the rest.
    import importlib.util

    for path in sorted(Path(__file__).parent.glob("test_models_*.py")):
        if path.stem not in sys.modules and path.resolve() != Path(__file__).resolve():
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module
            spec.loader.exec_module(module)
    covered = {cls.model_name for cls in RecommenderContract.__subclasses__() if cls.__name__.startswith("Test")}
    shipped = {name for name, cls in MODEL_REGISTRY.items() if cls.__module__.startswith("components.models")}
    assert shipped <= covered, f"add a RecommenderContract subclass for: {sorted(shipped - covered)}"


# --------------------------------------------------------------------------- shared helpers


def test_build_model_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown model 'nope'.*lm_content.*popularity"):
        build_model("nope")


def test_build_model_validates_the_config():
    with pytest.raises(pydantic.ValidationError):
        build_model("lm_content", {"recency_half_life": "not a number"})


def test_top_k_orders_best_first_and_breaks_full_ties_by_index():
    scores = np.array([[1.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    indexes, values = top_k(scores, 4)
    assert indexes.tolist() == [[1, 3, 2, 0], [0, 1, 2, 3]]
    assert values.tolist() == [[3.0, 3.0, 2.0, 1.0], [0.0, 0.0, 0.0, 0.0]]
    indexes, _ = top_k(scores, 10)
    assert indexes.shape == (2, 4)


def test_top_k_breaks_ties_at_the_cut_by_the_lower_index():
    scores = np.array([[1, 1, 0, 0, 0, 0, 0, 0, 2, 1]], dtype=np.float32)
    indexes, _ = top_k(scores, 9)
    # 8 (2.0), then 0, 1, 9 (1.0), then five of the six zeros: the lowest indexes 2..6, not 7
    assert indexes.tolist() == [[8, 0, 1, 9, 2, 3, 4, 5, 6]]


# --------------------------------------------------------------------------- popularity known answers


def test_popularity_ranks_by_count():
    data = tiny_data()
    model = Popularity().fit(data)
    expected_counts = [3, 2, 1, 0, 3, 2, 1, 1]
    assert data.item_counts().tolist() == expected_counts
    np.testing.assert_array_equal(model.score([History(np.array([], dtype=np.int64))])[0], expected_counts)
    # equal counts: the lower index first
    indexes, scores = model.recommend([History(np.array([], dtype=np.int64))], 4)
    assert indexes.tolist() == [[0, 4, 1, 5]]
    assert scores.tolist() == [[3, 3, 2, 2]]
    # the same answer for every user, minus what they have seen
    indexes, _ = model.recommend([History(np.array(HISTORIES[1]))], 2)
    assert indexes.tolist() == [[4, 5]]


def test_popularity_ignores_the_history():
    model = Popularity().fit(tiny_data())
    scores = model.score([History(np.array([0])), History(np.array([7, 6]))])
    np.testing.assert_array_equal(scores[0], scores[1])


# --------------------------------------------------------------------------- lm_content known answers


@pytest.mark.parametrize("whiten_dim", [None, 1])
def test_lm_content_recommends_the_same_cluster(whiten_dim):
    # whiten_dim=1 keeps only the cluster axis (with 8 items, more whitened components would
    # blow the within-cluster noise up to the cluster signal's variance)
    data = tiny_data()
    model = LMContent({"whiten_dim": whiten_dim}).fit(data, cluster_vectors())
    histories = [
        History(np.array(HISTORIES[1])),
        History(np.array(HISTORIES[4])),
        History(np.array([3])),
        History(np.array([7])),
    ]
    indexes, _ = model.recommend(histories, 3)
    assert indexes[0, 0] == 3  # the only unseen Action item
    assert indexes[1, 0] == 7  # the only unseen Drama item
    assert set(indexes[2].tolist()) == {0, 1, 2}  # the rest of the Action cluster
    assert set(indexes[3].tolist()) <= set(DRAMA)
    # a same-cluster item outscores every other-cluster item
    scores = model.score(histories)
    assert scores[0, ACTION].min() > scores[0, DRAMA].max()
    assert scores[1, DRAMA].min() > scores[1, ACTION].max()


def test_lm_content_newer_items_weigh_more():
    data = tiny_data()
    model = LMContent({"whiten_dim": None, "recency_half_life": 1.0}).fit(data, cluster_vectors())
    action_then_drama = History(np.array([0, 4]))
    drama_then_action = History(np.array([4, 0]))
    assert model.recommend([action_then_drama], 1)[0][0, 0] in DRAMA
    assert model.recommend([drama_then_action], 1)[0][0, 0] in ACTION


def test_lm_content_max_history_keeps_only_the_newest():
    data = tiny_data()
    model = LMContent({"whiten_dim": None, "max_history": 1}).fit(data, cluster_vectors())
    history = History(np.array([0, 1, 2, 4]))  # mostly Action, but the newest is Drama
    assert model.recommend([history], 1)[0][0, 0] in DRAMA


def test_lm_content_empty_history_scores_zero():
    model = LMContent({"whiten_dim": None}).fit(tiny_data(), cluster_vectors())
    np.testing.assert_array_equal(model.score([History(np.array([], dtype=np.int64))]), 0.0)


def test_lm_content_transform_maps_queries_into_item_space():
    vectors = cluster_vectors()
    for whiten_dim in (None, 1):
        model = LMContent({"whiten_dim": whiten_dim}).fit(tiny_data(), vectors)
        query = model.transform(vectors[1])
        assert query.shape == (1, model.item_matrix.shape[1])
        assert np.linalg.norm(query) == pytest.approx(1.0, abs=1e-5)
        similarities = model.item_matrix @ query[0]
        assert similarities[1] == pytest.approx(similarities.max())
        assert similarities[ACTION].min() > similarities[DRAMA].max()
        np.testing.assert_allclose(model.transform(vectors), model.item_matrix, atol=1e-6)


def test_lm_content_needs_aligned_vectors():
    data = tiny_data()
    with pytest.raises(ValueError, match="item text vectors"):
        LMContent().fit(data, None)
    with pytest.raises(ValueError, match="item text vectors"):
        LMContent().fit(data, cluster_vectors(n_items=data.n_items - 1))


def test_fit_whitening_gives_identity_covariance():
    rng = np.random.default_rng(0)
    raw = rng.standard_normal((300, 16)) @ rng.standard_normal((16, 16)) * np.linspace(0.1, 5, 16) + 3.0
    mean, projection = fit_whitening(raw.astype(np.float32), 6)
    assert projection.shape == (16, 6)
    assert mean.shape == (16,)
    whitened = (raw - mean) @ projection
    np.testing.assert_allclose(whitened.mean(axis=0), 0.0, atol=1e-3)
    np.testing.assert_allclose(np.cov(whitened, rowvar=False), np.eye(6), atol=1e-3)
    # the components come in order of explained variance of the raw data
    raw_var = [np.var((raw - mean) @ (projection[:, j] / np.linalg.norm(projection[:, j]))) for j in range(6)]
    assert raw_var == sorted(raw_var, reverse=True)


def test_fit_whitening_identity_when_disabled_or_too_few_items():
    vectors = cluster_vectors(n_items=8, dim=8)
    for dim in (None, 8, 20):
        mean, projection = fit_whitening(vectors, dim)
        np.testing.assert_array_equal(mean, 0.0)
        np.testing.assert_array_equal(projection, np.eye(8))
