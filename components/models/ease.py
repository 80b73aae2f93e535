"""EASE (Steck 2019): a closed-form item-item linear autoencoder, with its L2 weight tuned.

EASE learns an item-item weight matrix ``B`` with a zero diagonal that best rebuilds the binary
user-item matrix ``X`` from itself: ``B = I - P / diag(P)`` with ``P = (XᵀX + λI)⁻¹``. A user's
scores are ``x_u B``.

Inverting the items × items Gram matrix costs O(items³) time and O(items²) memory, which on a
catalogue of ten thousand items and two CPU cores is minutes per λ. When there are fewer users
than items (true of ml-latest-small: 610 users, 9,742 items) the Woodbury identity gives the same
``P`` from a users × users system instead::

    P = (I - Xᵀ K⁻¹ X) / λ,   K = λI + X Xᵀ

so ``diag(P)`` and ``x P`` need only ``W = K⁻¹ X`` (users × items). That makes one fit take about
a second, and tuning λ over a grid cheap. With more users than items the primal form is used
and the model keeps ``B`` itself. Both forms give the same scores up to rounding.

λ is tuned inside :meth:`EASE.fit` when ``l2`` is None: each user's last interaction in the
training data is held out, EASE is fitted on the rest for every λ on the grid, the λ with the best
NDCG@10 on the held-out items wins, and the model is refitted on all the training data. Fitted on
the evaluation split's test-side training data, the held-out item is exactly each user's
validation item, so the test item is never used for tuning.
"""

from __future__ import annotations

import logging

import numpy as np
from pydantic import BaseModel, Field, field_validator

from components.data.dataset import History, InteractionData
from components.evaluation.metrics import per_user_metrics, target_ranks
from components.models.base import DataSize, Recommender

log = logging.getLogger(__name__)


class EASEConfig(BaseModel):
    """The L2 weight of EASE, fixed or tuned on each user's last training interaction."""

    l2: float | None = None
    """The L2 weight λ; None tunes it over ``l2_grid`` on each user's last training interaction."""
    l2_grid: list[float] = Field(default_factory=lambda: [5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0])
    """Candidate λ values tried when ``l2`` is None (the reference tuned over 5..1000)."""
    tune_metric: str = "ndcg@10"
    """The held-out metric λ is picked on: one of hr@10, ndcg@10, mrr@10, recall@20."""
    min_history_to_tune: int = 2
    """Only users with at least this many interactions give a held-out item for tuning (2 matches
    the evaluation split: every evaluated user's validation item is held out on the test side)."""

    @field_validator("l2")
    @classmethod
    def _positive_l2(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError(f"l2 must be positive, got {value}")
        return value

    @field_validator("l2_grid")
    @classmethod
    def _positive_grid(cls, values: list[float]) -> list[float]:
        if not values or min(values) <= 0:
            raise ValueError(f"l2_grid must be a non-empty list of positive weights, got {values}")
        return values

    @field_validator("tune_metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in ("hr@10", "ndcg@10", "mrr@10", "recall@20"):
            raise ValueError(f"tune_metric must be one of hr@10, ndcg@10, mrr@10, recall@20; got {value!r}")
        return value


SPARSE_ROWS = 8
"""Up to this many histories, the dual form computes user overlaps from the touched columns."""


def interaction_matrix(histories: list[History], n_items: int) -> np.ndarray:
    """The dense binary users × items matrix of the given histories (float64)."""
    matrix = np.zeros((len(histories), n_items), dtype=np.float64)
    for row, history in enumerate(histories):
        matrix[row, history.items] = 1.0
    return matrix


class _DualEASE:
    """EASE through the users × users system (fewer users than items)."""

    def __init__(self, matrix: np.ndarray, l2: float, user_gram: np.ndarray | None = None):
        kernel = (matrix @ matrix.T if user_gram is None else user_gram).copy()
        kernel[np.diag_indices_from(kernel)] += l2
        # K is symmetric positive definite: solve with a Cholesky factor rather than an inverse
        from scipy.linalg import cho_factor, cho_solve

        self.weights = cho_solve(cho_factor(kernel, lower=True), matrix)  # W = K⁻¹ X
        self.diagonal = (1.0 - np.einsum("ui,ui->i", matrix, self.weights)) / l2  # diag(P)
        self.matrix, self.l2 = matrix, l2

    def score(self, users: np.ndarray, overlaps: np.ndarray | None = None) -> np.ndarray:
        """``x B = x - (x P) / diag(P)`` for rows ``x`` of ``users`` (``overlaps``: ``users @ Xᵀ`` if known)."""
        overlaps = users @ self.matrix.T if overlaps is None else overlaps
        projected = (users - overlaps @ self.weights) / self.l2  # x P
        return users - projected / self.diagonal


def _primal_item_weights(matrix: np.ndarray, l2: float) -> np.ndarray:
    gram = matrix.T @ matrix
    gram[np.diag_indices_from(gram)] += l2
    precision = np.linalg.inv(gram)
    weights = -precision / np.diag(precision)
    weights[np.diag_indices_from(weights)] = 0.0
    return weights


class EASE(Recommender):
    """Closed-form item-item model; λ tuned on each user's last training interaction."""

    name = "ease"
    Config = EASEConfig

    def fit(self, data: InteractionData, item_vectors: np.ndarray | None = None) -> EASE:
        self.n_items = data.n_items
        self.chosen_l2 = float(self.config.l2) if self.config.l2 is not None else self.tune(data)
        self._fit_matrix(interaction_matrix(data.histories, data.n_items), self.chosen_l2)
        return self

    def memory_needs(self, size: DataSize) -> int:
        """The dense users × items matrix, and the users × users (dual) or items × items (primal) system."""
        users, items = size.users, size.items
        solve = 24 * users * items + 16 * users * users if users < items else 8 * users * items + 28 * items * items
        return super().memory_needs(size) + int(1.25 * solve)  # λ tuning refits beside the data

    def _fit_matrix(self, matrix: np.ndarray, l2: float) -> None:
        if len(matrix) < self.n_items:
            dual = _DualEASE(matrix, l2)
            self.form = "dual"
            self.train_matrix = dual.matrix.astype(np.float32)
            self.dual_weights = dual.weights.astype(np.float32)
            self.dual_diagonal = dual.diagonal.astype(np.float32)
            self.item_weights = np.zeros((0, 0), np.float32)
        else:
            self.form = "primal"
            self.item_weights = _primal_item_weights(matrix, l2).astype(np.float32)
            self.train_matrix = self.dual_weights = np.zeros((0, 0), np.float32)
            self.dual_diagonal = np.zeros(0, np.float32)

    def tune(self, data: InteractionData) -> float:
        """Pick λ on each user's last training interaction; returns the winner."""
        histories, targets = [], []
        fit_histories = []
        for history in data.histories:
            if len(history) >= self.config.min_history_to_tune:
                fit_histories.append(history.head(-1))
                histories.append(history.head(-1))
                targets.append(int(history.items[-1]))
            else:
                fit_histories.append(history)
        if not targets:
            log.warning(
                "EASE: no user has %d interactions to tune on; using λ=%s",
                self.config.min_history_to_tune,
                self.config.l2_grid[0],
            )
            return float(self.config.l2_grid[0])
        matrix = interaction_matrix(fit_histories, data.n_items)
        probe = interaction_matrix(histories, data.n_items)
        target_array = np.array(targets, dtype=np.int64)
        dual = len(matrix) < data.n_items
        user_gram, overlaps = (matrix @ matrix.T, probe @ matrix.T) if dual else (None, None)
        self.tuning: dict[float, float] = {}
        for l2 in self.config.l2_grid:
            if dual:
                scores = _DualEASE(matrix, l2, user_gram).score(probe, overlaps)
            else:
                scores = probe @ _primal_item_weights(matrix, l2)
            ranks = target_ranks(scores.astype(np.float32), histories, target_array)
            self.tuning[float(l2)] = float(per_user_metrics(ranks)[self.config.tune_metric].mean())
        best = max(self.tuning, key=lambda l2: (self.tuning[l2], -l2))  # ties: the smaller λ
        log.info(
            "EASE: %s by λ on %d held-out items: %s; picked λ=%s",
            self.config.tune_metric,
            len(targets),
            self.tuning,
            best,
        )
        return best

    def score(self, histories: list[History]) -> np.ndarray:
        users = interaction_matrix(histories, self.n_items).astype(np.float32)
        if len(histories) == 0:
            return users
        if self.form == "dual":
            if len(histories) <= SPARSE_ROWS:
                # Serving scores one user at a time: their overlap with each training user is a sum
                # over the few columns they touched. Both matrices are binary, so the counts are
                # exact integers and equal the dense product bit for bit, at a fraction of its cost.
                overlaps = np.stack(
                    [self.train_matrix[:, np.unique(h.items)].sum(axis=1, dtype=np.float32) for h in histories]
                )
            else:
                overlaps = users @ self.train_matrix.T
            projected = (users - overlaps @ self.dual_weights) / np.float32(self.chosen_l2)
            return users - projected / self.dual_diagonal
        return users @ self.item_weights

    def state(self) -> dict[str, np.ndarray]:
        return {
            "form": np.array(self.form),
            "l2": np.array(self.chosen_l2, dtype=np.float64),
            "item_weights": self.item_weights,
            "train_matrix": self.train_matrix,
            "dual_weights": self.dual_weights,
            "dual_diagonal": self.dual_diagonal,
        }

    def set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.form = str(arrays["form"])
        self.chosen_l2 = float(arrays["l2"])
        self.item_weights = arrays["item_weights"]
        self.train_matrix = arrays["train_matrix"]
        self.dual_weights = arrays["dual_weights"]
        self.dual_diagonal = arrays["dual_diagonal"]
