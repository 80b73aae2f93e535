"""Micro-batched scoring: batched answers equal unbatched ones, batches form and stay bounded,
a failing request fails only itself, and a model swap never mixes models in a batch."""

import asyncio

import numpy as np
import pytest

from components.data.dataset import History, InteractionData
from components.engine import ScoreRequest, ServingEngine, write_bundle
from components.models import EASE, LMSASRec
from serving.batching import ScoringBatcher
from tests.unit._model_fixtures import interactions_frame, items_frame

N_ITEMS = 40
FAST = {"hidden": 16, "max_len": 12, "batch_size": 8, "epochs": 2, "progress": False, "device": "cpu", "text_dim": None}


def random_data(n_users: int = 30, seed: int = 0) -> InteractionData:
    rng = np.random.default_rng(seed)
    ids = list(range(100, 100 + N_ITEMS))
    base = InteractionData.from_frames(items_frame(ids), interactions_frame({1: [0]}, item_ids=ids))
    histories = [History(rng.choice(N_ITEMS, size=rng.integers(3, 20), replace=False)) for _ in range(n_users)]
    return InteractionData(base.catalogue, np.arange(n_users), histories)


def text_vectors(seed: int = 1) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((N_ITEMS, 8)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def engines(tmp_path_factory) -> dict[str, ServingEngine]:
    data = random_data()
    out = {}
    for name, model in (("lm_sasrec", LMSASRec(FAST).fit(data, text_vectors())), ("ease", EASE().fit(data))):
        meta = {"model_name": name, "snapshot_id": "snap", "id_type": "int"}
        out[name] = ServingEngine(
            write_bundle(tmp_path_factory.mktemp(name) / "bundle", model, data, text_vectors(), meta)
        )
    return out


def mixed_requests(seed: int = 7) -> list[ScoreRequest]:
    """Histories of every length up to past max_len, with each request option, and empty ones."""
    rng = np.random.default_rng(seed)
    requests = []
    for length in (1, 2, 5, 11, 12, 13, 30):
        items = rng.choice(N_ITEMS, size=length, replace=False)
        requests.append(ScoreRequest(History(items), 10))
        requests.append(ScoreRequest(History(items), 5, exclude_seen=False))
        requests.append(ScoreRequest(History(items), 7, categories=["Drama"]))
    requests.append(ScoreRequest(None, 10))
    requests.append(ScoreRequest(History(np.array([], dtype=np.int64)), 3))
    return requests


def assert_same(batched, alone) -> None:
    (recs_a, source_a), (recs_b, source_b) = batched, alone
    assert source_a == source_b
    assert [r.item_id for r in recs_a] == [r.item_id for r in recs_b]
    assert [r.explanation for r in recs_a] == [r.explanation for r in recs_b]
    np.testing.assert_allclose([r.score for r in recs_a], [r.score for r in recs_b], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["lm_sasrec", "ease"])
def test_batched_answers_equal_unbatched(engines, name):
    engine = engines[name]
    requests = mixed_requests()
    batched = engine.recommend_histories(requests)
    assert len(batched) == len(requests)
    for request, answer in zip(requests, batched):
        assert_same(
            answer,
            engine.recommend_history(
                request.history, request.k, exclude_seen=request.exclude_seen, categories=request.categories
            ),
        )
    # the options took effect: a filtered answer is all Drama, exclude_seen keeps seen items out
    first = requests[0]
    assert not set(r.item_id for r in batched[0][0]) & {100 + i for i in first.history.items}
    drama = {engine.catalogue.item_ids[i] for i, cats in enumerate(engine.catalogue.categories) if "Drama" in cats}
    assert {r.item_id for r in batched[2][0]} <= drama
    assert batched[-2][1] == "popularity" and batched[-1][1] == "popularity"


def run(coroutine):
    return asyncio.run(coroutine)


def test_the_batcher_groups_concurrent_requests_up_to_max_batch(engines):
    engine = engines["lm_sasrec"]
    requests = mixed_requests()
    batcher = ScoringBatcher(max_batch=8)

    async def all_at_once():
        return await asyncio.gather(*(batcher.recommend(engine, r) for r in requests))

    try:
        answers = run(all_at_once())
    finally:
        batcher.close()
    for request, answer in zip(requests, answers):
        assert_same(
            answer,
            engine.recommend_history(
                request.history, request.k, exclude_seen=request.exclude_seen, categories=request.categories
            ),
        )
    assert batcher.largest_batch == 8
    assert batcher.batches == -(-len(requests) // 8)  # every request joined a full batch but the last


def test_a_lone_request_is_sent_at_once(engines):
    batcher = ScoringBatcher(max_batch=64)

    async def one_by_one():
        return [await batcher.recommend(engines["ease"], r) for r in mixed_requests()[:3]]

    try:
        answers = run(one_by_one())
    finally:
        batcher.close()
    assert len(answers) == 3 and batcher.batches == 3 and batcher.largest_batch == 1


def test_a_failing_request_fails_only_itself(engines):
    engine = engines["lm_sasrec"]
    good = mixed_requests()[:4]
    bad = ScoreRequest(History(np.array([N_ITEMS + 5])), 10)  # an index outside the catalogue
    batcher = ScoringBatcher(max_batch=16)

    async def together():
        return await asyncio.gather(
            *(batcher.recommend(engine, r) for r in [*good[:2], bad, *good[2:]]), return_exceptions=True
        )

    try:
        answers = run(together())
    finally:
        batcher.close()
    assert isinstance(answers[2], IndexError)
    for request, answer in zip(good, answers[:2] + answers[3:]):
        assert_same(
            answer,
            engine.recommend_history(
                request.history, request.k, exclude_seen=request.exclude_seen, categories=request.categories
            ),
        )


def test_requests_keep_the_engine_they_started_with(engines):
    request = mixed_requests()[3]
    batcher = ScoringBatcher(max_batch=16)

    async def both_models():
        return await asyncio.gather(
            batcher.recommend(engines["ease"], request), batcher.recommend(engines["lm_sasrec"], request)
        )

    try:
        from_ease, from_lm = run(both_models())
    finally:
        batcher.close()
    assert batcher.batches == 1
    assert from_ease[1] == "ease" and from_lm[1] == "lm_sasrec"
    assert_same(from_lm, engines["lm_sasrec"].recommend_history(request.history, request.k))


def test_max_batch_must_be_positive():
    with pytest.raises(ValueError, match="max_batch must be at least 1"):
        ScoringBatcher(max_batch=0)


def test_the_cached_item_table_follows_the_weights():
    """SASRec keeps its item table between scoring calls; any change to a weight recomputes it."""
    import torch

    model = LMSASRec(FAST).fit(random_data(), text_vectors())
    histories = [History(np.array([1, 2, 3])), History(np.array([4]))]
    before = model.score(histories)
    np.testing.assert_array_equal(model.score(histories), before)  # served from the cache
    with torch.no_grad():
        model.network.text_projection.weight.mul_(2.0)  # an in-place change, as an optimiser step makes
    after = model.score(histories)
    assert not np.allclose(after, before)
    model._table_cache = None  # a fresh computation agrees with the recomputed cache
    np.testing.assert_array_equal(model.score(histories), after)
