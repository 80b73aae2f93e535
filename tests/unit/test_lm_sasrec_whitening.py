"""LM-SASRec's text input: full-rank whitening on request, the default path unchanged.

WhitenRec-style full whitening needs no extra option: ``text_dim`` set to the encoder's width
keeps every principal component, and ``normalise_text: False`` leaves the whitened vectors as they
are, so the text matrix the network receives has zero mean and identity covariance over the
catalogue. The default (64 components, each row scaled to unit length) must stay what it was.
"""

import numpy as np
import pytest

from components.data.dataset import History, InteractionData
from components.models import LMSASRec
from components.models.lm_content import fit_whitening
from tests.unit._model_fixtures import interactions_frame, items_frame

N_ITEMS, DIM = 200, 16
TRAIN_ONCE = {"hidden": 8, "max_len": 6, "batch_size": 8, "max_epochs": 1, "patience": 1}
TRAIN_ONCE |= {"progress": False, "device": "cpu"}


def anisotropic_vectors(seed: int = 0) -> np.ndarray:
    """Sentence-embedding-like vectors: a large shared offset and very unequal variances."""
    rng = np.random.default_rng(seed)
    raw = rng.standard_normal((N_ITEMS, DIM)) @ np.diag(np.geomspace(3.0, 0.01, DIM))
    raw = raw @ np.linalg.qr(rng.standard_normal((DIM, DIM)))[0] + 5.0
    return (raw / np.linalg.norm(raw, axis=1, keepdims=True)).astype(np.float32)


def catalogue_data() -> InteractionData:
    ids = list(range(1000, 1000 + N_ITEMS))
    base = InteractionData.from_frames(items_frame(ids), interactions_frame({1: [0]}, item_ids=ids))
    rng = np.random.default_rng(1)
    histories = [History(rng.choice(N_ITEMS, size=6, replace=False)) for _ in range(20)]
    return InteractionData(base.catalogue, np.arange(len(histories)), histories)


def text_input(config: dict, vectors: np.ndarray) -> np.ndarray:
    """The text matrix the fitted network holds (what enters the item representation)."""
    model = LMSASRec({**TRAIN_ONCE, **config}).fit(catalogue_data(), vectors)
    return model.network.text.numpy().astype(np.float64)


def test_the_raw_vectors_are_anisotropic():
    vectors = anisotropic_vectors().astype(np.float64)
    assert np.abs(vectors.mean(axis=0)).max() > 0.1
    assert np.linalg.cond(np.cov(vectors, rowvar=False)) > 1e3


def test_full_whitening_gives_zero_mean_and_identity_covariance():
    text = text_input({"text_dim": DIM, "normalise_text": False}, anisotropic_vectors())
    assert text.shape == (N_ITEMS, DIM)
    np.testing.assert_allclose(text.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.cov(text, rowvar=False), np.eye(DIM), atol=1e-3)


def test_the_default_text_input_is_unchanged():
    """Default: PCA-whitened onto text_dim (64) components, then each row scaled to unit length."""
    dim = LMSASRec.Config().text_dim
    assert (dim, LMSASRec.Config().normalise_text) == (64, True)
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((N_ITEMS, 96)).astype(np.float32) + 1.0
    text = text_input({}, vectors)
    mean, projection = fit_whitening(vectors, dim)
    expected = (vectors - mean) @ projection
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(text, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(np.cov(text, rowvar=False), np.eye(dim), atol=1e-3)


def test_items_without_text_are_represented_by_their_id_alone():
    """A zero row (an item with no text) gets no text input, and does not shape the whitening."""
    from components.models import LMContent

    vectors = anisotropic_vectors()
    bare = np.zeros(N_ITEMS, dtype=bool)
    bare[::10] = True
    vectors[bare] = 0.0
    text = text_input({"text_dim": 8}, vectors)
    assert not text[bare].any()
    mean, projection = fit_whitening(vectors[~bare], 8)  # fitted on the items with text only
    expected = (vectors[~bare] - mean) @ projection
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(text[~bare], expected, atol=1e-5)

    content = LMContent({"whiten_dim": 8}).fit(catalogue_data(), vectors)
    scores = content.score(catalogue_data().histories[:3])
    assert np.isfinite(scores).all() and not scores[:, bare].any()  # no text: no match, score 0
    with pytest.raises(ValueError, match="no item of this catalogue has any"):
        LMContent().fit(catalogue_data(), np.zeros_like(vectors))
