"""The BentoML service: serves the MLflow champion and logs feedback durably.

Start it with ``bentoml serve serving.service:RecommenderService``. It loads
``models:/<name>@champion`` at start (``/readyz`` is 503 until then), polls the alias and swaps
the model atomically when it moves, and writes each feedback event to the feedback store before
answering 2xx. Heavy imports live in ``__init__``. See docs/serving.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import inspect
import json
import logging
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Annotated

import bentoml
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse as StarletteJSON
from starlette.responses import Response

from components.data.events import EventType

for _name, _value in (("BENTOML_DO_NOT_TRACK", "True"), ("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "true"), ("HF_HUB_OFFLINE", "1")):
    os.environ.setdefault(_name, _value)
# A request's matrix products are small (one vector against the item matrix): BLAS threads only
# add hand-off cost and fight the event loop for cores (measured: 21 ms per /recommend with
# threaded OpenBLAS on 2 busy cores, 1.4 ms with one thread). __init__ also applies it with
# threadpoolctl in case numpy was imported before this module.
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

log = logging.getLogger("lmrecsys.serving")


def _cancel_request_timers() -> None:
    """Make BentoML's request timeout cancel its timer when the request ends.

    BentoML 1.4's ``TimeoutMiddleware`` schedules one ``loop.call_later(timeout, ...)`` per request
    and never cancels it, so every request leaves a timer, a future and a context alive for the
    whole timeout (60 s here): about 100,000 of each at 1,700 requests per second. The collector
    then walks them all in every full collection, which paused the event loop for 100 to 400 ms
    and set the p99. This keeps BentoML's behaviour (a 504 after ``timeout`` seconds) and cancels
    the timer once the response has started. It patches only the class it knows; any other shape
    is left alone with a warning.
    """
    from bentoml._internal.server.http import traffic

    middleware = getattr(traffic, "TimeoutMiddleware", None)
    if middleware is None or getattr(middleware, "_lmrecsys_cancels_timers", False):
        return
    if not hasattr(middleware, "_set_timer_out"):
        log.warning("BentoML's TimeoutMiddleware changed shape; its per-request timers are not cancelled")
        return

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

        async def _send(message) -> None:
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        future = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
        try:
            await waiter
        except asyncio.TimeoutError:
            if future.cancel():
                await StarletteJSON({"error": f"Not able to process the request in {self.timeout} seconds"}, status_code=504)(scope, receive, send)
            return
        finally:
            timer.cancel()  # the one line BentoML's version lacks
        await future

    middleware.__call__ = __call__
    middleware._lmrecsys_cancels_timers = True


_cancel_request_timers()
MAX_K = 100
MAX_QUERY_CHARS = 500
MAX_SESSION_ITEMS = 200
MAX_FEEDBACK_BATCH = 1000
MAX_ID_CHARS = 128
MAX_BODY_BYTES = 1 << 20
"""Request bodies over 1 MiB get 413 before anything parses them."""
FEEDBACK_REFRESH_S = 1.0
"""How often events written by other processes are picked up by the recent-feedback index."""
FUTURE_SLACK_S = 86_400
"""Feedback timestamps may lie at most this far in the future (the snapshot suite's own slack)."""

Id = Annotated[
    int | Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)],
    Field(description="A user or item id: an integer for MovieLens, any non-empty string for generic catalogues"),
]
K = Annotated[int, Field(ge=1, le=MAX_K, description=f"How many items to return (1 to {MAX_K})")]
Categories = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=64)]],
    Field(max_length=20, description="Keep only items in at least one of these categories (genres), case-insensitive"),
]

REQUESTS = bentoml.metrics.Counter(name="lmrecsys_requests", documentation="Requests per endpoint and outcome", labelnames=["endpoint", "outcome"])
LATENCY = bentoml.metrics.Histogram(
    name="lmrecsys_request_seconds",
    documentation="Request latency per endpoint (handler time)",
    labelnames=["endpoint"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, float("inf")),
)
FEEDBACK_WRITTEN = bentoml.metrics.Counter(name="lmrecsys_feedback_events_written", documentation="Feedback events durably written (duplicates not counted)")
MODEL_VERSION = bentoml.metrics.Gauge(name="lmrecsys_model_version", documentation="Registry version of the model being served", multiprocess_mode="livemostrecent")
RELOADS = bentoml.metrics.Counter(name="lmrecsys_model_reloads", documentation="Champion reload attempts by outcome", labelnames=["outcome"])

web = FastAPI(title="lm-recsys extras")


class FeedbackIn(BaseModel):
    """One user action on one item."""

    user_id: Id
    item_id: Id
    event: EventType
    value: float | None = Field(default=None, allow_inf_nan=False, description="Rating value (required for ratings), or a strength for other events")
    timestamp: float | None = Field(default=None, allow_inf_nan=False, description="Epoch seconds; defaults to the time received")
    event_id: Annotated[str, Field(min_length=1, max_length=128)] | None = Field(default=None, description="Idempotency key: re-sending the same id is a no-op")


@dataclass(frozen=True)
class Loaded:
    """The model being served; replaced as a whole, never mutated."""

    engine: object
    version: str
    loaded_at: float


def error(status: int, message: str, **extra) -> StarletteJSON:
    """A JSON error a client can act on: what is wrong, and which field."""
    return StarletteJSON({"error": message, **extra}, status_code=status)


class BodyLimitMiddleware:
    """Answers 413 to request bodies over ``max_bytes``, declared or streamed, before any parsing."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = next((value for name, value in scope["headers"] if name == b"content-length"), None)
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                return await self._reject(send, 400, "the Content-Length header is not a number")
            if size > self.max_bytes:
                return await self._reject(send, 413, f"request body of {size} bytes is over the {self.max_bytes}-byte limit")
            return await self.app(scope, receive, send)
        # No declared length (chunked): read up to the cap, then replay what was read.
        chunks, total, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            total += len(chunks[-1])
            more = message.get("more_body", False)
            if total > self.max_bytes:
                return await self._reject(send, 413, f"request body is over the {self.max_bytes}-byte limit")
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    @staticmethod
    async def _reject(send, status: int, message: str) -> None:
        payload = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


class FeedbackWriter:
    """Writes feedback through one thread, all waiting requests in one transaction (group commit).

    Every commit is fsynced, so a commit per request would cap ingestion at the disk's fsync rate;
    grouping concurrent requests still writes each event durably before its 2xx, for one fsync per
    group.
    """

    def __init__(self, store, max_group_events: int = 5000) -> None:
        self.store = store
        self.max_group_events = max_group_events
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="feedback-writer", daemon=True)
        self._thread.start()

    def submit(self, events: list) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((events, future))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group, size, stop = [first], len(first[0]), False
            while size < self.max_group_events:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                group.append(item)
                size += len(item[0])
            try:
                written = self.store.append([event for events, _ in group for event in events])
            except Exception as exc:  # every waiting request learns the write failed; none gets a 2xx
                log.exception("writing %d feedback event(s) failed", size)
                for _, future in group:
                    future.set_exception(exc)
            else:
                start = 0
                for events, future in group:
                    future.set_result(written[start : start + len(events)])
                    start += len(events)
            if stop:
                return


class RecentFeedback:
    """Which users may have feedback newer than the served model's watermark.

    Asking the store for every request costs a query (~75 µs on SQLite, a round trip on
    PostgreSQL); most users have no recent events, so this index lets those requests skip it.
    Writes through this process count at once; events written by other processes are picked up
    every ``refresh_s``.
    """

    def __init__(self, store, refresh_s: float = FEEDBACK_REFRESH_S) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self._newest_seq: dict[str, float] = {}
        self._scanned_upto = 0
        self._floor: int | None = None
        self._lock = threading.Lock()

    def may_have_events(self, user_id: str, watermark: int) -> bool:
        return self._newest_seq.get(user_id, -1) > watermark

    def mark_written(self, user_ids) -> None:
        # The exact seq is unknown until the next scan; infinity means "ask the store". The lock
        # orders this after any scan in progress, so a scan never overwrites a fresher mark.
        with self._lock:
            for user_id in user_ids:
                self._newest_seq[user_id] = float("inf")

    def refresh(self, watermark: int) -> None:
        """Scan events past what was already scanned (or rebuild when the floor moved down)."""
        with self._lock:
            if self._floor is None or watermark < self._floor:
                self._floor, self._scanned_upto, self._newest_seq = watermark, watermark, {}
            upto = self.store.watermark()
            if upto <= self._scanned_upto:
                return
            frame = self.store.events_between(self._scanned_upto, upto)
            for user_id, seq in frame.groupby("user_id")["seq"].max().items() if len(frame) else ():
                key = str(user_id)
                known = self._newest_seq.get(key, -1.0)
                self._newest_seq[key] = float(seq) if known == float("inf") else max(known, float(seq))
            self._scanned_upto = upto


FAST_LANE_ENDPOINTS = ("recommend", "recommend_session", "similar_items", "history", "feedback", "feedback_batch")
"""The hot endpoints the fast lane answers (all async, all answered from memory or by a group commit)."""
_SERVING: list = []
"""The service instance of this worker process (set by ``__init__``), for the fast lane."""


class FastLane:
    """Answers the hot JSON endpoints without BentoML's per-request IO layer.

    BentoML's API layer costs more per request than the recommendation itself (a trivial
    ``@bentoml.api`` endpoint tops out at a few hundred requests per second per core). For a JSON
    ``POST`` to one of ``FAST_LANE_ENDPOINTS``, this middleware does what that layer does, with
    the same parts: it validates the body with the endpoint's own BentoML input model (so the
    OpenAPI schema, the limits and the 400 body with field-level details are the same), calls the
    same endpoint method, and writes its JSON answer. Other content types, paths and methods pass
    through to BentoML unchanged, and BentoML's metrics and tracing middleware, which sit outside
    this one, still see every request. Its answers carry ``x-lmrecsys-lane: fast``;
    ``LMRECSYS_SERVING__FAST_LANE=false`` turns it off.
    """

    def __init__(self, app, service_class, endpoints=FAST_LANE_ENDPOINTS) -> None:
        self.app = app
        self.routes = {}
        for name in endpoints:
            method = service_class.apis[name]
            # The lane awaits the method with its fields only: no context object, no batching.
            if method.ctx_param is not None or method.batchable or not inspect.iscoroutinefunction(method.func):
                raise TypeError(f"the fast lane can only serve plain async endpoints; {name!r} is not one")
            self.routes[f"/{name}"] = (method.func, method.input_spec)

    async def __call__(self, scope, receive, send) -> None:
        route = self.routes.get(scope.get("path")) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None or not _SERVING or not _SERVING[-1].fast_lane or not self._is_json(scope["headers"]):
            return await self.app(scope, receive, send)
        from pydantic import ValidationError

        func, spec = route
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        try:
            data = spec.model_validate_json(b"".join(chunks) or b"{}")  # what BentoML's JSON serde does
        except ValidationError as exc:  # BentoML's own 400 body for invalid input
            body = {"error": f"{exc.error_count()} validation error for {exc.title}", "detail": exc.errors(include_context=False, include_input=False)}
            return await self._send(send, 400, json.dumps(body).encode())
        try:
            result = await func(_SERVING[-1], **{name: getattr(data, name) for name in type(data).model_fields})
        except Exception:
            log.exception("%s failed", scope["path"])
            return await self._send(send, 500, b'{"error": "An unexpected error has occurred, please check the server log."}')
        if isinstance(result, Response):  # an error answer the endpoint built itself
            result.headers["x-lmrecsys-lane"] = "fast"
            return await result(scope, receive, send)
        return await self._send(send, 200, json.dumps(result, separators=(",", ":")).encode())

    @staticmethod
    def _is_json(headers) -> bool:
        content_type = next((value for name, value in headers if name == b"content-type"), b"application/json")
        return content_type.split(b";")[0].strip().lower() == b"application/json"

    @staticmethod
    async def _send(send, status: int, payload: bytes) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), (b"x-lmrecsys-lane", b"fast")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


# Read at import because BentoML fixes its configuration when the class is decorated.
WORKERS = int(os.environ.get("LMRECSYS_SERVING__WORKERS", "1"))
TRACE_HOT_PATHS = os.environ.get("LMRECSYS_SERVING__TRACE_HOT_PATHS", "false").strip().lower() in ("1", "true", "yes")
# OpenTelemetry spans for every request cost about a fifth of a fast-lane request's time; the hot
# endpoints skip them unless asked (BentoML's Prometheus metrics and ours still count them).
TRACING = {} if TRACE_HOT_PATHS else {"excluded_urls": [f"/{name}(\\?|$)" for name in FAST_LANE_ENDPOINTS]}


@bentoml.service(workers=WORKERS, threads=4, traffic={"timeout": 60}, logging={"access": {"enabled": False}}, tracing=TRACING)
@bentoml.asgi_app(web, path="/")
class RecommenderService:
    """Recommendations, session recommendations, free-text search, similar items and feedback."""

    def __init__(self) -> None:
        import mlflow

        from components.feedback.store import FeedbackStore
        from components.settings import load_settings
        from serving.batching import ScoringBatcher

        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1, user_api="blas")
        self.settings = load_settings()
        token = self.settings.serving.admin_token
        if self.settings.serving.production and token is not None and len(token) < 32:
            raise RuntimeError("production mode: LMRECSYS_SERVING__ADMIN_TOKEN must be at least 32 characters (or unset to disable /admin/reload)")
        mlflow.set_tracking_uri(self.settings.tracking_uri)
        self.store = FeedbackStore(self.settings.feedback_url)
        self.writer = FeedbackWriter(self.store)
        self.recent = RecentFeedback(self.store)
        self.fast_lane = self.settings.serving.fast_lane
        self.batcher = ScoringBatcher(self.settings.serving.max_batch) if self.settings.serving.batch_scoring else None
        self.loaded: Loaded | None = None
        self._reload_lock = threading.Lock()
        self._encoder_lock = threading.Lock()
        self._stop = threading.Event()
        self._encoder = None
        self.reload()
        self._refresh_recent()
        self._threads = [
            threading.Thread(target=self._every, args=(self.settings.serving.poll_interval_s, self.reload), name="champion-poller", daemon=True),
            threading.Thread(target=self._every, args=(self.recent.refresh_s, self._refresh_recent), name="feedback-index", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        _SERVING.append(self)

    # ------------------------------------------------------------------ model life cycle
    def __is_ready__(self) -> bool:
        return self.loaded is not None

    def reload(self) -> dict:
        """Load the champion if the alias moved; keep serving the old model if loading fails."""
        import mlflow
        from mlflow.tracking import MlflowClient

        from components.registry import CHAMPION, get_alias_version

        with self._reload_lock:
            name = self.settings.registry.model_name
            try:
                current = get_alias_version(MlflowClient(self.settings.tracking_uri), name, CHAMPION)
            except Exception as exc:  # the registry being down must not take serving down
                log.error("cannot read the champion alias: %s", exc)
                RELOADS.labels(outcome="registry_error").inc()
                return {"changed": False, "error": f"cannot read the champion alias: {exc}", "version": self.loaded.version if self.loaded else None}
            if current is None:
                return {"changed": False, "error": "no champion registered yet", "version": None}
            version = str(current.version)
            if self.loaded is not None and self.loaded.version == version:
                return {"changed": False, "version": version}
            try:
                model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
                engine = model.unwrap_python_model().engine
                engine.cache_users = self.settings.serving.cache_users
                engine.warm_up()
            except Exception as exc:
                serving = self.loaded.version if self.loaded else "nothing"
                log.error("loading %s version %s failed; still serving %s: %s: %s", name, version, serving, type(exc).__name__, exc)
                RELOADS.labels(outcome="failed").inc()
                return {"changed": False, "error": f"version {version} failed to load: {type(exc).__name__}: {exc}", "version": self.loaded.version if self.loaded else None}
            self.recent.refresh(int(engine.meta.get("feedback_watermark", 0) or 0))
            self.loaded = Loaded(engine, version, time.time())  # one assignment: requests see old or new, never half
            # The model's many long-lived objects (histories, catalogue) would make every full
            # garbage collection scan them: pauses of a few hundred ms that show up as p99. Freezing
            # moves everything alive now out of the collector's view (an old model, once
            # unreferenced, is still freed by reference counting).
            gc.collect()
            gc.freeze()
            MODEL_VERSION.set(float(version))
            RELOADS.labels(outcome="loaded").inc()
            log.info("serving %s version %s (loaded in %.2fs)", name, version, engine.load_seconds)
            return {"changed": True, "version": version}

    def _refresh_recent(self) -> None:
        loaded = self.loaded
        self.recent.refresh(int(loaded.engine.meta.get("feedback_watermark", 0) or 0) if loaded else 0)

    def _every(self, interval_s: float, action) -> None:
        while not self._stop.wait(interval_s):
            try:
                action()
            except Exception:  # keep going whatever happens; the log says why
                log.exception("background task %s failed", getattr(action, "__name__", action))

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self._stop.set()
        if self in _SERVING:
            _SERVING.remove(self)
        self.writer.close()
        if self.batcher is not None:
            self.batcher.close()

    def encoder(self):
        """The text encoder, loaded on the first search only (it is the largest thing in memory)."""
        with self._encoder_lock:
            if self._encoder is None:
                from components.embed import load_encoder

                loaded = self.loaded
                path = self.settings.embed.encoder_path or ((loaded.engine.meta.get("encoder") or {}).get("path") if loaded else None)
                self._encoder = load_encoder(path, self.settings.embed.max_length, precision=self.settings.embed.precision)
            return self._encoder

    # ------------------------------------------------------------------ helpers shared by endpoints
    @staticmethod
    def _user(engine, user_id):
        try:
            return engine.normalise_id(user_id)
        except (TypeError, ValueError):
            return None

    @staticmethod
    def _response(loaded: Loaded, recs, **extra) -> dict:
        return {
            "items": [r._asdict() for r in recs],
            "model_version": loaded.version,
            "model": loaded.engine.model.name,
            **extra,
        }

    def _recent_events(self, engine, user) -> list[tuple]:
        watermark = int(engine.meta.get("feedback_watermark", 0) or 0)
        if not self.recent.may_have_events(str(user), watermark):
            return []
        return self.store.user_events_since(str(user), watermark, limit=MAX_K * 5)

    async def _scored(self, engine, history, k: int, exclude_seen: bool = True, categories=None) -> list:
        """The model's top-k for a history the ranking cache cannot answer, micro-batched when on."""
        from components.engine import ScoreRequest

        request = ScoreRequest(history, k, exclude_seen, categories)
        if self.batcher is None:
            return engine.recommend_histories([request])[0][0]
        return (await self.batcher.recommend(engine, request))[0]

    async def _recommend(self, user_id, k, exclude_seen, categories, session_item_ids) -> dict | StarletteJSON:
        loaded = self.loaded
        engine = loaded.engine
        user = self._user(engine, user_id)
        if user is None:
            return error(400, f"user_id {user_id!r} is not a valid {engine.id_type} id for this catalogue", field="user_id")
        recent = self._recent_events(engine, user)
        history = engine.history_for(user, recent)
        source = "history"
        if history is None and session_item_ids:
            unknown = [i for i in session_item_ids if engine.item_index(i) is None]
            if unknown:
                return error(404, f"unknown item id(s) in session_item_ids: {unknown[:10]}", field="session_item_ids", unknown_ids=unknown[:10])
            history, source = engine.session_history(session_item_ids), "session (unknown user)"
        elif history is None or len(history) == 0:
            source = "popularity (unknown user)" if history is None else "popularity (no positive history)"
        if source == "history" and not recent and exclude_seen and not categories:
            recs = engine.recommend_user(user, history, k)  # nothing new since training: the cached ranking
        else:
            recs = await self._scored(engine, history, k, exclude_seen, categories)
        return self._response(loaded, recs, user_id=user, source=source, fallback=source != "history", recent_events_used=len(recent))

    def _timed(self, endpoint: str, fn, *args):
        started = time.perf_counter()
        if self.loaded is None and endpoint not in ("feedback", "feedback_batch", "ping"):
            return self._not_ready(endpoint)
        try:
            result = fn(*args)
        except Exception:
            return self._failed(endpoint)
        return self._count(endpoint, started, result)

    async def _timed_async(self, endpoint: str, fn, *args):
        """``_timed`` for work that is awaited (the micro-batched scoring)."""
        started = time.perf_counter()
        if self.loaded is None:
            return self._not_ready(endpoint)
        try:
            result = await fn(*args)
        except Exception:
            return self._failed(endpoint)
        return self._count(endpoint, started, result)

    @staticmethod
    def _not_ready(endpoint: str) -> StarletteJSON:
        REQUESTS.labels(endpoint=endpoint, outcome="503").inc()
        return error(503, "no model is loaded yet; see /readyz")

    @staticmethod
    def _failed(endpoint: str) -> StarletteJSON:
        REQUESTS.labels(endpoint=endpoint, outcome="error").inc()
        log.exception("%s failed", endpoint)
        return error(500, f"{endpoint} failed; see the service log")

    @staticmethod
    def _count(endpoint: str, started: float, result):
        LATENCY.labels(endpoint=endpoint).observe(time.perf_counter() - started)
        status = getattr(result, "status_code", 200)
        REQUESTS.labels(endpoint=endpoint, outcome="ok" if status < 400 else str(status)).inc()
        return result

    # ------------------------------------------------------------------ endpoints
    # The answers are a few small matrix products (well under a millisecond), so the endpoints are
    # async and run on the event loop: no thread-pool hop per request. Only search, which runs the
    # language model, stays in the thread pool.
    @bentoml.api
    async def recommend(
        self,
        user_id: Id,
        k: K = 10,
        exclude_seen: bool = True,
        categories: Categories | None = None,
        session_item_ids: Annotated[list[Id], Field(max_length=MAX_SESSION_ITEMS, description="Items an unknown user just viewed, oldest first")] | None = None,
    ) -> dict:
        """Top-k items for a user, with explanations; unknown users fall back to their session or popularity."""
        return await self._timed_async("recommend", self._recommend, user_id, k, exclude_seen, categories, session_item_ids)

    @bentoml.api
    async def history(self, user_id: Id, limit: Annotated[int, Field(ge=1, le=200)] = 20) -> dict:
        """The user's newest interactions, newest first: training history plus feedback since training."""

        def run():
            loaded = self.loaded
            engine = loaded.engine
            user = self._user(engine, user_id)
            if user is None:
                return error(400, f"user_id {user_id!r} is not a valid {engine.id_type} id for this catalogue", field="user_id")
            history = engine.history_for(user, self._recent_events(engine, user))
            items = []
            if history is not None:
                newest_first = list(zip(history.items, history.events, history.values, history.timestamps))[::-1]
                for index, event, value, stamp in newest_first[:limit]:
                    item_id = engine.catalogue.item_ids[index]
                    items.append(
                        {
                            "item_id": item_id.item() if hasattr(item_id, "item") else item_id,
                            "title": str(engine.catalogue.titles[index]),
                            "event": event,
                            "value": None if value is None or value != value else float(value),  # NaN: no value
                            "timestamp": int(stamp),
                        }
                    )
            return {"user_id": user, "items": items, "known_user": user in engine.histories, "model_version": loaded.version}

        return self._timed("history", run)

    @bentoml.api
    async def recommend_session(
        self,
        item_ids: Annotated[list[Id], Field(min_length=1, max_length=MAX_SESSION_ITEMS, description="Items just viewed, oldest first")],
        k: K = 10,
        categories: Categories | None = None,
    ) -> dict:
        """Top-k items for an anonymous visitor, from the items they just viewed."""

        async def run():
            loaded = self.loaded
            unknown = [i for i in item_ids if loaded.engine.item_index(i) is None]
            if unknown:
                return error(404, f"unknown item id(s): {unknown[:10]}", field="item_ids", unknown_ids=unknown[:10])
            history = loaded.engine.session_history(item_ids)
            recs = await self._scored(loaded.engine, history, k, True, categories)
            return self._response(loaded, recs, source="session")

        return await self._timed_async("recommend_session", run)

    @bentoml.api
    def search(
        self,
        query: Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS, description=f"Free text, at most {MAX_QUERY_CHARS} characters")],
        k: K = 10,
        categories: Categories | None = None,
    ) -> dict:
        """Free text in, items out, through the language model: the cold-start path."""

        def run():
            if not query.strip():
                return error(400, "query must contain non-whitespace text", field="query")
            loaded = self.loaded
            if loaded.engine.text_vectors is None:
                return error(409, f"model version {loaded.version} carries no text vectors, so free-text search is unavailable")
            vector = self.encoder().encode([query])[0]
            return self._response(loaded, loaded.engine.search_vector(vector, k, categories), query=query)

        return self._timed("search", run)

    @bentoml.api
    async def similar_items(self, item_id: Id, k: K = 10) -> dict:
        """Items whose text is closest to the given item's."""

        def run():
            loaded = self.loaded
            try:
                recs = loaded.engine.similar_items(item_id, k)
            except KeyError:
                return error(404, f"unknown item id {item_id!r}", field="item_id", unknown_ids=[item_id])
            except RuntimeError as exc:
                return error(409, f"model version {loaded.version}: {exc}")
            return self._response(loaded, recs, item_id=item_id)

        return self._timed("similar_items", run)

    @bentoml.api
    async def feedback(
        self,
        user_id: Id,
        item_id: Id,
        event: EventType,
        value: Annotated[float, Field(allow_inf_nan=False)] | None = None,
        timestamp: Annotated[float, Field(allow_inf_nan=False)] | None = None,
        event_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None,
    ) -> dict:
        """Record one event durably (written before this returns); idempotent by event_id."""
        event_in = FeedbackIn(user_id=user_id, item_id=item_id, event=event, value=value, timestamp=timestamp, event_id=event_id)
        return await self._write_feedback("feedback", [event_in])

    @bentoml.api
    async def feedback_batch(
        self, events: Annotated[list[FeedbackIn], Field(min_length=1, max_length=MAX_FEEDBACK_BATCH, description=f"1 to {MAX_FEEDBACK_BATCH} events")]
    ) -> dict:
        """Record many events in one durable transaction; all or nothing."""
        return await self._write_feedback("feedback_batch", events)

    @bentoml.api
    async def ping(self) -> dict:
        """A trivial endpoint: measures the framework's own per-request cost."""
        return {"ok": True}

    def _check_feedback(self, events: list[FeedbackIn]) -> list | StarletteJSON:
        """Validate events against the catalogue and the snapshot suites; returns store events or an error."""
        from components.feedback.store import FeedbackEvent

        checks = self.settings.validation
        now = time.time()
        loaded = self.loaded
        if loaded is not None:
            engine = loaded.engine
            unknown = [e.item_id for e in events if engine.item_index(e.item_id) is None]
            if unknown:
                return error(404, f"unknown item id(s): {unknown[:10]}; nothing was written", field="item_id", unknown_ids=unknown[:10])
            bad_users = [e.user_id for e in events if self._user(engine, e.user_id) is None]
            if bad_users:
                return error(400, f"user id(s) {bad_users[:10]} are not valid {engine.id_type} ids; nothing was written", field="user_id")
        for position, e in enumerate(events):
            where = f" (event {position})" if len(events) > 1 else ""
            if e.event == "rating" and e.value is None:
                return error(400, f"rating events need a value{where}; nothing was written", field="value")
            if e.event == "rating" and not checks.value_min <= e.value <= checks.value_max:
                return error(400, f"rating value {e.value} is outside [{checks.value_min}, {checks.value_max}]{where}; nothing was written", field="value")
            if e.timestamp is not None and not checks.earliest_timestamp <= e.timestamp <= now + FUTURE_SLACK_S:
                return error(400, f"timestamp {e.timestamp} is before {checks.earliest_timestamp} or more than a day ahead{where}; nothing was written", field="timestamp")
            if isinstance(e.user_id, str) and not e.user_id.strip() or isinstance(e.item_id, str) and not e.item_id.strip():
                return error(400, f"user_id and item_id must not be blank{where}; nothing was written", field="user_id" if not str(e.user_id).strip() else "item_id")
        # The id is fixed here, not in the store, so a retry of this request stays a duplicate.
        return [FeedbackEvent(str(e.user_id), str(e.item_id), e.event, e.value, e.timestamp, e.event_id or f"fb-{uuid.uuid4().hex}") for e in events]

    async def _write_feedback(self, endpoint: str, events: list[FeedbackIn]) -> dict | StarletteJSON:
        started = time.perf_counter()
        checked = self._check_feedback(events)
        if isinstance(checked, StarletteJSON):
            return self._count(endpoint, started, checked)
        try:
            written = await asyncio.wrap_future(self.writer.submit(checked))
        except Exception as exc:
            REQUESTS.labels(endpoint=endpoint, outcome="error").inc()
            return error(503, f"the feedback store could not write the event(s), nothing was acknowledged: {type(exc).__name__}; retry with the same event_id")
        self.recent.mark_written({e.user_id for e in checked})
        new = sum(1 for _, fresh in written if fresh)
        FEEDBACK_WRITTEN.inc(new)
        result = {"accepted": len(written), "new": new, "duplicates": len(written) - new, "event_ids": [eid for eid, _ in written]}
        return self._count(endpoint, started, result)

    # ------------------------------------------------------------------ admin and info (FastAPI routes)
    @web.post("/admin/reload")
    def admin_reload(self, request: Request):
        """Check the champion alias now and swap if it moved (bearer token from settings)."""
        import hmac

        token = self.settings.serving.admin_token
        if not token:
            return JSONResponse({"error": "reload is disabled: set LMRECSYS_SERVING__ADMIN_TOKEN"}, status_code=403)
        if not hmac.compare_digest(request.headers.get("authorization", "").encode(), f"Bearer {token}".encode()):
            return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
        return self.reload()

    @web.get("/info")
    def info(self):
        """The model being served and its lineage."""
        loaded = self.loaded
        if loaded is None:
            return JSONResponse({"ready": False, "error": "no model is loaded yet"}, status_code=503)
        return {"ready": True, "model_version": loaded.version, "loaded_at": loaded.loaded_at, "load_seconds": loaded.engine.load_seconds, **loaded.engine.version_info}


RecommenderService.add_asgi_middleware(BodyLimitMiddleware, max_bytes=MAX_BODY_BYTES)
RecommenderService.add_asgi_middleware(FastLane, service_class=RecommenderService)


@web.get("/ui", response_class=HTMLResponse)
def ui() -> str:
    from serving.page import PAGE

    return PAGE
