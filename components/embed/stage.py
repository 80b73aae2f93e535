"""The embed stage: a snapshot's item vectors, encoded in mapped shards and assembled from the cache.

Items are turned into text by a template (:mod:`components.embed.text`), encoded with the settings'
encoder (:mod:`components.embed.encoder`) and cached by (encoder id, text hash)
(:mod:`components.embed.cache`), so a re-run encodes only new or changed texts.

An item with no text at all (no title, categories, tags or description) is never encoded: its row
is all zeros, which every text model reads as "no text" (``has_text``), and the models that have
one represent it by its ID alone. The stage logs how many there are and records it in the manifest.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.data.atomic import atomic_dir, atomic_write_text
from components.data.columns import ITEM_COL
from components.data.snapshots import Snapshot
from components.embed.cache import EmbeddingCache
from components.embed.encoder import encoder_from_settings
from components.embed.text import ITEM_TEXT_SEGMENTS, item_texts, text_hash
from components.errors import EncoderError
from components.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ItemEmbeddings:
    """Item vectors aligned with item ids, plus their manifest."""

    item_ids: np.ndarray
    vectors: np.ndarray
    manifest: dict

    @classmethod
    def load(cls, folder: Path) -> ItemEmbeddings:
        if not (folder / "manifest.json").exists():
            raise EncoderError(f"no embeddings at {folder}; run the embed stage first")
        ids = pd.read_parquet(folder / "item_ids.parquet")[ITEM_COL].to_numpy()
        return cls(ids, np.load(folder / "vectors.npy"), json.loads((folder / "manifest.json").read_text()))


def has_text(vectors: np.ndarray) -> np.ndarray:
    """Which rows of an item-vector matrix are real text vectors (an item with no text has a zero row)."""
    return np.any(np.asarray(vectors) != 0, axis=1)


def plan_shards(snapshot: Snapshot, n_shards: int) -> list[int]:
    """Shard indexes for the mapped embedding tasks (fewer shards for small catalogues)."""
    n_items = snapshot.manifest["row_counts"]["items"]
    return list(range(max(1, min(n_shards, math.ceil(n_items / 500)))))


def embed_shard(settings: Settings, snapshot: Snapshot, shard: int, n_shards: int) -> dict:
    """Encode the uncached texts of one shard of the snapshot's items into the cache."""
    snapshot.require_accepted()
    encoder = encoder_from_settings(settings)
    texts = item_texts(snapshot.items())
    hashes = [text_hash(t) for t in texts]
    cache = EmbeddingCache(settings.embeddings_dir, encoder.encoder_id)
    cached = cache.load()
    # Shards split the full, sorted text set (not just what is uncached right now), so the split
    # does not depend on which shard ran first.
    everything = sorted((h, t) for h, t in dict(zip(hashes, texts)).items() if t)
    mine = [(h, t) for i, (h, t) in enumerate(everything) if i % n_shards == shard and h not in cached]
    started = time.perf_counter()
    vectors = encoder.encode([t for _, t in mine], batch_size=settings.embed.batch_size, progress=len(mine) > 500)
    cache.add([h for h, _ in mine], vectors)
    seconds = round(time.perf_counter() - started, 3)
    return {"shard": shard, "encoded": len(mine), "seconds": seconds, "host": os.uname().nodename}


def embed_items(settings: Settings, snapshot: Snapshot) -> Path:
    """Assemble the snapshot's item vectors from the cache (encoding what is missing); return the folder."""
    snapshot.require_accepted()
    started = time.perf_counter()
    encoder = encoder_from_settings(settings)
    items = snapshot.items()
    texts = item_texts(items)
    hashes = [text_hash(t) for t in texts]
    cache = EmbeddingCache(settings.embeddings_dir, encoder.encoder_id)
    cached = cache.load()
    missing = sorted({h: t for h, t in zip(hashes, texts) if t and h not in cached}.items())
    no_text = sum(not t for t in texts)
    if no_text:
        log.warning(
            "%d of %d items have no text (no title, categories, tags or description): they get no text "
            "vector and are represented by their ID alone",
            no_text,
            len(texts),
        )
    if missing:
        batch_size, progress = settings.embed.batch_size, len(missing) > 500
        new_vectors = encoder.encode([t for _, t in missing], batch_size=batch_size, progress=progress)
        cache.add([h for h, _ in missing], new_vectors)
        cached.update({h: v for (h, _), v in zip(missing, new_vectors)})
    vectors = np.zeros((len(hashes), encoder.dim), np.float32)
    for row, (h, t) in enumerate(zip(hashes, texts)):
        if t:
            vectors[row] = cached[h]
    target = settings.embeddings_dir / snapshot.snapshot_id / encoder.encoder_id
    manifest = {
        "snapshot_id": snapshot.snapshot_id,
        "encoder": encoder.identity,
        "encoder_path": str(encoder.path),
        "max_length": encoder.max_length,
        "dim": encoder.dim,
        "items": len(hashes),
        "encoded_now": len(missing),
        "from_cache": len(hashes) - len(missing) - no_text,
        "no_text": no_text,
        "template": list(ITEM_TEXT_SEGMENTS),
        "seconds": round(time.perf_counter() - started, 3),
        "created_at": time.time(),
    }
    # A re-run of the same snapshot and encoder replaces the folder as a whole.
    with atomic_dir(target, replace=True) as tmp:
        np.save(tmp / "vectors.npy", vectors)
        pd.DataFrame({ITEM_COL: items[ITEM_COL].to_numpy()}).to_parquet(tmp / "item_ids.parquet", index=False)
        atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=2))
    log.info(
        "embedded %d items (%d encoded, %d cached, %d without text) in %.1fs",
        len(hashes),
        len(missing),
        manifest["from_cache"],
        no_text,
        manifest["seconds"],
    )
    return target
