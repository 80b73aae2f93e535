"""Tiny, hand-checkable data shared by the model, engine and registry unit tests.

Not a conftest: test modules import these builders explicitly, so the data each test sees is
visible where it is used.

The catalogue has two clusters of four items each: items 10..13 are "Action" (index 0..3) and
items 14..17 are "Drama" (index 4..7). Users 1..3 consume Action items, users 4..6 Drama items,
in a checkerboard-like pattern, so a content model has an obvious right answer per user.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from components.data.columns import (
    CATEGORIES_COL,
    DESCRIPTION_COL,
    EVENT_COL,
    EVENT_ID_COL,
    ITEM_COL,
    SOURCE_COL,
    TAGS_COL,
    TIMESTAMP_COL,
    TITLE_COL,
    USER_COL,
    VALUE_COL,
    YEAR_COL,
)
from components.data.dataset import InteractionData

T0 = 1_600_000_000
ITEM_IDS = list(range(10, 18))
ACTION = [0, 1, 2, 3]
DRAMA = [4, 5, 6, 7]

# (user, [item index in consumption order]); counts per item index:
#   0:3  1:2  2:1  3:0 | 4:3  5:2  6:1  7:1
HISTORIES = {
    1: [0, 1, 2],
    2: [1, 0],
    3: [0],
    4: [4, 5, 6],
    5: [5, 4, 7],
    6: [4],
}


def items_frame(item_ids=ITEM_IDS, titles=None) -> pd.DataFrame:
    """A snapshot-shaped items frame (every ITEM_COLUMNS column present)."""
    rows = []
    for i, item_id in enumerate(item_ids):
        drama = i >= len(item_ids) // 2
        rows.append(
            {
                ITEM_COL: item_id,
                TITLE_COL: (titles or {}).get(item_id, f"{'Drama' if drama else 'Action'} film {item_id}"),
                YEAR_COL: 2000 + i,
                CATEGORIES_COL: "Drama|Romance" if drama else "Action|Thriller",
                TAGS_COL: "tearjerker" if drama else "explosions",
                DESCRIPTION_COL: "A quiet story about family." if drama else "Cars, guns and a heist.",
            }
        )
    return pd.DataFrame(rows)


def interactions_frame(
    histories: dict = HISTORIES, item_ids=ITEM_IDS, event: str = "rating", value: float = 4.0
) -> pd.DataFrame:
    """A snapshot-shaped interactions frame: each user's items one minute apart, in the given order."""
    rows = []
    for user, indexes in histories.items():
        for step, index in enumerate(indexes):
            rows.append(
                {
                    EVENT_ID_COL: f"e-{user}-{step}",
                    USER_COL: user,
                    ITEM_COL: item_ids[index],
                    TIMESTAMP_COL: T0 + 60 * step + user,
                    EVENT_COL: event,
                    VALUE_COL: value,
                    SOURCE_COL: "test",
                }
            )
    return pd.DataFrame(rows)


def tiny_data() -> InteractionData:
    return InteractionData.from_frames(items_frame(), interactions_frame())


def cluster_vectors(n_items: int = len(ITEM_IDS), dim: int = 8, seed: int = 0) -> np.ndarray:
    """Unit vectors in two tight clusters: the first half near e0, the second half near e1."""
    rng = np.random.default_rng(seed)
    vectors = 0.05 * rng.standard_normal((n_items, dim))
    vectors[: n_items // 2, 0] += 1.0
    vectors[n_items // 2 :, 1] += 1.0
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def accepted_snapshot(settings, items: pd.DataFrame):
    """A snapshot of ``items`` and the tiny interactions, written and marked accepted."""
    import json

    from components.data.atomic import atomic_write_text
    from components.data.snapshots import write_snapshot

    snapshot = write_snapshot(
        settings.snapshots_dir,
        items,
        interactions_frame(),
        id_type="int",
        feedback_watermark=0,
        parent=None,
        sources={},
    )
    atomic_write_text(snapshot.path / "validation.json", json.dumps({"success": True}))
    return snapshot
