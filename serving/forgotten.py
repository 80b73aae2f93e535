"""Erasure in the service: forgotten users stop being served within one refresh (about a second).

``ForgottenUsers`` reads the tombstones (keyed hashes, ``components.data.erasure``) from the feedback
store on the service's one-second store refresh, and on every champion load. When one is new, the
served engine drops the user's history and cached ranking from memory, so ``/recommend`` answers as
for a new user, ``/history`` is empty and no explanation cites their items; the store no longer holds
their events. Between refreshes, :meth:`ForgottenUsers.has` answers per request.

Admin routes (bearer admin token), on the service's FastAPI app:

- ``DELETE /admin/users/{user_id}?reason=...``: forget the user (``components.privacy.forget_user``)
  and apply it in this replica at once; other replicas follow within their refresh;
- ``GET /admin/users/{user_id}/audit``: where this replica's memory still holds the user.
"""

from __future__ import annotations

import logging
import threading

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

log = logging.getLogger("lmrecsys.serving")
router = APIRouter()


class ForgottenUsers:
    """The tombstones this replica honours."""

    def __init__(self, settings, store, recent) -> None:
        self.settings, self.store, self.recent = settings, store, recent
        self.keys: frozenset[str] = frozenset()
        self._secret: bytes | None = None
        self._engine = None  # the engine the tombstones were last applied to
        self._lock = threading.Lock()

    def _key(self) -> bytes:
        if self._secret is None:
            from components.data.erasure import erasure_key

            self._secret = erasure_key(self.settings)
        return self._secret

    def has(self, user_id) -> bool:
        if not self.keys:
            return False
        from components.data.erasure import user_key

        return user_key(self._key(), user_id) in self.keys

    def refresh(self, engine=None) -> list:
        """Re-read the tombstones; when they changed (or for a newly loaded ``engine``), drop the users
        from the engine's memory. Returns the users dropped. Raises if the store does not answer."""
        keys = frozenset(self.store.tombstoned_keys())
        with self._lock:
            changed = keys != self.keys or engine is not self._engine
            self.keys, self._engine = keys, engine
        if not keys or not changed:
            return []
        return self.apply(engine)

    def apply(self, engine) -> list:
        """Drop forgotten users from the engine's memory and the recent-feedback index."""
        gone = engine.forget_users(self.has) if engine is not None else []
        indexed = self.recent.forget(self.has)
        if gone or indexed:
            log.info(
                "erasure: %d user(s) dropped from the served model's memory, %d from the index", len(gone), indexed
            )
        return gone


def _service():
    from serving.middleware import SERVING

    return SERVING[-1] if SERVING else None


def _refused(service, request: Request):
    from serving.access import admin_refusal

    if service is None:
        return JSONResponse({"error": "the service is starting; see /readyz"}, status_code=503)
    return admin_refusal(service.settings.serving.admin_token, request.headers.get("authorization", ""))


@router.delete("/admin/users/{user_id}")
def forget(user_id: str, request: Request, reason: str = ""):
    """Forget a user now (idempotent); 400 names a bad id or a missing reason, 503 a store that is down."""
    from components.errors import LmRecsysError
    from components.feedback.store import FeedbackError
    from components.privacy import forget_user

    service = _service()
    refusal = _refused(service, request)
    if refusal is not None:
        return refusal
    try:
        result = forget_user(service.settings, user_id, reason)
    except FeedbackError as exc:
        return JSONResponse({"error": f"nothing was changed, retry: {exc}"}, status_code=503)
    except LmRecsysError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    except Exception as exc:  # e.g. a database role that may not delete: one transaction, so nothing changed
        log.error("forget failed: %s: %s", type(exc).__name__, str(exc)[:300])
        message = f"nothing was changed ({type(exc).__name__}); run `lmrecsys users forget` where the store allows it"
        return JSONResponse({"error": message}, status_code=503)
    loaded = service.loaded
    service.forgotten.refresh(loaded.engine if loaded is not None else None)
    return result


@router.get("/admin/users/{user_id}/audit")
def audit(user_id: str, request: Request):
    """Where this replica's memory still holds the user (``places`` empty when nowhere)."""
    service = _service()
    refusal = _refused(service, request)
    if refusal is not None:
        return refusal
    places = []
    loaded = service.loaded
    if loaded is not None:
        user = loaded.engine.normalise_id(user_id)
        held = loaded.engine.holds_user(user) if user is not None else {}
        places += [{"memory": name, "model_version": loaded.version} for name, found in held.items() if found]
        if user is not None and service.recent.holds(str(user)):
            places.append({"memory": "recent feedback index"})
    return {"user_id": user_id, "found": len(places), "places": places}
