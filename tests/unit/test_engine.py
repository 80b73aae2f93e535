"""The serving engine over a bundle written from a tiny fitted lm_content model."""

# Telemetry and network switches are set once for every test in tests/conftest.py.

import json
from pathlib import Path

import numpy as np
import pytest

from components.data.dataset import InteractionData
from components.engine import MAX_HISTORY, ServingEngine, write_bundle
from components.models import LMContent, Popularity
from tests.unit._model_fixtures import (
    ACTION,
    DRAMA,
    HISTORIES,
    ITEM_IDS,
    T0,
    cluster_vectors,
    interactions_frame,
    items_frame,
    tiny_data,
)

ACTION_IDS = {ITEM_IDS[i] for i in ACTION}
DRAMA_IDS = {ITEM_IDS[i] for i in DRAMA}
NOW = T0 + 10_000


def ids(recs) -> list:
    return [r.item_id for r in recs]


@pytest.fixture(scope="module")
def data() -> InteractionData:
    return tiny_data()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, data) -> Path:
    model = LMContent({"whiten_dim": None}).fit(data, cluster_vectors())
    meta = {
        "model_name": "lm_content",
        "snapshot_id": "snap-test",
        "feedback_watermark": 7,
        "id_type": "int",
        "encoder_id": "enc-test",
    }
    return write_bundle(tmp_path_factory.mktemp("bundle") / "bundle", model, data, cluster_vectors(), meta)


@pytest.fixture(scope="module")
def engine(bundle) -> ServingEngine:
    return ServingEngine(bundle)


def test_bundle_layout_and_metadata(bundle, engine, data):
    for name in (
        "bundle.json",
        "catalogue.parquet",
        "histories/index.json",
        "histories/users.npy",
        "popularity.npy",
        "text_vectors.npy",
        "model/model.json",
        "model/state.npz",
    ):
        assert (bundle / name).exists(), name
    assert engine.version_info == {
        "model_name": "lm_content",
        "snapshot_id": "snap-test",
        "feedback_watermark": 7,
        "encoder_id": "enc-test",
    }
    assert engine.model.name == "lm_content"
    assert engine.catalogue.item_ids.tolist() == ITEM_IDS
    assert sorted(engine.histories) == sorted(HISTORIES)
    for user, indexes in HISTORIES.items():
        assert engine.histories[user].items.tolist() == indexes
    np.testing.assert_array_equal(engine.popularity, data.item_counts())


def test_write_bundle_replaces_an_existing_folder(tmp_path, data):
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "stale.txt").write_text("old")
    write_bundle(folder, Popularity().fit(data), data, None, {"model_name": "popularity"})
    assert not (folder / "stale.txt").exists()
    assert not (folder / "text_vectors.npy").exists()
    engine = ServingEngine(folder)
    assert engine.text_vectors is None and engine.id_type == "int"
    with pytest.raises(RuntimeError, match="no text vectors"):
        engine.search_vector(np.ones(8, dtype=np.float32), 3)


def test_recommend_excludes_seen_items(engine):
    for user, indexes in HISTORIES.items():
        recs, source = engine.recommend_history(engine.history_for(user), 5)
        assert source == "lm_content"
        seen = {ITEM_IDS[i] for i in indexes}
        assert recs and not seen & set(ids(recs))
        assert [r.rank for r in recs] == list(range(1, len(recs) + 1))
        assert [r.score for r in recs] == sorted((r.score for r in recs), reverse=True)
        assert all(isinstance(r.item_id, int) for r in recs)


def test_recommend_follows_the_users_cluster(engine):
    assert engine.recommend_history(engine.history_for(1), 1)[0][0].item_id == 13  # the unseen Action item
    assert engine.recommend_history(engine.history_for(4), 1)[0][0].item_id == 17  # the unseen Drama item


def test_recommend_without_exclusion_can_return_seen_items(engine):
    recs, _ = engine.recommend_history(engine.history_for(1), 8, exclude_seen=False)
    assert set(ids(recs)) == set(ITEM_IDS)


def test_request_time_events_change_the_recommendations(engine):
    before, _ = engine.recommend_history(engine.history_for(1), 3)
    assert ids(before)[0] in ACTION_IDS
    recent = [(14, "like", None, NOW), (15, "like", None, NOW + 1), (16, "rating", 5.0, NOW + 2)]
    history = engine.history_for(1, recent)
    assert history.items.tolist() == HISTORIES[1] + [4, 5, 6]
    after, _ = engine.recommend_history(history, 3)
    assert ids(after) != ids(before)
    assert ids(after)[0] == 17  # the new Drama taste wins, and the Drama items just seen are excluded
    assert not {14, 15, 16} & set(ids(after))


def test_request_time_events_make_an_unknown_user_known(engine):
    assert engine.history_for(999) is None
    history = engine.history_for(999, [(17, "click", None, NOW)])
    assert history.items.tolist() == [7]
    recs, source = engine.recommend_history(history, 3)
    assert source == "lm_content"
    assert set(ids(recs)) <= DRAMA_IDS


def test_request_time_events_for_unknown_items_are_ignored(engine):
    history = engine.history_for(1, [(12345, "like", None, NOW), ("not-an-id", "like", None, NOW)])
    assert history.items.tolist() == HISTORIES[1]
    assert engine.history_for(999, [(12345, "like", None, NOW)]) is None


def test_dislike_removes_an_item(engine):
    top = engine.recommend_history(engine.history_for(1), 1)[0][0].item_id
    history = engine.history_for(1, [(top, "dislike", None, NOW)])
    assert history.items.tolist() == HISTORIES[1]  # dislikes never enter the history
    recs, _ = engine.recommend_history(history, 5)
    assert top not in ids(recs)
    recs, _ = engine.recommend_history(history, 8, exclude_seen=False)
    assert top not in ids(recs)


def test_dislike_by_an_unknown_user_removes_the_item_from_the_fallback(engine):
    most_popular = engine.recommend_history(None, 1)[0][0].item_id
    history = engine.history_for(999, [(most_popular, "dislike", None, NOW)])
    recs, _ = engine.recommend_history(history, 5)
    assert most_popular not in ids(recs)


def test_unknown_user_falls_back_to_popularity(engine, data):
    assert engine.history_for(424242) is None
    recs, source = engine.recommend_history(engine.history_for(424242), 4)
    assert source == "popularity"
    # counts 3, 2, 1, 0 | 3, 2, 1, 1: equal counts, lower index first
    assert ids(recs) == [10, 14, 11, 15]
    assert [r.score for r in recs] == [3.0, 3.0, 2.0, 2.0]
    assert all(r.explanation is None for r in recs)


def test_category_filter_only_returns_matching_items(engine):
    recs, _ = engine.recommend_history(engine.history_for(1), 10, categories=["drama"])
    assert recs and set(ids(recs)) <= DRAMA_IDS
    assert set(ids(recs)) == DRAMA_IDS  # user 1 has seen no Drama item
    recs, _ = engine.recommend_history(None, 10, categories=["Thriller"])
    assert set(ids(recs)) == ACTION_IDS
    recs, _ = engine.recommend_history(engine.history_for(1), 10, categories=["Thriller", "Romance"])
    assert set(ids(recs)) == set(ITEM_IDS) - {10, 11, 12}
    assert engine.recommend_history(engine.history_for(1), 10, categories=["Western"])[0] == []


def test_similar_items(engine):
    recs = engine.similar_items(10, 3)
    assert 10 not in ids(recs)
    assert set(ids(recs)) == {11, 12, 13}
    assert set(ids(engine.similar_items("16", 3))) == {14, 15, 17}  # ids arrive as strings too


def test_similar_items_unknown_id_raises_key_error(engine):
    with pytest.raises(KeyError):
        engine.similar_items(999, 3)
    with pytest.raises(KeyError):
        engine.similar_items("not-a-number", 3)


def test_search_vector(engine):
    query = cluster_vectors()[5]
    recs = engine.search_vector(query, 4)
    assert ids(recs)[0] == 15 and set(ids(recs)) == DRAMA_IDS
    recs = engine.search_vector(query, 4, categories=["Action"])
    assert set(ids(recs)) == ACTION_IDS


def test_explanation_names_an_item_from_the_history(engine):
    history = engine.history_for(1)
    titles = {engine.catalogue.titles[i] for i in history.items}
    recs, _ = engine.recommend_history(history, 5)
    for rec in recs:
        assert rec.explanation is not None and rec.explanation.startswith("because you liked ")
        assert rec.explanation.removeprefix("because you liked ") in titles
    # the closest history item explains a recommendation: a Drama pick is explained by a Drama item
    mixed = engine.history_for(1, [(14, "like", None, NOW)])
    recs, _ = engine.recommend_history(mixed, 8, categories=["Drama"])
    assert {r.explanation for r in recs} == {f"because you liked {engine.catalogue.titles[4]}"}


def test_session_history(engine):
    history = engine.session_history([14, 15, 999])
    assert history.items.tolist() == [4, 5]
    recs, _ = engine.recommend_history(history, 2)
    assert set(ids(recs)) <= DRAMA_IDS and not {14, 15} & set(ids(recs))


def test_history_keeps_only_the_newest_events(engine):
    recent = [(ITEM_IDS[i % 8], "view", None, NOW + i) for i in range(MAX_HISTORY + 20)]
    history = engine.history_for(1, recent)
    assert len(history) == MAX_HISTORY
    assert history.timestamps[-1] == NOW + MAX_HISTORY + 19


def test_string_ids(tmp_path):
    item_ids = [f"i{i}" for i in ITEM_IDS]
    interactions = interactions_frame(item_ids=item_ids)
    interactions["user_id"] = "u" + interactions["user_id"].astype(str)
    data = InteractionData.from_frames(items_frame(item_ids=item_ids), interactions)
    folder = write_bundle(
        tmp_path / "b", Popularity().fit(data), data, cluster_vectors(), {"model_name": "popularity", "id_type": "str"}
    )
    engine = ServingEngine(folder)
    assert engine.normalise_id(1) == "1"
    assert sorted(engine.histories) == [f"u{u}" for u in sorted(HISTORIES)]
    recs, source = engine.recommend_history(engine.history_for("u1"), 2)
    assert source == "popularity" and ids(recs) == ["i14", "i15"]
    assert engine.item_index("i16") == 6 and engine.item_index(16) is None
    assert set(ids(engine.similar_items("i16", 3))) == {"i14", "i15", "i17"}
    assert json.loads((folder / "bundle.json").read_text())["id_type"] == "str"


# ---------------------------------------------------------------------------------------------- per-user ranking cache
def test_cached_ranking_equals_fresh_scoring_for_every_user_and_k(bundle):
    engine = ServingEngine(bundle)
    for user in HISTORIES:
        for k in (1, 3, 10, 100):
            fresh, _ = engine.recommend_history(engine.history_for(user), k)
            first = engine.recommend_user(user, engine.history_for(user), k)
            again = engine.recommend_user(user, engine.history_for(user), k)
            assert first == fresh and again == fresh, (user, k)
    assert sorted(engine._ranked) == sorted(HISTORIES)


def test_ranking_cache_is_bounded_and_can_be_turned_off(bundle):
    import gc

    engine = ServingEngine(bundle)
    engine.cache_users = 2
    users = list(HISTORIES)
    for user in users:
        engine.recommend_user(user, engine.history_for(user), 5)
    assert list(engine._ranked) == users[-2:]  # the oldest entries went first
    gc.collect()
    # The cached items are untracked by the collector, so full collections do not slow down as the cache fills.
    assert not any(gc.is_tracked(item) for ranking in engine._ranked.values() for item in ranking)
    off = ServingEngine(bundle)
    off.cache_users = 0
    assert (
        off.recommend_user(users[0], off.history_for(users[0]), 5)
        == off.recommend_history(off.history_for(users[0]), 5)[0]
    )
    assert off._ranked == {}


def test_caches_stay_bounded_under_100k_distinct_keys(bundle, data):
    from components.engine.engine import CATEGORY_MASKS

    engine = ServingEngine(bundle)
    engine.cache_users = 500
    history = data.histories[0]
    for user in range(100_000):
        engine._ranked[f"user-{user}"] = (("x", 1.0, ""),)  # what recommend_user stores per user
    assert len(engine._ranked) == 500
    first = engine.recommend_user("fresh-user", history, 5)
    assert len(engine._ranked) == 500 and "fresh-user" in engine._ranked
    assert first == engine.recommend_user("fresh-user", history, 5)
    for n in range(100_000):
        engine.category_mask([f"genre-{n}"])
    assert len(engine._category_masks) == CATEGORY_MASKS
    action = engine.category_mask(["Action"])
    assert action.tolist() == [True] * 4 + [False] * 4


def test_cache_users_zero_turns_the_ranking_cache_off(bundle, data):
    engine = ServingEngine(bundle)
    engine.cache_users = 0
    engine.recommend_user("someone", data.histories[0], 5)
    assert len(engine._ranked) == 0
