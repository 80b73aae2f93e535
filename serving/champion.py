"""Which model the service answers with: the registry's champion, followed and swapped atomically.

``Champion.reload`` reads the alias, loads and warms up a new version beside the one being served, and
swaps it in with one assignment, so a request sees the old model or the new one, never half of either. A
version that fails to load changes nothing: the old one keeps serving and the failure is logged and counted.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from dataclasses import dataclass

import bentoml

log = logging.getLogger("lmrecsys.serving")

MODEL_VERSION = bentoml.metrics.Gauge(
    name="lmrecsys_model_version",
    documentation="Registry version of the model being served",
    multiprocess_mode="livemostrecent",
)
RELOADS = bentoml.metrics.Counter(
    name="lmrecsys_model_reloads", documentation="Champion reload attempts by outcome", labelnames=["outcome"]
)


@dataclass(frozen=True)
class Loaded:
    """The model being served; replaced as a whole, never mutated."""

    engine: object
    version: str
    loaded_at: float


def feedback_watermark(engine) -> int:
    """The feedback-store sequence number the engine's model was trained up to."""
    return int(engine.meta.get("feedback_watermark", 0) or 0)


def user_or_none(engine, user_id):
    """``user_id`` in the catalogue's id type, or None when it is not a valid id there."""
    try:
        return engine.normalise_id(user_id)
    except (TypeError, ValueError):
        return None


class Champion:
    """The loaded champion (``loaded``, None until one loads), the alias check that replaces it, and the
    text encoder for free-text search.

    ``on_load(engine)`` runs for a newly loaded engine before it is swapped in (the service refreshes its
    recent-feedback index to the new model's watermark there).
    """

    def __init__(self, settings, on_load=None) -> None:
        from components.registry.tracking import HTTP_RETRY_DEFAULTS

        if settings.tracking_uri.startswith(("http://", "https://")):  # a server that is down fails in seconds,
            for name, value in HTTP_RETRY_DEFAULTS.items():  # not after MLflow's default minutes of retries
                os.environ.setdefault(name, value)
        self.settings = settings
        self.on_load = on_load
        self.loaded: Loaded | None = None
        self._lock, self._encoder_lock, self._encoder = threading.Lock(), threading.Lock(), None

    def encoder(self):
        """The text encoder, loaded on the first search only (it is the largest thing in memory)."""
        with self._encoder_lock:
            if self._encoder is None:
                from components.embed import load_encoder

                embed, loaded = self.settings.embed, self.loaded
                path = embed.encoder_path or ((loaded.engine.meta.get("encoder") or {}).get("path") if loaded else None)
                self._encoder = load_encoder(path, embed.max_length, precision=embed.precision)
            return self._encoder

    def reload(self) -> dict:
        """Load the champion if the alias moved; keep serving the old model if loading fails."""
        from mlflow.tracking import MlflowClient

        from components.registry import CHAMPION, get_alias_version, load_version_engine

        with self._lock:
            name, serving = self.settings.registry.model_name, self.loaded.version if self.loaded else None
            try:
                current = get_alias_version(MlflowClient(self.settings.tracking_uri), name, CHAMPION)
            except Exception as exc:  # the registry being down must not take serving down
                log.error("cannot read the champion alias: %s", exc)
                RELOADS.labels(outcome="registry_error").inc()
                return {"changed": False, "error": f"cannot read the champion alias: {exc}", "version": serving}
            if current is None:
                return {"changed": False, "error": "no champion registered yet", "version": None}
            version = str(current.version)
            if serving == version:
                return {"changed": False, "version": version}
            try:
                # the bundle is hashed against the version's bundle.sha256 tag before any of it is read
                engine = load_version_engine(MlflowClient(self.settings.tracking_uri).get_model_version(name, version))
                engine.cache_users = self.settings.serving.cache_users
                engine.warm_up()
            except Exception as exc:
                failure = f"{type(exc).__name__}: {exc}"
                log.error(
                    "loading %s version %s failed; still serving %s: %s", name, version, serving or "nothing", failure
                )
                RELOADS.labels(outcome="failed").inc()
                return {"changed": False, "error": f"version {version} failed to load: {failure}", "version": serving}
            if self.on_load is not None:
                self.on_load(engine)
            self.loaded = Loaded(engine, version, time.time())  # one assignment: requests see old or new, never half
            # The model's many long-lived objects (the catalogue and its index) would make every full garbage
            # collection scan them, and those pauses set the tail latency. Freezing moves everything alive
            # now out of the collector's view (an old model, once unreferenced, is still freed by
            # reference counting).
            gc.collect()
            gc.freeze()
            MODEL_VERSION.set(float(version))
            RELOADS.labels(outcome="loaded").inc()
            log.info("serving %s version %s (loaded in %.2fs)", name, version, engine.load_seconds)
            return {"changed": True, "version": version}


def every(stop: threading.Event, interval_s: float, action) -> None:
    """Run ``action`` every ``interval_s`` seconds until ``stop`` is set; a failure is logged, not fatal."""
    while not stop.wait(interval_s):
        try:
            action()
        except Exception:  # keep going whatever happens; the log says why
            log.exception("background task %s failed", getattr(action, "__name__", action))
