"""The patch of BentoML's private request-timeout middleware (serving/bentoml_patch.py): applied on the
1.4 series it was written for, and on any other version a warning and BentoML left alone."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from serving.bentoml_patch import MARKER, PATCHED_SERIES, cancel_request_timers


class FakeTimeoutMiddleware:
    """The shape of BentoML 1.4's ``TimeoutMiddleware``: an app, a timeout and ``_set_timer_out``."""

    def __init__(self, app, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope, receive, send) -> None:  # BentoML's version: the timer is never cancelled
        await self.app(scope, receive, send)

    @staticmethod
    def _set_timer_out(waiter) -> None:
        if not waiter.done():
            waiter.set_exception(TimeoutError())


def fresh_class() -> type:
    return type("TimeoutMiddleware", (FakeTimeoutMiddleware,), {})


@pytest.mark.parametrize("version", ["1.5.0", "2.0.1", "1.3.9", "0.13.1"])
def test_other_bentoml_versions_are_left_alone_with_a_warning(version, caplog):
    middleware = fresh_class()
    original = middleware.__call__
    with caplog.at_level(logging.WARNING, logger="lmrecsys.serving"):
        assert cancel_request_timers(middleware, version=version) is False
    assert middleware.__call__ is original and not getattr(middleware, MARKER, False)
    assert any(version in record.getMessage() and "not cancelled" in record.getMessage() for record in caplog.records)


def test_the_14_series_is_patched_once(caplog):
    middleware = fresh_class()
    with caplog.at_level(logging.WARNING, logger="lmrecsys.serving"):
        assert cancel_request_timers(middleware, version=f"{PATCHED_SERIES}40") is True
        patched = middleware.__call__
        assert cancel_request_timers(middleware, version=f"{PATCHED_SERIES}41") is True
    assert getattr(middleware, MARKER) is True and middleware.__call__ is patched
    assert patched is not FakeTimeoutMiddleware.__call__
    assert not caplog.records


def test_a_class_of_another_shape_is_left_alone(caplog):
    middleware = type("TimeoutMiddleware", (), {"__call__": lambda self, *args: None})
    original = middleware.__call__
    with caplog.at_level(logging.WARNING, logger="lmrecsys.serving"):
        assert cancel_request_timers(middleware, version=f"{PATCHED_SERIES}40") is False
    assert middleware.__call__ is original
    assert any("changed shape" in record.getMessage() for record in caplog.records)


def test_the_installed_bentoml_is_patched():
    import bentoml
    from bentoml._internal.server.http import traffic

    assert bentoml.__version__.startswith(PATCHED_SERIES), (
        "BentoML moved on: check the patch against its new middleware"
    )
    assert cancel_request_timers() is True
    assert getattr(traffic.TimeoutMiddleware, MARKER) is True


def test_the_patched_middleware_cancels_its_timer_and_still_times_out():
    middleware = fresh_class()
    cancel_request_timers(middleware, version=f"{PATCHED_SERIES}40")
    sent = []

    async def send(message) -> None:
        sent.append(message)

    async def quick(scope, receive, send_) -> None:
        await send_({"type": "http.response.start", "status": 200, "headers": []})
        await send_({"type": "http.response.body", "body": b"ok"})

    async def slow(scope, receive, send_) -> None:
        await asyncio.sleep(10)

    async def scenario() -> list:
        for _ in range(50):
            await middleware(quick, timeout=60)({"type": "http"}, None, send)
        gc.collect()
        live = [o for o in gc.get_objects() if isinstance(o, asyncio.TimerHandle) and not o.cancelled()]
        await middleware(slow, timeout=0.05)({"type": "http"}, None, send)
        return live

    live = asyncio.run(scenario())
    assert len(live) == 0, f"{len(live)} timers still scheduled after 50 finished requests"
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [200] * 50 + [504]
