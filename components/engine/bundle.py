"""The serving bundle: one folder with everything the engine loads.

``bundle.json`` (metadata: model name, snapshot, watermark, encoder), ``model/`` (and
``model_val/``, the validation-side fit the gate re-scores), ``catalogue.parquet``,
``histories/`` (every user's training history as a per-user index of ``.npy`` columns, opened
memory-mapped and read one user at a time: ``components.engine.history_index``),
``popularity.npy`` and ``text_vectors.npy``. It is written atomically, and it is what the MLflow
model version carries as its artifact. Bundles written before the index carry
``histories.parquet`` (one row per interaction) instead; :func:`read_histories` reads both.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from components.data.atomic import atomic_dir
from components.data.columns import CATEGORIES_COL, ITEM_COL, TITLE_COL
from components.data.dataset import Catalogue, InteractionData
from components.engine.history_index import INDEX_DIR, HistoryIndex, open_histories, write_history_index
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
    id_type = meta.get("id_type", "int")
    write_history_index(folder / INDEX_DIR, data.user_ids, data.histories, id_type, n_items=len(catalogue))
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


def read_histories(folder: Path, id_type: str) -> HistoryIndex:
    """Every user's training history, keyed by the normalised user id (``int`` or ``str``), read
    lazily: the bundle's ``histories/`` index memory-mapped, or an older bundle's
    ``histories.parquet`` in compact columns. Raises ``HistoryIndexError`` (a ``ValueError``)
    naming the file when neither can be read."""
    return open_histories(Path(folder), id_type)
