"""The BentoML service: serves the MLflow champion and logs feedback durably.

Start it with ``bentoml serve serving.service:RecommenderService``. It loads
``models:/<name>@champion`` at start (``/readyz`` is 503 until then), polls the alias and swaps
the model atomically when it moves, and writes each feedback event to the feedback store before
answering 2xx. Heavy imports live in ``__init__``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Annotated, Literal

import bentoml
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse as StarletteJSON

for _name, _value in (("BENTOML_DO_NOT_TRACK", "True"), ("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "true"), ("HF_HUB_OFFLINE", "1")):
    os.environ.setdefault(_name, _value)

log = logging.getLogger("lmrecsys.serving")
MAX_QUERY_CHARS = 500
MAX_SESSION_ITEMS = 200
MAX_FEEDBACK_BATCH = 1000
Id = Annotated[int | str, Field(description="A user or item id: an integer for MovieLens, any string for generic catalogues")]

REQUESTS = bentoml.metrics.Counter(name="lmrecsys_requests", documentation="Requests per endpoint and outcome", labelnames=["endpoint", "outcome"])
LATENCY = bentoml.metrics.Histogram(name="lmrecsys_request_seconds", documentation="Request latency per endpoint", labelnames=["endpoint"])
FEEDBACK_WRITTEN = bentoml.metrics.Counter(name="lmrecsys_feedback_events_written", documentation="Feedback events durably written")
MODEL_VERSION = bentoml.metrics.Gauge(name="lmrecsys_model_version", documentation="Registry version of the model being served", multiprocess_mode="livemostrecent")

web = FastAPI(title="lm-recsys extras")


class FeedbackIn(BaseModel):
    """One user action on one item."""

    user_id: Id
    item_id: Id
    event: Literal["rating", "like", "dislike", "click", "view", "purchase", "interaction"]
    value: float | None = Field(default=None, description="Rating value, or a strength for other events")
    timestamp: float | None = Field(default=None, description="Epoch seconds; defaults to the time received")
    event_id: Annotated[str, Field(min_length=1, max_length=128)] | None = Field(default=None, description="Idempotency key: re-sending the same id is a no-op")


@dataclass(frozen=True)
class Loaded:
    """The model being served; replaced as a whole, never mutated."""

    engine: object
    version: str
    loaded_at: float


def error(status: int, message: str, **extra) -> StarletteJSON:
    return StarletteJSON({"error": message, **extra}, status_code=status)


@bentoml.service(workers=1, threads=4, traffic={"timeout": 60}, logging={"access": {"enabled": False}})
@bentoml.asgi_app(web, path="/")
class RecommenderService:
    """Recommendations, session recommendations, free-text search, similar items and feedback."""

    def __init__(self) -> None:
        import mlflow

        from components.feedback import FeedbackStore
        from components.settings import load_settings

        self.settings = load_settings()
        mlflow.set_tracking_uri(self.settings.tracking_uri)
        self.store = FeedbackStore(self.settings.feedback_url)
        self.loaded: Loaded | None = None
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._encoder = None
        self.reload()
        self._poller = threading.Thread(target=self._poll, name="champion-poller", daemon=True)
        self._poller.start()

    # ------------------------------------------------------------------ model life cycle
    def __is_ready__(self) -> bool:
        return self.loaded is not None

    def reload(self) -> dict:
        """Load the champion if the alias moved; keep serving the old model if loading fails."""
        import mlflow

        from components.registry import CHAMPION, get_alias_version
        from mlflow.tracking import MlflowClient

        with self._reload_lock:
            name = self.settings.registry.model_name
            try:
                current = get_alias_version(MlflowClient(self.settings.tracking_uri), name, CHAMPION)
            except Exception as exc:  # the registry being down must not take serving down
                log.error("cannot read the champion alias: %s", exc)
                return {"changed": False, "error": str(exc)}
            if current is None:
                return {"changed": False, "error": "no champion registered yet"}
            version = str(current.version)
            if self.loaded is not None and self.loaded.version == version:
                return {"changed": False, "version": version}
            try:
                model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
                engine = model.unwrap_python_model().engine
            except Exception as exc:
                log.error("loading %s version %s failed; still serving %s: %s", name, version, self.loaded.version if self.loaded else "nothing", exc)
                return {"changed": False, "error": f"version {version} failed to load: {exc}"}
            self.loaded = Loaded(engine, version, time.time())  # one assignment: requests see old or new, never half
            MODEL_VERSION.set(float(version))
            log.info("serving %s version %s", name, version)
            return {"changed": True, "version": version}

    def _poll(self) -> None:
        while not self._stop.wait(self.settings.serving.poll_interval_s):
            try:
                self.reload()
            except Exception:  # keep polling whatever happens
                log.exception("champion poll failed")

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self._stop.set()

    def _model(self) -> Loaded:
        loaded = self.loaded
        if loaded is None:
            raise RuntimeError("no model loaded")
        return loaded

    def encoder(self):
        if self._encoder is None:
            from components.embed import load_encoder

            self._encoder = load_encoder(self.settings.embed.encoder_path, self.settings.embed.max_length)
        return self._encoder

    # ------------------------------------------------------------------ helpers shared by endpoints
    def _user(self, engine, user_id):
        try:
            return engine.normalise_id(user_id)
        except (TypeError, ValueError):
            return None

    def _response(self, loaded: Loaded, recs, **extra) -> dict:
        return {
            "items": [r.__dict__ for r in recs],
            "model_version": loaded.version,
            "model": loaded.engine.model.name,
            **extra,
        }

    def _recommend(self, user_id, k, exclude_seen, categories, session_item_ids) -> dict | StarletteJSON:
        loaded = self._model()
        engine = loaded.engine
        user = self._user(engine, user_id)
        if user is None:
            return error(400, f"user_id {user_id!r} is not a valid {engine.id_type} id for this catalogue", field="user_id")
        watermark = engine.meta.get("feedback_watermark", 0)
        recent = self.store.user_events_since(str(user), watermark, limit=self.settings.serving.max_k * 5)
        history = engine.history_for(user, [(i, e, v, ts) for i, e, v, ts in recent])
        source = "history"
        if history is None and session_item_ids:
            unknown = [i for i in session_item_ids if engine.item_index(i) is None]
            if unknown:
                return error(404, f"unknown item id(s) in session_item_ids: {unknown[:10]}", field="session_item_ids")
            history, source = engine.session_history(session_item_ids), "session (unknown user)"
        elif history is None:
            source = "popularity (unknown user)"
        recs, used = engine.recommend_history(history, k, exclude_seen=exclude_seen, categories=categories)
        return self._response(loaded, recs, user_id=user, source=source, fallback=history is None, recent_events_used=len(recent))

    def _timed(self, endpoint: str, fn, *args):
        started = time.perf_counter()
        if self.loaded is None and endpoint not in ("feedback", "feedback_batch"):
            REQUESTS.labels(endpoint=endpoint, outcome="503").inc()
            return error(503, "no model is loaded yet; see /readyz")
        try:
            result = fn(*args)
        except Exception:
            REQUESTS.labels(endpoint=endpoint, outcome="error").inc()
            log.exception("%s failed", endpoint)
            return error(500, f"{endpoint} failed; see the service log")
        LATENCY.labels(endpoint=endpoint).observe(time.perf_counter() - started)
        status = getattr(result, "status_code", 200)
        REQUESTS.labels(endpoint=endpoint, outcome="ok" if status < 400 else str(status)).inc()
        return result

    # ------------------------------------------------------------------ endpoints
    @bentoml.api
    def recommend(
        self,
        user_id: Id,
        k: Annotated[int, Field(ge=1, le=100)] = 10,
        exclude_seen: bool = True,
        categories: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=20)] | None = None,
        session_item_ids: Annotated[list[Id], Field(max_length=MAX_SESSION_ITEMS)] | None = None,
    ) -> dict:
        """Top-k items for a user, with explanations; unknown users fall back to their session or popularity."""
        return self._timed("recommend", self._recommend, user_id, k, exclude_seen, categories, session_item_ids)

    @bentoml.api
    def recommend_session(
        self,
        item_ids: Annotated[list[Id], Field(min_length=1, max_length=MAX_SESSION_ITEMS)],
        k: Annotated[int, Field(ge=1, le=100)] = 10,
    ) -> dict:
        """Top-k items for an anonymous visitor, from the items they just viewed."""

        def run():
            loaded = self._model()
            unknown = [i for i in item_ids if loaded.engine.item_index(i) is None]
            if unknown:
                return error(404, f"unknown item id(s): {unknown[:10]}", field="item_ids")
            history = loaded.engine.session_history(item_ids)
            recs, _ = loaded.engine.recommend_history(history, k)
            return self._response(loaded, recs, source="session")

        return self._timed("recommend_session", run)

    @bentoml.api
    def search(
        self,
        query: Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS)],
        k: Annotated[int, Field(ge=1, le=100)] = 10,
        categories: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=20)] | None = None,
    ) -> dict:
        """Free text in, items out, through the language model: the cold-start path."""

        def run():
            if not query.strip():
                return error(400, "query must contain non-whitespace text", field="query")
            loaded = self._model()
            vector = self.encoder().encode([query])[0]
            return self._response(loaded, loaded.engine.search_vector(vector, k, categories), query=query)

        return self._timed("search", run)

    @bentoml.api
    def similar_items(self, item_id: Id, k: Annotated[int, Field(ge=1, le=100)] = 10) -> dict:
        """Items whose text is closest to the given item's."""

        def run():
            loaded = self._model()
            try:
                recs = loaded.engine.similar_items(item_id, k)
            except KeyError:
                return error(404, f"unknown item id {item_id!r}", field="item_id")
            return self._response(loaded, recs, item_id=item_id)

        return self._timed("similar_items", run)

    @bentoml.api
    def feedback(
        self,
        user_id: Id,
        item_id: Id,
        event: Literal["rating", "like", "dislike", "click", "view", "purchase", "interaction"],
        value: float | None = None,
        timestamp: float | None = None,
        event_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None,
    ) -> dict:
        """Record one event durably (written before this returns); idempotent by event_id."""
        return self._timed("feedback", self._write_feedback, [FeedbackIn(user_id=user_id, item_id=item_id, event=event, value=value, timestamp=timestamp, event_id=event_id)])

    @bentoml.api
    def feedback_batch(self, events: Annotated[list[FeedbackIn], Field(min_length=1, max_length=MAX_FEEDBACK_BATCH)]) -> dict:
        """Record many events in one durable transaction."""
        return self._timed("feedback_batch", self._write_feedback, events)

    def _write_feedback(self, events: list[FeedbackIn]):
        from components.feedback import FeedbackEvent

        loaded = self.loaded
        if loaded is not None:
            engine = loaded.engine
            unknown = [e.item_id for e in events if engine.item_index(e.item_id) is None]
            if unknown:
                return error(404, f"unknown item id(s): {unknown[:10]}; nothing was written", field="item_id")
            bad_users = [e.user_id for e in events if self._user(engine, e.user_id) is None]
            if bad_users:
                return error(400, f"user id(s) {bad_users[:10]} are not valid {engine.id_type} ids; nothing was written", field="user_id")
        if any(e.event == "rating" and e.value is None for e in events):
            return error(400, "rating events need a value; nothing was written", field="value")
        written = self.store.append(
            [FeedbackEvent(str(e.user_id), str(e.item_id), e.event, e.value, e.timestamp, e.event_id) for e in events]
        )
        new = sum(1 for _, fresh in written if fresh)
        FEEDBACK_WRITTEN.inc(new)
        return {"accepted": len(written), "new": new, "duplicates": len(written) - new, "event_ids": [eid for eid, _ in written]}

    # ------------------------------------------------------------------ admin and info (FastAPI routes)
    @web.post("/admin/reload")
    def admin_reload(self, request: Request):
        token = self.settings.serving.admin_token
        if not token:
            return JSONResponse({"error": "reload is disabled: set LMRECSYS_SERVING__ADMIN_TOKEN"}, status_code=403)
        if request.headers.get("authorization") != f"Bearer {token}":
            return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
        return self.reload()

    @web.get("/info")
    def info(self):
        loaded = self.loaded
        if loaded is None:
            return JSONResponse({"ready": False}, status_code=503)
        return {"ready": True, "model_version": loaded.version, "loaded_at": loaded.loaded_at, **loaded.engine.version_info}


@web.get("/ui", response_class=HTMLResponse)
def ui() -> str:
    from serving.page import PAGE

    return PAGE
