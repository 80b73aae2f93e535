"""The service's two ASGI middlewares: the request body cap and the fast lane for the hot JSON endpoints.

``serving.service`` adds both to ``RecommenderService``; BentoML's own middlewares (metrics, tracing, the
request timeout) sit outside them, so they still see every request.
"""

from __future__ import annotations

import inspect
import json
import logging

from pydantic_core import to_json
from starlette.responses import Response

from serving.schemas import MAX_BODY_BYTES

log = logging.getLogger("lmrecsys.serving")

FAST_LANE_ENDPOINTS = ("recommend", "recommend_session", "similar_items", "history", "feedback", "feedback_batch")
"""The hot endpoints the fast lane answers (all async, all answered from memory or by a group commit)."""
SERVING: list = []
"""The service instances of this worker process (``RecommenderService.__init__`` appends itself, its
shutdown removes it); the fast lane answers with the newest."""


UNEXPECTED = b'{"error": "An unexpected error has occurred, please check the server log."}'
"""The fast lane's 500 body: BentoML's own for an endpoint that raised."""


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
                message = f"request body of {size} bytes is over the {self.max_bytes}-byte limit"
                return await self._reject(send, 413, message)
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
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


class FastLane:
    """Answers the hot JSON endpoints without BentoML's per-request IO layer.

    BentoML's API layer does more work per request than the recommendation itself (it builds an IO
    context, runs the serde and wraps the answer for every call). For a JSON ``POST`` to one of
    ``FAST_LANE_ENDPOINTS``, this middleware does what that layer does, with the same parts: it
    validates the body with the endpoint's own BentoML input model (so the OpenAPI schema, the limits
    and the 400 body with field-level details are the same), calls the same endpoint method, and
    writes its JSON answer. Other content types, paths and methods pass through to BentoML
    unchanged, and BentoML's metrics and tracing middleware, which sit outside this one, still see
    every request. Its answers carry ``x-lmrecsys-lane: fast``; the setting ``serving.fast_lane``
    (``LMRECSYS_SERVING__FAST_LANE=false``) turns it off.
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
        is_post = scope["type"] == "http" and scope["method"] == "POST"
        route = self.routes.get(scope.get("path")) if is_post else None
        if route is None or not SERVING or not SERVING[-1].fast_lane or not self._is_json(scope["headers"]):
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
            body = {
                "error": f"{exc.error_count()} validation error for {exc.title}",
                "detail": exc.errors(include_context=False, include_input=False),
            }
            return await self._send(send, 400, json.dumps(body).encode())
        try:
            result = await func(SERVING[-1], **{name: getattr(data, name) for name in type(data).model_fields})
        except Exception:
            log.exception("%s failed", scope["path"])
            return await self._send(send, 500, UNEXPECTED)
        if isinstance(result, Response):  # an error answer the endpoint built itself
            result.headers["x-lmrecsys-lane"] = "fast"
            return await result(scope, receive, send)
        return await self._send(send, 200, to_json(result))  # compact, as json.dumps with no spaces

    @staticmethod
    def _is_json(headers) -> bool:
        content_type = next((value for name, value in headers if name == b"content-type"), b"application/json")
        return content_type.split(b";")[0].strip().lower() == b"application/json"

    @staticmethod
    async def _send(send, status: int, payload: bytes) -> None:
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"x-lmrecsys-lane", b"fast"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
