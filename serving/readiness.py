"""Whether the feedback store answers: the store opened on first use, and the health /readyz reports.

``LazyStore`` opens the ``FeedbackStore`` on first use and again after a failed open, so the service
starts (and says why it is not ready) while the store is down. ``StoreHealth`` keeps the latest outcome of
the two things that talk to the store: the recent-feedback refresh, which asks it every second, and the
feedback writer's commits. The store counts as down when the newest of those outcomes is a failure, or
when none has succeeded for ``stale_s`` seconds (a probe that hangs). A change either way is logged once.
"""

from __future__ import annotations

import logging
import threading
import time
from urllib.parse import unquote, urlsplit

from components.settings import redact_url

log = logging.getLogger("lmrecsys.serving")


def url_passwords(url: str) -> list[str]:
    """The password of a ``scheme://user:password@host`` URL, as written and percent-decoded (empty: none)."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return []
    return [password, unquote(password)] if password else []


def scrubbed(text: str, secrets) -> str:
    """``text`` with every secret in ``secrets`` replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class LazyStore:
    """A ``FeedbackStore`` for ``url``, opened on first use; a failed open is retried on the next use."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._store = None
        self._lock = threading.Lock()

    def _opened(self):
        store = self._store
        if store is None:
            from components.feedback.store import FeedbackStore

            with self._lock:
                if self._store is None:
                    self._store = FeedbackStore(self.url)
                store = self._store
        return store

    def __getattr__(self, name: str):
        return getattr(self._opened(), name)


class StoreHealth:
    """The feedback store's latest outcome, as ``problem()`` tells /readyz; thread-safe."""

    def __init__(self, url: str, stale_s: float) -> None:
        self.where = redact_url(url)
        self.stale_s = stale_s
        self._secrets = url_passwords(url)
        self._lock = threading.Lock()
        self._ok_at: float | None = None
        self._failed_at: float | None = None
        self._reason = ""
        self._started = time.monotonic()

    def ok(self) -> None:
        with self._lock:
            was_down = self._failed_at is not None and (self._ok_at is None or self._failed_at >= self._ok_at)
            self._ok_at = time.monotonic()
        if was_down:
            log.info("the feedback store at %s answers again", self.where)

    def failed(self, exc: BaseException) -> None:
        reason = scrubbed(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", self._secrets)
        with self._lock:
            was_up = self._failed_at is None or (self._ok_at is not None and self._ok_at > self._failed_at)
            self._failed_at, self._reason = time.monotonic(), reason[:300]
        if was_up:
            log.error("the feedback store at %s does not answer: %s", self.where, reason[:300])

    def problem(self) -> str | None:
        """Why the store counts as down, or None when it answered lately."""
        with self._lock:
            ok_at, failed_at, reason = self._ok_at, self._failed_at, self._reason
        if failed_at is not None and (ok_at is None or failed_at >= ok_at):
            return f"the feedback store at {self.where} does not answer: {reason}"
        since = time.monotonic() - (ok_at if ok_at is not None else self._started)
        if since > self.stale_s:
            return f"the feedback store at {self.where} has not answered for {since:.0f} s"
        return None


def not_ready_reasons(loaded, writer, health: StoreHealth) -> list[str]:
    """Why the service is not ready: no model loaded, a stopped feedback writer, a store that does not answer."""
    reasons = []
    if loaded is None:
        reasons.append("no model is loaded yet")
    if not writer.alive:
        reasons.append("the feedback writer has stopped")
    problem = health.problem()
    if problem is not None:
        reasons.append(problem)
    return reasons


def safely(action) -> None:
    """Run ``action`` once; a failure is logged, not raised (the background thread tries again later)."""
    try:
        action()
    except Exception:
        log.exception("%s failed; it is tried again later", getattr(action, "__qualname__", action))
