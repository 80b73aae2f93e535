"""The BentoML service class and its endpoints: serves the MLflow champion and logs feedback durably.

Start it with ``bentoml serve serving.service:RecommenderService``. ``serving.champion`` follows the alias
(``/readyz`` is 503 until a model loads) and ``serving.feedback_writer`` writes each event before its 2xx.
Configuration comes only from ``components.settings``; heavy imports live in ``__init__``. See docs/serving.md.
"""

from __future__ import annotations

import logging
import os
import threading
from importlib import resources

import bentoml
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.responses import JSONResponse as StarletteJSON

from components.data.events import EventType
from components.settings import disable_telemetry, load_settings
from serving import answers, experiment_routes, forgotten, schemas
from serving.access import ClientKeys, Gate, admin_refusal
from serving.arms import Arms
from serving.bentoml_patch import cancel_request_timers
from serving.catalogue import CATALOGUE_REFRESH_S, AcceptedItems
from serving.champion import Champion, Loaded, every, feedback_watermark
from serving.feedback_writer import FeedbackWriter, RecentFeedback, record_feedback
from serving.middleware import FAST_LANE_ENDPOINTS, SERVING, BodyLimitMiddleware, FastLane
from serving.readiness import LazyStore, StoreHealth, not_ready_reasons, safely
from serving.schemas import MAX_BODY_BYTES, FeedbackIn, error, recommendations, top_k

disable_telemetry()
# A process-level default for the thread pools of libraries loaded after this module (numpy's BLAS, torch's
# OpenMP): a request's matrix products are small, so more threads only add hand-off cost and compete with the
# event loop for cores. __init__ applies the limit with threadpoolctl to BLAS libraries loaded before this.
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")
cancel_request_timers()

DECORATION = load_settings().serving
"""The serving settings BentoML fixes when the class is decorated, read once at import: the worker count,
the tracing options and the endpoints' input schemas (``max_k``). ``__init__`` reads everything else."""
K = top_k(DECORATION.max_k)
# OpenTelemetry spans add to every request's cost and BentoML exports them nowhere unless tracing is
# configured, so the hot endpoints skip them unless asked; BentoML's Prometheus metrics still count them.
HOT_URLS = [f"/{name}(\\?|$)" for name in FAST_LANE_ENDPOINTS]
TRACING = {} if DECORATION.trace_hot_paths else {"excluded_urls": HOT_URLS}
log = logging.getLogger("lmrecsys.serving")
web = FastAPI(title="lm-recsys extras")
web.include_router(forgotten.router)  # DELETE /admin/users/{user_id}, GET /admin/users/{user_id}/audit
web.include_router(experiment_routes.router)  # /admin/experiments..., GET /experiments/current
NO_ACCESS_LOG = {"access": {"enabled": False}}


@bentoml.service(workers=DECORATION.workers, threads=4, traffic={"timeout": 60}, tracing=TRACING, logging=NO_ACCESS_LOG)
@bentoml.asgi_app(web, path="/")
class RecommenderService:
    """Recommendations, session recommendations, free-text search, similar items and feedback."""

    def __init__(self) -> None:
        import mlflow
        from threadpoolctl import threadpool_limits

        from components.engine import MAX_HISTORY
        from serving.batching import ScoringBatcher

        threadpool_limits(limits=1, user_api="blas")
        self.settings = settings = load_settings()
        self.client_keys = ClientKeys(settings.serving)  # production mode: no client keys or a short token stop here
        mlflow.set_tracking_uri(settings.tracking_uri)
        self.page = resources.files("serving").joinpath("static", "index.html").read_text(encoding="utf-8")
        self.store = LazyStore(settings.feedback_url)  # opened on first use: the service starts while it is down
        self.health = StoreHealth(settings.feedback_url, settings.serving.store_stale_s)
        self.writer = FeedbackWriter(self.store, health=self.health)
        self.recent = RecentFeedback(self.store, max_users=settings.serving.recent_users)
        self.forgotten = forgotten.ForgottenUsers(settings, self.store, self.recent)  # erasure, within a refresh
        self.accepted = AcceptedItems(settings.snapshots_dir)  # checks feedback items while no model is loaded
        self.recent_limit = MAX_HISTORY  # the engine folds at most this many recent events into a history
        self.fast_lane = settings.serving.fast_lane
        self.batcher = ScoringBatcher(settings.serving.max_batch) if settings.serving.batch_scoring else None
        self.champion = Champion(settings, on_load=self._refresh_recent)
        self.arms = Arms(
            settings, self.store, self.champion, self.health, on_load=self.forgotten.apply, forgotten=self.forgotten.has
        )  # experiments
        self._stop = threading.Event()
        safely(self.accepted.refresh)
        self.champion.reload()
        self._refresh_recent()
        for name, interval_s, action in (
            ("champion-poller", settings.serving.poll_interval_s, self.champion.reload),
            ("feedback-index", self.recent.refresh_s, self._refresh_recent),
            ("accepted-catalogue", CATALOGUE_REFRESH_S, self.accepted.refresh),
            ("experiment", settings.experiments.refresh_s, self.arms.refresh),
        ):
            threading.Thread(target=every, args=(self._stop, interval_s, action), name=name, daemon=True).start()
        SERVING.append(self)

    @property
    def loaded(self) -> Loaded | None:
        """The model being served (None until one loads)."""
        return self.champion.loaded

    def __is_ready__(self) -> bool:
        """Ready when a model is loaded, the feedback writer runs and the feedback store answers."""
        return not self.not_ready_reasons()

    def not_ready_reasons(self) -> list[str]:
        """Why /readyz answers 503 (empty when ready); ``serving.access.Gate`` puts them in its body."""
        return not_ready_reasons(self.champion.loaded, self.writer, self.health)

    def _refresh_recent(self, engine=None) -> None:
        """Scan the store's new events (every second: also the store's health probe, see /readyz)."""
        engine = engine if engine is not None else (self.loaded.engine if self.loaded else None)
        try:
            self.recent.refresh(feedback_watermark(engine) if engine is not None else 0)
            self.forgotten.refresh(engine)
        except Exception as exc:  # the store is down: /readyz says so, the next probe tries again
            self.health.failed(exc)
        else:
            self.health.ok()

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self._stop.set()
        if self in SERVING:
            SERVING.remove(self)
        self.writer.close()
        self.arms.close()
        if self.batcher is not None:
            self.batcher.close()

    # ------------------------------------------------------------------ helpers shared by endpoints
    async def _scored(self, engine, history, k: int, exclude_seen: bool = True, categories=None) -> list:
        """The model's top-k for a history the ranking cache cannot answer, micro-batched when on."""
        from components.engine import ScoreRequest
        from serving.batching import score

        return (await score(self.batcher, engine, ScoreRequest(history, k, exclude_seen, categories)))[0]

    def _guarded(self, endpoint: str, fn, *args):
        """``fn(*args)``, or a 503 while no model is loaded, or a 500 (traceback in the log) if it raises."""
        return schemas.guarded(self.loaded, endpoint, fn, *args)

    async def _guarded_async(self, endpoint: str, fn, *args):
        """``_guarded`` for work that is awaited (the micro-batched scoring)."""
        return await schemas.guarded_async(self.loaded, endpoint, fn, *args)

    # ------------------------------------------------------------------ endpoints
    # The answers are a few small matrix products, so the endpoints are async and run on the event loop:
    # no thread-pool hop per request. Only search, which runs the language model, stays in the thread pool.
    @bentoml.api
    async def recommend(
        self,
        user_id: schemas.Id,
        k: K = 10,
        exclude_seen: schemas.Flag = True,
        categories: schemas.Categories | None = None,
        session_item_ids: schemas.SessionItems | None = None,
    ) -> dict:
        """Top-k items for a user, with explanations; unknown users fall back to their session or popularity."""
        args = (user_id, k, exclude_seen, categories, session_item_ids)
        compute = lambda loaded: answers.recommend(self, loaded, *args)  # noqa: E731  (one arm's answer)
        return await self._guarded_async("recommend", self.arms.answer, "recommend", user_id, compute)

    @bentoml.api
    async def history(self, user_id: schemas.Id, limit: schemas.HistoryLimit = 20) -> dict:
        """The user's newest interactions, newest first: training history plus feedback since training."""
        return self._guarded("history", answers.history, self, self.loaded, user_id, limit)

    @bentoml.api
    async def recommend_session(
        self,
        item_ids: schemas.ViewedItems,
        k: K = 10,
        categories: schemas.Categories | None = None,
        session_id: schemas.Id | None = None,
    ) -> dict:
        """Top-k items for an anonymous visitor, from the items they just viewed (split by ``session_id``)."""

        async def run(loaded):
            unknown = [i for i in item_ids if loaded.engine.item_index(i) is None][:10]
            if unknown:
                return error(404, f"unknown item id(s): {unknown}", field="item_ids", unknown_ids=unknown)
            recs = await self._scored(loaded.engine, loaded.engine.session_history(item_ids), k, True, categories)
            return recommendations(loaded, recs, source="session")

        return await self._guarded_async("recommend_session", self.arms.answer, "recommend_session", session_id, run)

    @bentoml.api
    def search(
        self,
        query: schemas.Query,
        k: K = 10,
        categories: schemas.Categories | None = None,
        session_id: schemas.Id | None = None,
    ) -> dict:
        """Free text in, items out, through the language model: the cold-start path."""

        def run(loaded):
            if not query.strip():
                return error(400, "query must contain non-whitespace text", field="query")
            if loaded.engine.text_vectors is None:
                message = f"model version {loaded.version} carries no text vectors, so free-text search is unavailable"
                return error(409, message)
            vector = self.champion.encoder().encode([query])[0]
            return recommendations(loaded, loaded.engine.search_vector(vector, k, categories), query=query)

        return self._guarded("search", self.arms.answer_sync, "search", session_id, run)

    @bentoml.api
    async def similar_items(self, item_id: schemas.Id, k: K = 10) -> dict:
        """Items whose text is closest to the given item's."""

        def run():
            loaded = self.loaded
            try:
                recs = loaded.engine.similar_items(item_id, k)
            except KeyError:
                return error(404, f"unknown item id {item_id!r}", field="item_id", unknown_ids=[item_id])
            except RuntimeError as exc:
                return error(409, f"model version {loaded.version}: {exc}")
            return recommendations(loaded, recs, item_id=item_id)

        return self._guarded("similar_items", run)

    @bentoml.api
    async def feedback(
        self,
        user_id: schemas.Id,
        item_id: schemas.Id,
        event: EventType,
        value: schemas.Finite | None = None,
        timestamp: schemas.Finite | None = None,
        event_id: schemas.EventId | None = None,
        recommendation_id: schemas.RecommendationId | None = None,
        position: schemas.Position | None = None,
    ) -> dict:
        """Record one event durably (written before this returns); idempotent by event_id. With a
        ``recommendation_id`` (and ``position``) it is attributed to that answer's impression."""
        fields = {"value": value, "timestamp": timestamp, "event_id": event_id, "position": position}
        fields["recommendation_id"] = recommendation_id
        return await self._write_feedback([FeedbackIn(user_id=user_id, item_id=item_id, event=event, **fields)])

    @bentoml.api
    async def feedback_batch(self, events: schemas.FeedbackEvents) -> dict:
        """Record many events in one durable transaction; all or nothing."""
        return await self._write_feedback(events)

    @bentoml.api
    async def ping(self) -> dict:
        """A trivial endpoint: measures the framework's own per-request cost."""
        return {"ok": True}

    async def _write_feedback(self, events: list[FeedbackIn]) -> dict | StarletteJSON:
        loaded = self.loaded  # None: item ids are checked against the newest accepted snapshot, if any
        ids = loaded.engine if loaded is not None else self.accepted.checker()
        return await record_feedback(events, ids, self.settings.validation, self.writer, self.recent)

    # ------------------------------------------------------------------ admin, info and the page (FastAPI routes)
    @web.post("/admin/reload")
    def admin_reload(self, request: Request):
        """Check the champion alias now and swap if it moved (bearer token from settings)."""
        refusal = admin_refusal(self.settings.serving.admin_token, request.headers.get("authorization", ""))
        return refusal if refusal is not None else self.champion.reload()

    @web.get("/info")
    def info(self):
        """The model being served and its lineage."""
        loaded = self.loaded
        if loaded is None:
            return JSONResponse({"ready": False, "error": "no model is loaded yet"}, status_code=503)
        lineage = {"load_seconds": loaded.engine.load_seconds, **loaded.engine.version_info}
        return {"ready": True, "model_version": loaded.version, "loaded_at": loaded.loaded_at, **lineage}

    @web.get("/ui", response_class=HTMLResponse)
    def ui(self) -> HTMLResponse:
        """The web page for trying the service (serving/static/index.html, read at start)."""
        return HTMLResponse(self.page)


RecommenderService.add_asgi_middleware(Gate)  # outermost of ours: the fast lane and BentoML sit behind it
RecommenderService.add_asgi_middleware(BodyLimitMiddleware, max_bytes=MAX_BODY_BYTES)
RecommenderService.add_asgi_middleware(FastLane, service_class=RecommenderService)
