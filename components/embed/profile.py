"""User profiles in the item space: a user's interest is the weighted mean of what they consumed."""

from __future__ import annotations

import math

import numpy as np

from components.data.events import EVENT_WEIGHTS


def interest_weights(
    events: list[str], values: list[float | None], *, half_life: float, value_max: float = 5.0
) -> np.ndarray:
    """Recency × event weights for a history ordered oldest → newest."""
    n = len(events)
    recency = 0.5 ** (np.arange(n)[::-1] / max(half_life, 1e-6))
    kind = np.array([_event_weight(event, value, value_max) for event, value in zip(events, values)], dtype=np.float64)
    return recency * kind


def _event_weight(event: str, value: float | None, value_max: float) -> float:
    """A rating counts ``value / value_max`` (0.6 when it has no value); other events by ``EVENT_WEIGHTS``."""
    if event == "rating":
        return value / value_max if value is not None and not math.isnan(value) else 0.6
    return EVENT_WEIGHTS.get(event, 0.5)


def user_interest_vector(history_vectors: np.ndarray, weights: np.ndarray) -> np.ndarray | None:
    """A user's interest: the weighted mean of their history's vectors, L2-normalised (None if empty)."""
    if len(history_vectors) == 0:
        return None
    vector = (history_vectors * weights[:, None]).sum(axis=0)
    norm = np.linalg.norm(vector)
    return (vector / norm).astype(np.float32) if norm > 0 else None
