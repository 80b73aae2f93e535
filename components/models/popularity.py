"""The popularity baseline: every user gets the most-consumed items."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

from components.data.dataset import History, InteractionData
from components.models.base import Recommender


class PopularityConfig(BaseModel):
    """Popularity has no knobs; the config exists so every model is built the same way."""


class Popularity(Recommender):
    """Scores each item by how many users consumed it in the training data."""

    name = "popularity"
    Config = PopularityConfig

    def fit(self, data: InteractionData, item_vectors: np.ndarray | None = None) -> Popularity:
        self.n_items = data.n_items
        self.counts = data.item_counts().astype(np.float32)
        return self

    def score(self, histories: list[History]) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(histories), self.n_items))

    def state(self) -> dict[str, np.ndarray]:
        return {"counts": self.counts}

    def set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.counts = arrays["counts"]
