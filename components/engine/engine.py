"""The serving engine: everything a fitted recommender needs to answer requests fast.

It loads a bundle folder (``components.engine.bundle``) and answers from memory; the MLflow
pyfunc wraps it, and the BentoML service calls it directly (no pandas on the hot path). The users'
histories stay on disk in the bundle's memory-mapped index (``components.engine.history_index``):
loading reads no user's history, and a request reads only its own user's.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import NamedTuple

import cachetools
import numpy as np

from components.data.dataset import History
from components.data.events import NEGATIVE_EVENTS, POSITIVE_EVENTS, POSITIVE_RATING
from components.engine.bundle import read_catalogue, read_histories
from components.engine.history_index import HistoryIndex
from components.evaluation.metrics import top_k
from components.models import Recommender, load_model
from components.settings import ServingSettings

MAX_HISTORY = 500
"""Only a user's newest this many events are used at request time."""


def _is_positive(event: str, value) -> bool:
    if event == "rating":
        return value is not None and value == value and float(value) >= POSITIVE_RATING
    return event in POSITIVE_EVENTS


class ScoreRequest(NamedTuple):
    """One history to rank, with the request's options (see ``ServingEngine.recommend_histories``)."""

    history: History | None
    k: int
    exclude_seen: bool = True
    categories: list[str] | None = None


class Recommendation(NamedTuple):
    """One recommended item."""

    item_id: object
    title: str
    score: float
    rank: int
    explanation: str | None = None


CATEGORY_MASKS = 1024
"""Distinct category filters whose item masks the engine keeps (one bool per item each)."""

CACHE_DEPTH = 100
"""How many items a cached per-user ranking holds (the largest k a request may ask for)."""


class ServingEngine:
    """Answers recommend / session / similar / search requests from a loaded bundle."""

    def __init__(self, folder: Path):
        started = time.perf_counter()
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / "bundle.json").read_text())
        self.id_type = self.meta.get("id_type", "int")
        self.model = load_model(self.folder / "model")
        self.catalogue = read_catalogue(self.folder)
        self.popularity = np.load(self.folder / "popularity.npy")
        vectors_path = self.folder / "text_vectors.npy"
        self.text_vectors = np.load(vectors_path) if vectors_path.exists() else None
        self.histories = self._load_histories()
        self._category_masks: cachetools.LRUCache = cachetools.LRUCache(maxsize=CATEGORY_MASKS)
        self._lock = threading.Lock()  # the caches are read from the event loop and the batch worker
        self.cache_users = ServingSettings.model_fields["cache_users"].default  # the service sets its own
        self.load_seconds = time.perf_counter() - started

    def validation_model(self) -> Recommender:
        """The champion's validation-side fit, for re-scoring on a new split (the served model if absent)."""
        if not hasattr(self, "_validation_model"):
            folder = self.folder / "model_val"
            self._validation_model = load_model(folder) if (folder / "model.json").exists() else self.model
        return self._validation_model

    def _load_histories(self) -> HistoryIndex:
        return read_histories(self.folder, self.id_type)

    # -- ids
    def normalise_id(self, value):
        """Ids arrive as JSON numbers or strings; store and look them up in one form."""
        if self.id_type == "int":
            return int(value)
        return str(value)

    def item_index(self, item_id) -> int | None:
        try:
            return self.catalogue.index.get(self.normalise_id(item_id))
        except (TypeError, ValueError):
            return None

    @property
    def version_info(self) -> dict:
        return {k: self.meta.get(k) for k in ("model_name", "snapshot_id", "feedback_watermark", "encoder_id")}

    # -- histories
    def history_for(self, user_id, recent_events: list[tuple] = ()) -> History | None:
        """The user's training history plus events logged since training (item_id, event, value, ts)."""
        # Only the newest MAX_HISTORY events are ever used, so only those are read from the index.
        base = self.histories.get(user_id, newest=MAX_HISTORY)
        if not recent_events:  # the common case
            return base
        extra = [(self.item_index(item), event, value, ts) for item, event, value, ts in recent_events]
        extra = [e for e in extra if e[0] is not None]
        disliked = {i for i, event, _, _ in extra if event in NEGATIVE_EVENTS}
        extra = [e for e in extra if e[1] not in NEGATIVE_EVENTS]
        if base is None and not extra:
            if disliked:  # an unknown user who only disliked: popularity, minus what they disliked
                return History(np.zeros(0, dtype=np.int64), disliked=disliked)
            return None
        items = list(base.items) if base is not None else []
        events = list(base.events) if base is not None else []
        values = list(base.values) if base is not None else []
        stamps = list(base.timestamps) if base is not None else []
        for i, event, value, ts in extra:
            items.append(i)
            events.append(event)
            values.append(np.nan if value is None else float(value))
            stamps.append(int(ts))
        history = History(
            np.array(items, dtype=np.int64),
            events,
            np.array(values, dtype=np.float64),
            np.array(stamps, dtype=np.int64),
        )
        history = history.tail(MAX_HISTORY)
        history.disliked = disliked
        return history

    def session_history(self, item_ids: list) -> History:
        indexes = [self.item_index(i) for i in item_ids]
        indexes = np.array([i for i in indexes if i is not None], dtype=np.int64)
        return History(indexes, ["view"] * len(indexes), np.full(len(indexes), np.nan), np.arange(len(indexes)))

    # -- answers
    @property
    def cache_users(self) -> int:
        """Most users whose ranking is kept (least recently used dropped first); 0: no cache."""
        return self._cache_users

    @cache_users.setter
    def cache_users(self, value: int) -> None:
        self._cache_users = int(value)
        self._ranked = cachetools.LRUCache(maxsize=max(self._cache_users, 1))

    def category_mask(self, categories: list[str]) -> np.ndarray:
        """Boolean mask of the items in any of ``categories`` (case-insensitive); the last
        ``CATEGORY_MASKS`` distinct filters are kept."""
        key = "|".join(sorted(c.lower() for c in categories))
        with self._lock:
            mask = self._category_masks.get(key)
        if mask is None:
            wanted = {c.lower() for c in categories}
            mask = np.array(
                [bool(wanted & {p.lower() for p in str(cats).split("|") if p}) for cats in self.catalogue.categories]
            )
            with self._lock:
                self._category_masks[key] = mask
        return mask

    def rank(
        self, scores: np.ndarray, k: int, *, exclude: np.ndarray | None = None, categories: list[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        scores = np.array(scores, dtype=np.float32, copy=True)
        if exclude is not None and len(exclude):
            scores[exclude] = -np.inf
        if categories:
            scores[~self.category_mask(categories)] = -np.inf
        indexes, values = top_k(scores[None, :], k)
        keep = np.isfinite(values[0])
        return indexes[0][keep], values[0][keep]

    def recommend_history(
        self, history: History | None, k: int, *, exclude_seen: bool = True, categories: list[str] | None = None
    ) -> tuple[list[Recommendation], str]:
        """Recommendations for a history; an empty history falls back to popularity."""
        return self.recommend_histories([ScoreRequest(history, k, exclude_seen, categories)])[0]

    def recommend_histories(self, requests: list[ScoreRequest]) -> list[tuple[list[Recommendation], str]]:
        """``recommend_history`` for many requests, with one model call for all their histories.

        The answers are those of ``recommend_history`` for each request on its own: models score
        each history independently of the others in its batch (SASRec masks the left padding),
        which tests/unit/test_serving_batching.py checks. The service's micro-batcher calls this.
        """
        answers: list = [None] * len(requests)
        scored = []
        for position, request in enumerate(requests):
            history = request.history
            if history is None or len(history) == 0:
                disliked = np.array(sorted(history.disliked if history is not None else ()), dtype=np.int64)
                indexes, scores = self.rank(self.popularity, request.k, exclude=disliked, categories=request.categories)
                answers[position] = (self._package(indexes, scores, None), "popularity")
            else:
                scored.append(position)
        if scored:
            matrix = self.model.score([requests[position].history for position in scored])
            for row, position in enumerate(scored):
                history, k, exclude_seen, categories = requests[position]
                disliked = list(history.disliked)
                exclude = (
                    np.unique(np.r_[history.items, disliked]).astype(np.int64)
                    if exclude_seen
                    else np.array(disliked, dtype=np.int64)
                )
                indexes, values = self.rank(matrix[row], k, exclude=exclude, categories=categories)
                answers[position] = (self._package(indexes, values, history), self.model.name)
        return answers

    def recommend_user(self, user_id, history: History, k: int) -> list[Recommendation]:
        """Top-k for a known user whose history is their training history, excluding seen items.

        The model's answer to that history cannot change while this model is served, so the
        ranking (CACHE_DEPTH items, with explanations) is computed on the user's first request
        and answered from memory after that; the top-k of the cached ranking is exactly the
        top-k ``recommend_history`` gives (ties go to the lower index in both). At most
        ``cache_users`` users are kept, the least recently used dropped first; 0 turns the cache off. Users
        with feedback since training must not come here (their history differs).
        """
        if k > CACHE_DEPTH or self.cache_users <= 0:
            return self.recommend_history(history, k)[0]
        with self._lock:
            ranked = self._ranked.get(user_id)
        if ranked is None:
            # Plain tuples of plain values: the garbage collector stops tracking them, so a full
            # cache adds nothing to collection pauses (named tuples would stay tracked).
            ranked = tuple(tuple(r) for r in self.recommend_history(history, CACHE_DEPTH)[0])
            with self._lock:  # the cache drops its least recently used entry when full
                self._ranked[user_id] = ranked
        return [Recommendation._make(r) for r in ranked[:k]]

    def forget_users(self, is_forgotten) -> list:
        """Stop serving the histories, and drop the cached rankings, of users for whom ``is_forgotten(user)``
        holds (an erasure: the bundle's read-only index keeps a set of dropped users on top; the bundle on
        disk is purged later); returns the users dropped. Reads every user id once, no history."""
        gone = [user for user in self.histories if is_forgotten(user)]
        with self._lock:
            self.histories.drop(gone)
            for user in [u for u in list(self._ranked) if is_forgotten(u)]:
                self._ranked.pop(user, None)
        return gone

    def holds_user(self, user_id) -> dict:
        """Where this engine's memory holds the user: ``{"history": bool, "cached_ranking": bool}``."""
        with self._lock:
            return {"history": user_id in self.histories, "cached_ranking": user_id in self._ranked}

    def similar_items(self, item_id, k: int) -> list[Recommendation]:
        index = self.item_index(item_id)
        if index is None:
            raise KeyError(item_id)
        matrix = self.text_vectors if self.text_vectors is not None else getattr(self.model, "item_matrix", None)
        if matrix is None:
            raise RuntimeError("this model carries no item vectors, so similar items are unavailable")
        scores = matrix @ matrix[index]
        indexes, values = self.rank(scores, k, exclude=np.array([index]))
        return self._package(indexes, values, None)

    def search_vector(
        self, query_vector: np.ndarray, k: int, categories: list[str] | None = None
    ) -> list[Recommendation]:
        if self.text_vectors is None:
            raise RuntimeError("this model carries no text vectors, so free-text search is unavailable")
        indexes, values = self.rank(self.text_vectors @ query_vector, k, categories=categories)
        return self._package(indexes, values, None)

    def explain(self, history: History | None, index: int) -> str | None:
        """ "Because you liked X": the history item whose text is closest to the recommendation."""
        explanations = self._explanations(history, np.array([index]))
        return explanations[0] if explanations else None

    def _explanations(self, history: History | None, indexes: np.ndarray) -> list[str] | None:
        # One matrix product for all recommendations instead of one per item.
        if history is None or len(history) == 0 or self.text_vectors is None or len(indexes) == 0:
            return None
        # Explain only from what the user liked: a 1-star rating is no reason to recommend its neighbours.
        liked = np.array([_is_positive(e, v) for e, v in zip(history.events[-50:], history.values[-50:])], dtype=bool)
        recent = history.items[-50:][liked] if liked.any() else history.items[-50:]
        verb = "liked" if liked.any() else "watched"
        similarities = self.text_vectors[recent] @ self.text_vectors[indexes].T
        best = recent[np.argmax(similarities, axis=0)]
        titles, ids = self.catalogue.titles, self.catalogue.item_ids  # an untitled item is named by its id
        return [f"because you {verb} {titles[b] or ids[b]}" for b in best]

    def warm_up(self) -> None:
        """Answer one request of each kind so the first real requests are not slower."""
        user = next(iter(self.histories), None)
        self.recommend_history(self.history_for(user) if user is not None else None, 10)
        self.recommend_history(None, 10)
        if len(self.catalogue) and (self.text_vectors is not None or hasattr(self.model, "item_matrix")):
            self.similar_items(
                self.catalogue.item_ids[0].item()
                if hasattr(self.catalogue.item_ids[0], "item")
                else self.catalogue.item_ids[0],
                10,
            )

    def _package(self, indexes: np.ndarray, scores: np.ndarray, history: History | None) -> list[Recommendation]:
        explanations = self._explanations(history, np.asarray(indexes, dtype=np.int64))
        item_ids = self.catalogue.item_ids[indexes].tolist()  # tolist gives plain Python ints/strs
        titles = self.catalogue.titles
        return [
            Recommendation(
                item_id=item_id,
                title=str(titles[i]),
                score=float(s),
                rank=rank + 1,
                explanation=explanations[rank] if explanations else None,
            )
            for rank, (item_id, i, s) in enumerate(zip(item_ids, indexes, scores))
        ]
