"""The serving bundle: one folder with everything the engine loads.

``bundle.json`` (metadata: model name, snapshot, watermark, encoder), ``model/`` (and
``model_val/``, the validation-side fit the gate re-scores), ``catalogue.parquet``,
``histories.parquet``, ``popularity.npy`` and ``text_vectors.npy``. It is written atomically, and
it is what the MLflow model version carries as its artifact.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from components.data.atomic import atomic_dir
from components.data.columns import CATEGORIES_COL, ITEM_COL, TITLE_COL
from components.data.dataset import Catalogue, History, InteractionData
from components.models import Recommender


def write_bundle(
    folder: Path,
    model: Recommender,
    data: InteractionData,
    text_vectors: np.ndarray | None,
    meta: dict,
    validation_model: Recommender | None = None,
) -> Path:
    """Write a serving bundle for ``model`` fitted on ``data`` (all accepted interactions).

    ``validation_model`` is the same recipe fitted only on history before each user's validation
    item; the gate re-scores a champion with it, because the served model has seen those items.
    """
    with atomic_dir(Path(folder)) as tmp:  # a failed write leaves the old bundle (if any) in place
        _write_contents(tmp, model, data, text_vectors, meta, validation_model)
    return Path(folder)


def _write_contents(folder: Path, model, data: InteractionData, text_vectors, meta: dict, validation_model) -> None:
    model.save(folder / "model")
    if validation_model is not None:
        validation_model.save(folder / "model_val")
    catalogue = data.catalogue
    pd.DataFrame(
        {ITEM_COL: catalogue.item_ids, TITLE_COL: catalogue.titles, CATEGORIES_COL: catalogue.categories}
    ).to_parquet(folder / "catalogue.parquet", index=False)
    rows = [
        (user, int(i), e, float(v), int(t))
        for user, h in zip(data.user_ids, data.histories)
        for i, e, v, t in zip(h.items, h.events, h.values, h.timestamps)
    ]
    pd.DataFrame(rows, columns=["user_id", "item_index", "event", "value", "timestamp"]).to_parquet(
        folder / "histories.parquet", index=False
    )
    np.save(folder / "popularity.npy", data.item_counts().astype(np.float32))
    if text_vectors is not None:
        np.save(folder / "text_vectors.npy", text_vectors.astype(np.float32))
    (folder / "bundle.json").write_text(json.dumps(meta, indent=2, default=str))


def read_catalogue(folder: Path) -> Catalogue:
    """The bundle's catalogue: item ids, titles and categories in index order."""
    frame = pd.read_parquet(Path(folder) / "catalogue.parquet")
    return Catalogue(
        frame[ITEM_COL].to_numpy(),
        frame[TITLE_COL].to_numpy(dtype=object),
        frame[CATEGORIES_COL].to_numpy(dtype=object),
    )


def read_histories(folder: Path, normalise_id: Callable) -> dict:
    """Every user's training history, keyed by ``normalise_id(user_id)``."""
    frame = pd.read_parquet(Path(folder) / "histories.parquet")
    histories = {}
    users = frame["user_id"].to_numpy()
    if len(users) == 0:
        return histories
    boundaries = np.flatnonzero(np.r_[True, users[1:] != users[:-1], True])
    items, events = frame["item_index"].to_numpy(), frame["event"].to_numpy(dtype=object)
    values, stamps = frame["value"].to_numpy(), frame["timestamp"].to_numpy()
    for start, stop in zip(boundaries[:-1], boundaries[1:]):
        histories[normalise_id(users[start])] = History(
            items[start:stop], events[start:stop].tolist(), values[start:stop], stamps[start:stop]
        )
    return histories
