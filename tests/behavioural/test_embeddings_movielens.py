"""What the item embeddings understand about real MovieLens films (ml-latest-small).

The catalogue is encoded once with the ONNX Runtime backend in fp32, which agrees with the torch
fp32 path to a cosine of 0.9999+ (tests/unit/test_embed_speed_paths.py) and is about twice as fast.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest

from components.data.columns import CATEGORIES_COL, ITEM_COL, TITLE_COL
from components.data.sources import read_movielens
from components.embed import TextEncoder, encode_query, item_texts, load_encoder

pytestmark = pytest.mark.behavioural
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def catalogue(movielens_dir) -> pd.DataFrame:
    return read_movielens(movielens_dir).items.sort_values(ITEM_COL).reset_index(drop=True)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def encoder(artifacts) -> TextEncoder:
    return TextEncoder(None, backend="onnx", artifacts_dir=artifacts)


@pytest.fixture(scope="module")
def vectors(catalogue, encoder) -> np.ndarray:
    return encoder.encode(item_texts(catalogue))


def genres(catalogue: pd.DataFrame, rows) -> list[set[str]]:
    return [set(str(catalogue.loc[row, CATEGORIES_COL]).split("|")) for row in rows]


def nearest(vectors: np.ndarray, query: np.ndarray, k: int, exclude: int | None = None) -> np.ndarray:
    scores = vectors @ query
    if exclude is not None:
        scores[exclude] = -np.inf
    return np.argsort(-scores, kind="stable")[:k]


def test_toy_story_neighbours_are_animated_or_childrens_films(catalogue, vectors):
    toy_story = catalogue.index[catalogue[TITLE_COL] == "Toy Story (1995)"]
    assert len(toy_story) == 1
    row = int(toy_story[0])
    neighbours = nearest(vectors, vectors[row], 10, exclude=row)
    family = [bool(g & {"Animation", "Children"}) for g in genres(catalogue, neighbours)]
    titles = catalogue.loc[neighbours, TITLE_COL].tolist()
    assert sum(family) >= 6, f"only {sum(family)}/10 animated or children's: {titles}"


def test_a_query_for_space_returns_mostly_sci_fi(catalogue, vectors, encoder):
    # Top 20, not 10: titles that merely contain the word ("Office Space (1999)", "Room at the
    # Top") take about half of the first ten; from 20 on, sci-fi is a clear majority (~10% base rate).
    hits = nearest(vectors, encode_query(encoder, "space"), 20)
    sci_fi = ["Sci-Fi" in g for g in genres(catalogue, hits)]
    titles = catalogue.loc[hits, TITLE_COL].tolist()
    assert sum(sci_fi) >= 12, f"only {sum(sci_fi)}/20 sci-fi: {titles}"
    base_rate = np.mean(["Sci-Fi" in g for g in genres(catalogue, catalogue.index)])
    assert sum(sci_fi[:10]) / 10 > 3 * base_rate


def test_a_query_ranks_its_genre_above_an_unrelated_one(catalogue, vectors, encoder):
    """A control for the test above: a horror query must not pull sci-fi to the top as well."""
    hits = nearest(vectors, encode_query(encoder, "a scary horror movie"), 10)
    horror = sum("Horror" in g for g in genres(catalogue, hits))
    sci_fi_only = sum(g == {"Sci-Fi"} for g in genres(catalogue, hits))
    assert horror >= 6 and sci_fi_only <= 2


def test_embeddings_are_deterministic_across_runs(catalogue, vectors, artifacts):
    texts = item_texts(catalogue)[:300]
    # A second, independently loaded encoder of each backend gives the same vectors.
    fresh_onnx = TextEncoder(None, backend="onnx", artifacts_dir=artifacts).encode(texts)
    np.testing.assert_allclose(fresh_onnx, vectors[:300], atol=1e-6)
    torch_first = load_encoder(None, 128).encode(texts)
    torch_second = TextEncoder(None).encode(texts)
    np.testing.assert_allclose(torch_first, torch_second, atol=1e-6)
    assert ((torch_first * vectors[:300]).sum(axis=1)).min() > 0.9999


def test_batches_by_token_count_pad_little_on_the_real_catalogue(catalogue, encoder, monkeypatch):
    texts = item_texts(catalogue)
    real = sum(
        len(ids) for ids in encoder.tokenizer(texts, truncation=True, max_length=encoder.max_length)["input_ids"]
    )
    slots = []
    monkeypatch.setattr(
        encoder,
        "_run_onnx",
        lambda batch: (
            slots.append(batch["attention_mask"].size)
            or np.zeros((len(batch["attention_mask"]), encoder.dim), np.float32)
        ),
    )
    encoder.encode(texts, batch_size=64)
    # Batched by characters (as sentence-transformers does), the same catalogue pads by 31%.
    assert real <= sum(slots) <= 1.03 * real
