"""The online-experiment simulator: held-out interactions replayed as users of a running service.

Each simulated user holds their real *future* interactions (held out of every model's training). One
step asks ``/recommend`` for the user and likes each recommended item that is among their future
interactions, ignoring the rest, with configurable ``noise`` (a future item is ignored, or another item
liked, with that probability); the likes go to ``/feedback_batch`` with the answer's ``recommendation_id``
and each item's position. Everything else is the real machinery: BentoML serving both arms, the feedback
store's impressions and attributions, and the service's decision.

``tiny_world`` builds a small hand-made catalogue (genres of items, users who each keep to one genre,
their first interactions for training, the rest held out) and registers models on it: popularity, a
language-model content model on vectors that know the genres (clearly better), and the same model on
random vectors (about a random ranking: worse than popularity, since half the users keep to one
genre). ``movielens_users`` replays ml-latest-small's held-out items
(benchmarks/bench_experiments.py).
"""

from __future__ import annotations

import random
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import requests


@dataclass
class SimUser:
    user_id: str
    future: set[str]


@dataclass
class Simulator:
    base_url: str
    users: list[SimUser]
    k: int = 10
    noise: float = 0.0
    seed: int = 0
    headers: dict = field(default_factory=dict)
    acknowledged: list[str] = field(default_factory=list)
    """Every ``recommendation_id`` a 200 answer handed out (a crash test checks the store holds each)."""
    arms: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._session = threading.local()

    def _http(self) -> requests.Session:
        if not hasattr(self._session, "s"):
            self._session.s = requests.Session()
        return self._session.s

    def step(self, user: SimUser) -> dict:
        """One recommendation and the user's reaction; returns the answer."""
        http = self._http()
        answer = http.post(
            f"{self.base_url}/recommend", json={"user_id": user.user_id, "k": self.k}, headers=self.headers, timeout=60
        )
        answer.raise_for_status()
        body = answer.json()
        rec_id = body.get("recommendation_id")
        with self._lock:
            if rec_id:
                self.acknowledged.append(rec_id)
            self.arms[body["arm"]] = self.arms.get(body["arm"], 0) + 1
            draws = [self._rng.random() for _ in body["items"]]
        events = []
        for position, (item, draw) in enumerate(zip(body["items"], draws)):
            liked = str(item["item_id"]) in user.future
            if draw < self.noise:
                liked = not liked
            if liked:
                events.append(
                    {
                        "user_id": user.user_id,
                        "item_id": item["item_id"],
                        "event": "like",
                        "recommendation_id": rec_id,
                        "position": position,
                        "event_id": f"sim-{uuid.uuid4().hex}",
                    }
                )
        if events and rec_id:
            sent = http.post(
                f"{self.base_url}/feedback_batch", json={"events": events}, headers=self.headers, timeout=60
            )
            sent.raise_for_status()
        return body

    def run(self, steps: int, threads: int = 4, until=None, check_every: int = 50) -> int:
        """``steps`` user visits (users drawn in turn) on ``threads`` threads; stops early once ``until()``
        is true (asked every ``check_every`` steps). Returns how many steps ran."""
        done = 0
        counter = iter(range(steps))
        stop = threading.Event()

        def worker():
            nonlocal done
            for index in counter:
                if stop.is_set():
                    return
                self.step(self.users[index % len(self.users)])
                with self._lock:
                    done += 1
                    check = until is not None and done % check_every == 0
                if check and until():
                    stop.set()

        pool = [threading.Thread(target=worker) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        return done


# ---------------------------------------------------------------- the tiny world


def tiny_world(root: Path, genres: int = 4, per_genre: int = 15, users: int = 1600, seen: int = 5, seed: int = 0):
    """Items, users and their held-out futures, and the registered versions (returns the settings, the users
    and ``{"popularity", "popularity_copy", "worse", "better"}`` → version)."""
    import mlflow

    from components.data.dataset import InteractionData
    from components.engine import write_bundle
    from components.models import LMContent, Popularity
    from components.registry import configure, log_bundle_model
    from components.settings import load_settings
    from tests.unit._model_fixtures import interactions_frame, items_frame

    rng = np.random.default_rng(seed)
    item_ids = list(range(100, 100 + genres * per_genre))
    histories, sim_users = {}, []
    for user in range(1, users + 1):
        genre = 0 if user % 2 == 0 else 1 + user % (genres - 1)  # half the users in genre 0: popularity helps them
        own = [genre * per_genre + i for i in rng.permutation(per_genre)]
        histories[user] = own[:seen]
        sim_users.append(SimUser(str(user), {str(item_ids[i]) for i in own[seen:]}))
    data = InteractionData.from_frames(items_frame(item_ids), interactions_frame(histories, item_ids))
    dim = genres + 4
    right = 0.05 * rng.standard_normal((len(item_ids), dim))
    for index in range(len(item_ids)):
        right[index, index // per_genre] += 1.0
    wrong = rng.standard_normal((len(item_ids), dim))  # vectors that know nothing: about a random ranking
    unit = lambda v: (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    right, wrong = unit(right), unit(wrong)
    settings = load_settings(data_root=root)
    client = configure(settings)
    models = {
        "popularity": (Popularity({}).fit(data), right),
        "popularity_copy": (Popularity({}).fit(data), right),
        "worse": (LMContent({"whiten_dim": None}).fit(data, wrong), wrong),
        "better": (LMContent({"whiten_dim": None}).fit(data, right), right),
    }
    versions = {}
    for name, (model, vectors) in models.items():
        bundle = write_bundle(
            root / name / "bundle", model, data, vectors, {"model_name": model.name, "id_type": "int"}
        )
        with mlflow.start_run(run_name=f"sim-{name}"):
            versions[name] = str(log_bundle_model(bundle, settings.registry.model_name)[0])
    client.set_registered_model_alias(settings.registry.model_name, "champion", versions["popularity"])
    return settings, sim_users, versions


def movielens_users(ratings: pd.DataFrame, held_out: int) -> tuple[pd.DataFrame, list[SimUser]]:
    """Each user's last ``held_out`` interactions become their future; returns (the training rows, the users)."""
    ordered = ratings.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    rank = ordered.groupby("user_id").cumcount(ascending=False)
    future = ordered[rank < held_out]
    users = [SimUser(str(u), {str(i) for i in group["item_id"]}) for u, group in future.groupby("user_id")]
    return ordered[rank >= held_out], users
