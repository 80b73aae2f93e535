"""The bundle's per-user history index (components.engine.history_index): what it stores equals the
histories the engine used to materialise, it is read lazily, it drops forgotten users, and bundles
written before it (``histories.parquet``) still load."""

# Telemetry and network switches are set once for every test in tests/conftest.py.

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.data.dataset import History, InteractionData
from components.data.erasure import Forgetter, user_key
from components.data.sources import read_movielens
from components.engine import ServingEngine, write_bundle
from components.engine.history_index import (
    INDEX_DIR,
    HistoryIndex,
    HistoryIndexError,
    open_histories,
    write_history_index,
)
from components.models import Popularity
from components.registry.integrity import bundle_sha256

SOME_USERS = 80
KEY = b"k" * 32


@pytest.fixture(scope="module")
def movielens(movielens_dir) -> InteractionData:
    """The first users of the real ml-latest-small: ratings with half stars, real time stamps and lengths."""
    source = read_movielens(movielens_dir, max_users=SOME_USERS)
    return InteractionData.from_frames(source.items, source.interactions)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, movielens) -> Path:
    meta = {"model_name": "popularity", "id_type": "int"}
    return write_bundle(tmp_path_factory.mktemp("index") / "bundle", Popularity().fit(movielens), movielens, None, meta)


def write_legacy_histories(folder: Path, data: InteractionData) -> None:
    """``histories.parquet`` exactly as bundles wrote it before the index (one row per interaction)."""
    rows = [
        (user, int(i), e, float(v), int(t))
        for user, h in zip(data.user_ids, data.histories)
        for i, e, v, t in zip(h.items, h.events, h.values, h.timestamps)
    ]
    pd.DataFrame(rows, columns=["user_id", "item_index", "event", "value", "timestamp"]).to_parquet(
        folder / "histories.parquet", index=False
    )


def materialised(data: InteractionData, normalise=int) -> dict:
    """The dict of every user's History that the engine built at load before the index."""
    return {normalise(u): h for u, h in zip(data.user_ids.tolist(), data.histories)}


def assert_same(history: History, expected: History) -> None:
    assert history.items.dtype == np.int64 and history.timestamps.dtype == np.int64
    assert history.items.tolist() == expected.items.tolist()
    assert history.events == list(expected.events)
    np.testing.assert_array_equal(history.values, np.asarray(expected.values, dtype=np.float64))
    assert history.timestamps.tolist() == expected.timestamps.tolist()


def test_every_user_read_lazily_equals_the_materialised_histories(bundle, movielens):
    index = HistoryIndex.open(bundle / INDEX_DIR)
    expected = materialised(movielens)
    assert len(expected) == SOME_USERS and len(index) == SOME_USERS
    assert isinstance(index.items, np.memmap) and isinstance(index.users, np.memmap)  # nothing read at open
    assert list(index) == sorted(expected)  # plain ints, sorted
    assert all(type(u) is int for u in index)
    for user, history in expected.items():
        assert user in index and index.rows_of(user) == len(history)
        assert_same(index[user], history)
        assert_same(index.get(user, newest=7), history.tail(7))
    assert index.values.dtype == np.float32  # half-star ratings and NaN are exact in float32
    meta = json.loads((bundle / INDEX_DIR / "index.json").read_text())
    assert meta["rows"] == sum(len(h) for h in movielens.histories) and meta["id_type"] == "int"


def test_the_engine_serves_from_the_index(bundle, movielens):
    engine = ServingEngine(bundle)
    user = int(movielens.user_ids[3])
    assert_same(engine.history_for(user), movielens.histories[3].tail(500))
    seen = set(engine.catalogue.item_ids[movielens.histories[3].items].tolist())
    recs, source = engine.recommend_history(engine.history_for(user), 20)
    assert source == "popularity" and len(recs) == 20 and not seen & {r.item_id for r in recs}


def test_an_unknown_user_is_absent_everywhere(bundle):
    index = HistoryIndex.open(bundle / INDEX_DIR)
    for unknown in (0, -1, 10**6, 2**70, "1", 1.0, None, True):
        assert unknown not in index
        assert index.get(unknown) is None and index.rows_of(unknown) == 0
    with pytest.raises(KeyError):
        index[10**6]
    assert index.rows_of_text("0001") == 0 and index.rows_of_text("x") == 0
    assert index.rows_of_text("1") == index.rows_of(1) > 0
    engine = ServingEngine(bundle)
    assert engine.history_for(10**6) is None
    assert engine.recommend_history(engine.history_for(10**6), 5)[1] == "popularity"


def test_string_ids_of_any_length_round_trip(tmp_path):
    users = ["u-10", "a", "u-2", "zz-very-long-user-id", "ü-ñ"]
    histories = [History(np.arange(n), ["view"] * n, np.full(n, 0.1), np.arange(n) + 5) for n in (3, 1, 0, 2, 4)]
    index = HistoryIndex.open(write_history_index(tmp_path / INDEX_DIR, users, histories, "str"))
    assert list(index) == sorted(users)
    for user, history in zip(users, histories):
        assert_same(index[user], history)
    assert index.values.dtype == np.float64  # 0.1 is not exact in float32, so float64 is kept
    for unknown in ("u-1", "u-100", "zz-very-long-user-id-longer", "", 1):
        assert unknown not in index


def test_a_forgotten_user_is_dropped_from_memory_but_the_bundle_is_untouched(bundle, movielens):
    from components.privacy.audit import _scan_folder
    from components.privacy.purge import _folder_holds

    digest = bundle_sha256(bundle)
    engine = ServingEngine(bundle)
    gone = int(movielens.user_ids[5])
    engine.recommend_user(gone, engine.history_for(gone), 5)
    assert engine.holds_user(gone) == {"history": True, "cached_ranking": True}
    assert engine.forget_users(lambda user: user == gone) == [gone]
    assert engine.holds_user(gone) == {"history": False, "cached_ranking": False}
    assert gone not in engine.histories and gone not in list(engine.histories)
    assert engine.history_for(gone) is None and len(engine.histories) == SOME_USERS - 1
    assert engine.recommend_history(engine.history_for(gone), 5)[1] == "popularity"
    assert engine.forget_users(lambda user: user == gone) == []  # once only
    assert bundle_sha256(bundle) == digest  # the registered bundle is read-only; the purge retires it
    # ... and the purge and the audit find the user in the bundle's files until then.
    assert _folder_holds(Forgetter(KEY, {user_key(KEY, gone)}), bundle.parent)
    assert not _folder_holds(Forgetter(KEY, {user_key(KEY, 10**6)}), bundle.parent)
    found = _scan_folder(bundle.parent, str(gone))
    assert found == [{"place": "file", "path": str(bundle / INDEX_DIR), "rows": len(movielens.histories[5])}]


def test_a_bundle_written_before_the_index_still_loads(bundle, movielens, tmp_path):
    from components.privacy.purge import _folder_holds

    old = tmp_path / "old-bundle"
    shutil.copytree(bundle, old)
    shutil.rmtree(old / INDEX_DIR)
    write_legacy_histories(old, movielens)
    legacy, current = ServingEngine(old), ServingEngine(bundle)
    assert not isinstance(legacy.histories.items, np.memmap)  # compact columns in memory
    assert list(legacy.histories) == list(current.histories)
    for user, history in materialised(movielens).items():
        assert_same(legacy.histories[user], history)
        assert legacy.recommend_history(legacy.history_for(user), 10) == current.recommend_history(
            current.history_for(user), 10
        )
    gone = int(movielens.user_ids[0])
    assert legacy.forget_users(lambda user: user == gone) == [gone] and legacy.history_for(gone) is None
    assert _folder_holds(Forgetter(KEY, {user_key(KEY, gone)}), old)


def test_a_legacy_bundle_with_string_ids(tmp_path, movielens):
    interactions = movielens.histories
    users = [f"u{u}" for u in movielens.user_ids.tolist()]
    frame = pd.DataFrame(
        [
            (user, int(i), e, float(v), int(t))
            for user, h in zip(users, interactions)
            for i, e, v, t in zip(h.items, h.events, h.values, h.timestamps)
        ],
        columns=["user_id", "item_index", "event", "value", "timestamp"],
    )
    frame.to_parquet(tmp_path / "histories.parquet", index=False)
    index = open_histories(tmp_path, "str")
    assert list(index) == sorted(users)
    for user, history in zip(users, interactions):
        assert_same(index[user], history)


def test_bad_input_is_refused_with_the_problem_named(tmp_path, bundle):
    one = [History(np.array([0, 1]))]
    with pytest.raises(HistoryIndexError, match="more than one history"):
        write_history_index(tmp_path / "a", [7, 7], one * 2, "int")
    with pytest.raises(HistoryIndexError, match="not a 64-bit integer"):
        write_history_index(tmp_path / "b", ["u1"], one, "int")
    with pytest.raises(HistoryIndexError, match="NUL"):
        write_history_index(tmp_path / "c", ["u\x00"], one, "str")
    with pytest.raises(HistoryIndexError, match="item index 1, outside the catalogue"):
        write_history_index(tmp_path / "d", [1], one, "int", n_items=1)
    with pytest.raises(HistoryIndexError, match="unknown id_type"):
        write_history_index(tmp_path / "e", [1], one, "uuid")
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    (broken / INDEX_DIR / "offsets.npy").unlink()
    with pytest.raises(HistoryIndexError, match="offsets.npy is missing"):
        ServingEngine(broken)
    np.save(broken / INDEX_DIR / "offsets.npy", np.zeros(3, dtype=np.int64))
    with pytest.raises(HistoryIndexError, match="offsets do not cover the rows"):
        ServingEngine(broken)
    shutil.rmtree(broken / INDEX_DIR)
    with pytest.raises(HistoryIndexError, match="holds no histories"):
        ServingEngine(broken)
    with pytest.raises(HistoryIndexError, match="ids of type 'int', the bundle says 'str'"):
        open_histories(bundle, "str")
