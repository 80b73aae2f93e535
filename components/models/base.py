"""The recommender interface every model implements, and their save/load format."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import BaseModel

from components.data.dataset import History, InteractionData
from components.evaluation.metrics import EVAL_CHUNK_USERS, top_k

MODEL_REGISTRY: dict[str, type[Recommender]] = {}
TEXT_DIM = 384
"""Width of the encoder's item vectors (all-MiniLM-L6-v2), for memory estimates."""


@dataclass(frozen=True)
class DataSize:
    """How big a training set is: what a candidate's resource needs are a function of."""

    users: int
    items: int
    interactions: int

    @classmethod
    def of(cls, data: InteractionData) -> DataSize:
        return cls(len(data.histories), data.n_items, int(sum(len(h.items) for h in data.histories)))


def scoring_bytes(size: DataSize) -> int:
    """Evaluation scores a chunk of users against every item: the float32 scores, the masked copy and the
    top-k indexes, 16 bytes a cell (``components.evaluation.metrics.evaluate_in_chunks``)."""
    return 16 * min(size.users, EVAL_CHUNK_USERS) * size.items


class Recommender(ABC):
    """A model that scores every catalogue item for a user history.

    Subclasses set ``name`` and ``Config`` (a pydantic model, one docstring per field), implement
    ``fit``, ``score`` and the array state they save; ``recommend``, ``save`` and ``load`` are shared.
    """

    name: ClassVar[str]
    Config: ClassVar[type[BaseModel]]
    uses_text: ClassVar[bool] = False
    """True when the model needs item text embeddings."""
    fits_once: ClassVar[bool] = False
    """True for a model trained by gradient steps: the pipeline fits it once per run, on history
    before each user's test item (early stopping on the validation item), serves that fit after
    :meth:`continue_training` on every interaction, and never fits it cold a second time.
    False (closed-form and counting models, cheap to refit): one fit per side of the split."""
    supports_warm_start: ClassVar[bool] = False
    """True when :meth:`warm_start` can initialise this model from an earlier fit of its kind."""

    def __init__(self, config: BaseModel | dict | None = None):
        self.config = config if isinstance(config, BaseModel) else self.Config(**(config or {}))
        self.n_items = 0

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            MODEL_REGISTRY[cls.name] = cls

    @abstractmethod
    def fit(self, data: InteractionData, item_vectors: np.ndarray | None = None) -> Recommender:
        """Learn from histories (and item text vectors, aligned with the catalogue index)."""

    @abstractmethod
    def score(self, histories: list[History]) -> np.ndarray:
        """Scores of shape (len(histories), n_items); higher is better."""

    @abstractmethod
    def state(self) -> dict[str, np.ndarray]:
        """Arrays that, with the config, fully restore a fitted model."""

    @abstractmethod
    def set_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore from :meth:`state`."""

    def warm_start(self, source: Recommender, item_map: np.ndarray) -> None:
        """Start the next :meth:`fit` from ``source``'s weights; ``item_map[i]`` is item ``i``'s
        index in ``source``'s catalogue, or -1 for an item it did not know.

        Raises :class:`~components.errors.WarmStartIncompatible` when ``source`` cannot seed this
        model (another kind, another architecture); the caller then fits from scratch.
        """
        from components.errors import WarmStartIncompatible

        raise WarmStartIncompatible(f"{self.name} does not support warm starts")

    def continue_training(self, data: InteractionData) -> Recommender:
        """A :attr:`fits_once` model's serving fit: more training on ``data`` (every interaction)."""
        raise NotImplementedError(f"{self.name} is refitted, not trained further")

    def memory_needs(self, size: DataSize) -> int:
        """Peak bytes this candidate's fit and evaluation need at ``size``: an estimate on the high side,
        so the train stage can skip a candidate that would not fit (``train.memory_budget_gb``)."""
        return scoring_bytes(size) + 64 * size.interactions + 16 * size.items

    def fit_summary(self) -> dict:
        """What the last fit did (epochs, warm start), for the run's records; empty by default."""
        return {}

    def recommend(
        self, histories: list[History], k: int, *, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item indexes and scores per history, best first, seen items excluded."""
        scores = self.score(histories).astype(np.float32, copy=True)
        if exclude_seen:
            for row, history in enumerate(histories):
                scores[row, history.items] = -np.inf
        return top_k(scores, k)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.json").write_text(
            json.dumps({"name": self.name, "n_items": self.n_items, "config": self.config.model_dump()})
        )
        np.savez(folder / "state.npz", **self.state())


def build_model(name: str, config: dict | None = None) -> Recommender:
    if name not in MODEL_REGISTRY:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(MODEL_REGISTRY))}")
    return MODEL_REGISTRY[name](config)


def load_model(folder: Path) -> Recommender:
    meta = json.loads((folder / "model.json").read_text())
    model = build_model(meta["name"], meta["config"])
    model.n_items = meta["n_items"]
    with np.load(folder / "state.npz", allow_pickle=False) as arrays:
        model.set_state({key: arrays[key] for key in arrays.files})
    return model
