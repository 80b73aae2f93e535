"""Re-scoring the champion on a run's own split, so the gate compares like with like.

The caller loads the champion (``components.registry.load_champion_engine``) and passes its
serving engine in; this module imports neither the registry nor the models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from components.data.dataset import History

if TYPE_CHECKING:
    from collections.abc import Sequence

    from components.engine import ServingEngine

BLOCK_USERS = 256
"""Histories scored per model call."""


def champion_scores(engine: ServingEngine, catalogue_ids: np.ndarray, histories: Sequence[History]) -> np.ndarray:
    """Score new-split histories with the champion, mapping between the two catalogues.

    Uses the champion's validation-side fit: the served model was fitted on every interaction, so
    it has seen the items this split holds out and would score itself far too well. Items the
    champion never saw score -inf, so the comparison is on the same split and items.
    """
    model = engine.validation_model()
    mapping = engine.catalogue.positions(catalogue_ids)
    known = mapping >= 0
    translated = []
    for h in histories:
        champion_items = mapping[h.items]
        keep = champion_items >= 0
        events = [e for e, k in zip(h.events, keep) if k]
        translated.append(History(champion_items[keep], events, h.values[keep], h.timestamps[keep]))
    scores = np.full((len(histories), len(catalogue_ids)), -np.inf, dtype=np.float32)
    for start in range(0, len(histories), BLOCK_USERS):
        block = model.score(translated[start : start + BLOCK_USERS]) if len(engine.catalogue) else np.zeros((0, 0))
        scores[start : start + BLOCK_USERS, known] = block[:, mapping[known]]
    return scores
