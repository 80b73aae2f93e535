"""Interaction data in the shape models train on: an item index and per-user ordered histories.

The fixed evaluation split lives here too: for each user, interactions are sorted by
(timestamp, item id) with ties broken stably; the last is the test item, the second-to-last the
validation item, everything before is training history.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from components.data.columns import EVENT_COL, ITEM_COL, TIMESTAMP_COL, TITLE_COL, USER_COL, VALUE_COL
from components.data.events import NEGATIVE_EVENTS


@dataclass
class History:
    """One user's consumed items, oldest first, as item indexes with their events and values."""

    items: np.ndarray
    events: list[str] = field(default_factory=list)
    values: np.ndarray | None = None
    timestamps: np.ndarray | None = None
    disliked: set[int] = field(default_factory=set)
    """Items the user disliked since training: left out of ``items``, never recommended back."""

    def __post_init__(self):
        self.items = np.asarray(self.items, dtype=np.int64)
        if not self.events:
            self.events = ["interaction"] * len(self.items)
        if self.values is None:
            self.values = np.full(len(self.items), np.nan)
        if self.timestamps is None:
            self.timestamps = np.arange(len(self.items), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.items)

    def head(self, n: int) -> History:
        """The first ``n`` interactions (negative n drops from the end)."""
        return History(self.items[:n], self.events[:n], self.values[:n], self.timestamps[:n])

    def tail(self, n: int) -> History:
        """The newest ``n`` interactions."""
        n = min(n, len(self.items))
        return History(
            self.items[-n:] if n else self.items[:0],
            self.events[-n:] if n else [],
            self.values[-n:] if n else self.values[:0],
            self.timestamps[-n:] if n else self.timestamps[:0],
        )


@dataclass
class Catalogue:
    """Item ids in index order, with titles and categories for display and filtering."""

    item_ids: np.ndarray
    titles: np.ndarray
    categories: np.ndarray

    def __post_init__(self):
        self.index = {item_id: i for i, item_id in enumerate(self.item_ids.tolist())}

    def __len__(self) -> int:
        return len(self.item_ids)

    def positions(self, item_ids) -> np.ndarray:
        """Each id's index in this catalogue, -1 for an id it does not hold."""
        ids = item_ids.tolist() if isinstance(item_ids, np.ndarray) else list(item_ids)
        return np.array([self.index.get(item_id, -1) for item_id in ids], dtype=np.int64)

    @classmethod
    def from_items(cls, items: pd.DataFrame) -> Catalogue:
        items = items.sort_values(ITEM_COL, kind="stable")
        return cls(
            items[ITEM_COL].to_numpy(),
            items[TITLE_COL].astype(str).to_numpy(dtype=object),
            items.get("categories", pd.Series([""] * len(items))).fillna("").astype(str).to_numpy(dtype=object),
        )


@dataclass
class InteractionData:
    """Every user's ordered history over one catalogue."""

    catalogue: Catalogue
    user_ids: np.ndarray
    histories: list[History]

    @property
    def n_items(self) -> int:
        return len(self.catalogue)

    @classmethod
    def from_frames(cls, items: pd.DataFrame, interactions: pd.DataFrame) -> InteractionData:
        catalogue = Catalogue.from_items(items)
        frame = interactions[~interactions[EVENT_COL].isin(NEGATIVE_EVENTS)]
        frame = frame[frame[ITEM_COL].isin(catalogue.index.keys())]
        frame = frame.sort_values([USER_COL, TIMESTAMP_COL, ITEM_COL], kind="stable")
        item_index = frame[ITEM_COL].map(catalogue.index).to_numpy(dtype=np.int64)
        users = frame[USER_COL].to_numpy()
        events = frame[EVENT_COL].astype(str).to_numpy(dtype=object)
        values = frame[VALUE_COL].to_numpy(dtype=np.float64)
        stamps = frame[TIMESTAMP_COL].to_numpy(dtype=np.int64)
        boundaries = np.flatnonzero(np.r_[True, users[1:] != users[:-1], True]) if len(users) else np.array([0])
        user_ids, histories = [], []
        for start, stop in zip(boundaries[:-1], boundaries[1:]):
            user_ids.append(users[start])
            histories.append(
                History(item_index[start:stop], events[start:stop].tolist(), values[start:stop], stamps[start:stop])
            )
        return cls(
            catalogue,
            np.array(user_ids, dtype=object if len(user_ids) and isinstance(user_ids[0], str) else None),
            histories,
        )

    def item_counts(self) -> np.ndarray:
        counts = np.zeros(self.n_items, dtype=np.int64)
        for history in self.histories:
            np.add.at(counts, history.items, 1)
        return counts


@dataclass
class Split:
    """The fixed leave-last-two-out split.

    ``val_train``/``val_targets`` fit and score the validation item; ``test_train``/``test_targets``
    the test item (a model may use all history before it). Users with fewer than 3 interactions
    only contribute training data.
    """

    data: InteractionData
    eval_users: np.ndarray
    val_train: InteractionData
    val_histories: list[History]
    val_targets: np.ndarray
    test_train: InteractionData
    test_histories: list[History]
    test_targets: np.ndarray


def leave_last_out(data: InteractionData, min_history: int = 3) -> Split:
    """Build the fixed evaluation split from ordered histories."""
    val_train, test_train, eval_users = [], [], []
    val_hist, val_t, test_hist, test_t = [], [], [], []
    for user, history in zip(data.user_ids, data.histories):
        if len(history) < min_history:
            val_train.append(history)
            test_train.append(history)
            continue
        eval_users.append(user)
        val_train.append(history.head(-2))
        test_train.append(history.head(-1))
        val_hist.append(history.head(-2))
        val_t.append(history.items[-2])
        test_hist.append(history.head(-1))
        test_t.append(history.items[-1])
    return Split(
        data=data,
        eval_users=np.array(eval_users, dtype=data.user_ids.dtype),
        val_train=InteractionData(data.catalogue, data.user_ids, val_train),
        val_histories=val_hist,
        val_targets=np.array(val_t, dtype=np.int64),
        test_train=InteractionData(data.catalogue, data.user_ids, test_train),
        test_histories=test_hist,
        test_targets=np.array(test_t, dtype=np.int64),
    )
