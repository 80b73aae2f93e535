"""A patch of BentoML's private request-timeout middleware, applied only to the BentoML series it was written for.

BentoML 1.4's ``TimeoutMiddleware`` (in ``bentoml._internal.server.http.traffic``) schedules one
``loop.call_later(timeout, ...)`` per request and never cancels it, so every request leaves a timer, a
future and a context alive for the whole traffic timeout. Under load they pile up, and the garbage
collector walks all of them in every full collection, pausing the event loop for as long. The patch
keeps BentoML's behaviour (a 504 after ``timeout`` seconds) and cancels the timer once the response has
started.

The module is private, so the patch is guarded twice: by the BentoML version (``PATCHED_SERIES``) and
by the class's shape. On any other version, or a class that changed, it logs a warning and leaves
BentoML alone.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.responses import JSONResponse

log = logging.getLogger("lmrecsys.serving")

PATCHED_SERIES = "1.4."
"""The BentoML release series whose ``TimeoutMiddleware`` this patch was written against."""
MARKER = "_lmrecsys_cancels_timers"
"""Set on the class once patched, so a second call does nothing."""


def cancel_request_timers(middleware=None, version: str | None = None) -> bool:
    """Make ``middleware`` (default: BentoML's ``TimeoutMiddleware``) cancel its timer when the request ends.

    ``version`` defaults to the installed ``bentoml.__version__``. Returns whether the class now cancels
    its timers (True also when it was patched before).
    """
    if version is None:
        import bentoml

        version = bentoml.__version__
    if not version.startswith(PATCHED_SERIES):
        log.warning(
            "BentoML %s is not the %sx series the timer patch was written for; its request timers are not cancelled",
            version,
            PATCHED_SERIES,
        )
        return False
    if middleware is None:
        from bentoml._internal.server.http import traffic

        middleware = getattr(traffic, "TimeoutMiddleware", None)
    if middleware is None or not hasattr(middleware, "_set_timer_out"):
        log.warning("BentoML's TimeoutMiddleware changed shape; its per-request timers are not cancelled")
        return False
    if not getattr(middleware, MARKER, False):
        middleware.__call__ = _cancelling_call
        setattr(middleware, MARKER, True)
    return True


async def _cancelling_call(self, scope, receive, send) -> None:
    """BentoML 1.4's ``TimeoutMiddleware.__call__`` plus the ``timer.cancel()`` it lacks."""
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
    except TimeoutError:
        if future.cancel():
            body = {"error": f"Not able to process the request in {self.timeout} seconds"}
            await JSONResponse(body, status_code=504)(scope, receive, send)
        return
    finally:
        timer.cancel()  # the one line BentoML's version lacks
    await future
