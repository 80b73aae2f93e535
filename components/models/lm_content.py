"""LM content: a user's interest vector against item text embeddings, by cosine."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

from components.data.dataset import History, InteractionData
from components.embed import has_text, interest_weights, user_interest_vector
from components.models.base import TEXT_DIM, DataSize, Recommender


class LMContentConfig(BaseModel):
    """How the interest vector is built and compared."""

    recency_half_life: float = 5.0
    """The weight of a history item halves every this many newer items."""
    whiten_dim: int | None = 64
    """Project item vectors onto this many whitened principal components (None keeps raw vectors).
    Raw sentence embeddings are anisotropic; whitening spreads them out."""
    max_history: int = 200
    """Only the newest this many history items shape the interest vector."""


class LMContent(Recommender):
    """Ranks items by cosine between their (whitened) text vector and the user's interest vector.

    An item with no text has no place in this space: its row is zero, so it scores 0 for everyone
    and adds nothing to an interest vector."""

    name = "lm_content"
    Config = LMContentConfig
    uses_text = True

    def fit(self, data: InteractionData, item_vectors: np.ndarray | None = None) -> LMContent:
        if item_vectors is None or len(item_vectors) != data.n_items:
            raise ValueError("lm_content needs item text vectors aligned with the catalogue")
        self.n_items = data.n_items
        with_text = has_text(item_vectors)
        if not with_text.any():
            raise ValueError("lm_content needs item text, and no item of this catalogue has any")
        self.mean, self.projection = fit_whitening(item_vectors[with_text], self.config.whiten_dim)
        self.item_matrix = self.transform(item_vectors)
        self.item_matrix[~with_text] = 0.0  # an item with no text matches no interest: it scores 0
        return self

    def memory_needs(self, size: DataSize) -> int:
        """The text vectors, their whitened copy and one interest vector per user."""
        return super().memory_needs(size) + 4 * TEXT_DIM * (3 * size.items + size.users)

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """Map raw encoder vectors (items or free-text queries) into the model's item space."""
        return normalise_rows((np.atleast_2d(vectors) - self.mean) @ self.projection)

    def interest(self, history: History) -> np.ndarray | None:
        recent = history.tail(self.config.max_history)
        weights = interest_weights(recent.events, list(recent.values), half_life=self.config.recency_half_life)
        return user_interest_vector(self.item_matrix[recent.items], weights)

    def score(self, histories: list[History]) -> np.ndarray:
        users = np.zeros((len(histories), self.item_matrix.shape[1]), dtype=np.float32)
        for row, history in enumerate(histories):
            vector = self.interest(history)
            if vector is not None:
                users[row] = vector
        return users @ self.item_matrix.T

    def state(self) -> dict[str, np.ndarray]:
        return {"item_matrix": self.item_matrix, "mean": self.mean, "projection": self.projection}

    def set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.item_matrix, self.mean, self.projection = arrays["item_matrix"], arrays["mean"], arrays["projection"]


def fit_whitening(vectors: np.ndarray, dim: int | None) -> tuple[np.ndarray, np.ndarray]:
    """PCA whitening onto ``dim`` components: returns (mean, projection). None: identity."""
    vectors = vectors.astype(np.float64)
    if dim is None or len(vectors) <= dim:
        return np.zeros(vectors.shape[1], np.float32), np.eye(vectors.shape[1], dtype=np.float32)
    mean = vectors.mean(axis=0)
    _, singular, components = np.linalg.svd(vectors - mean, full_matrices=False)
    scale = singular[:dim] / np.sqrt(max(len(vectors) - 1, 1))
    return mean.astype(np.float32), (components[:dim].T / np.maximum(scale, 1e-8)).astype(np.float32)


def normalise_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
