"""The embedding cache: vectors by text hash, per encoder id, in immutable segment files."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np

from components.data.atomic import atomic_file


class EmbeddingCache:
    """Vectors by text hash for one encoder, stored as immutable segment files.

    Each writer adds its own segment (written atomically), so mapped tasks on several workers
    can fill the cache at once without a lock. Readers merge every segment.
    """

    def __init__(self, root: Path, encoder_id: str):
        self.folder = root / "cache" / encoder_id
        self.folder.mkdir(parents=True, exist_ok=True)

    def load(self) -> dict[str, np.ndarray]:
        table: dict[str, np.ndarray] = {}
        for segment in sorted(self.folder.glob("segment-*.npz")):
            with np.load(segment) as data:
                for key, vector in zip(data["keys"].tolist(), data["vectors"]):
                    table[key] = vector
        return table

    def add(self, keys: list[str], vectors: np.ndarray) -> None:
        if not keys:
            return
        # A unique name per segment: writers never replace each other's segments.
        segment = self.folder / f"segment-{time.time_ns()}-{uuid.uuid4().hex[:8]}.npz"
        with atomic_file(segment, suffix=".npz") as tmp, open(tmp, "wb") as handle:
            np.savez(handle, keys=np.array(keys, dtype="U32"), vectors=vectors.astype(np.float32))
