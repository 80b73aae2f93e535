"""A tiny registry of servable versions and real experiment traffic, shared by the experiment tests."""

from __future__ import annotations

import uuid

import mlflow
import numpy as np

from components.engine import write_bundle
from components.feedback.store import FeedbackEvent, FeedbackStore
from components.models import LMContent
from components.registry import configure, log_bundle_model
from tests.unit._model_fixtures import cluster_vectors, tiny_data


def register_copies(settings, copies: int) -> list[str]:
    """Register ``copies`` versions of one small lm_content bundle; version 1 becomes the champion.
    Returns the logged models' URIs (call inside ``restored_mlflow_state``)."""
    client = configure(settings)
    data = tiny_data()
    model = LMContent({"whiten_dim": None}).fit(data, cluster_vectors())
    bundle = write_bundle(
        settings.data_root / "bundle", model, data, cluster_vectors(), {"model_name": "lm_content", "id_type": "int"}
    )
    uris = []
    for _ in range(copies):
        with mlflow.start_run():
            uris.append(log_bundle_model(bundle, settings.registry.model_name)[1])
    client.set_registered_model_alias(settings.registry.model_name, "champion", "1")
    return uris


def fill(settings, experiment: dict, rates: dict[str, float], per_arm: int, seed: int = 0) -> None:
    """Impressions and the simulated users' likes, as serving and the feedback endpoint write them."""
    rng = np.random.default_rng(seed)
    store = FeedbackStore(settings.feedback_url)
    try:
        for arm, rate in rates.items():
            rows, events = [], []
            for i in range(per_arm):
                rec_id, user = f"rec-{uuid.uuid4().hex}", f"{arm}-{seed}-{i}"
                rows.append(
                    {
                        "recommendation_id": rec_id,
                        "experiment_id": experiment["experiment_id"],
                        "arm": arm,
                        "model_version": experiment[f"{arm}_version"],
                        "user_id": user,
                        "endpoint": "recommend",
                        "item_ids": ["10", "11", "12"],
                        "latency_ms": 3.0 + rng.random(),
                    }
                )
                if rng.random() < rate:
                    events.append(FeedbackEvent(user, "11", "like", recommendation_id=rec_id, position=1))
            store.log_impressions(rows)
            store.append(events)
    finally:
        store.close()
