"""The answers of ``/recommend`` and ``/history`` for one served model (``serving.service`` calls these).

They take the model to answer with (``Loaded``), so an online experiment's arms (``serving.arms``) can
ask either the champion or the challenger.
"""

from __future__ import annotations

from starlette.responses import JSONResponse as StarletteJSON

from serving.schemas import error, history_items, recommendations


async def recommend(service, loaded, user_id, k, exclude_seen, categories, session_item_ids) -> dict | StarletteJSON:
    """Top-k for a user from ``loaded``: their history with recent feedback, else their session or popularity."""
    found = service.recent.for_request(loaded, user_id, service.recent_limit)
    if not isinstance(found, tuple):
        return found
    loaded, user, recent = found
    engine = loaded.engine
    history, source = (None, "") if service.forgotten.has(user) else (engine.history_for(user, recent), "history")
    if history is None and session_item_ids:
        unknown = [i for i in session_item_ids if engine.item_index(i) is None][:10]
        if unknown:
            message = f"unknown item id(s) in session_item_ids: {unknown}"
            return error(404, message, field="session_item_ids", unknown_ids=unknown)
        history, source = engine.session_history(session_item_ids), "session (unknown user)"
    elif history is None or len(history) == 0:
        source = "popularity (unknown user)" if history is None else "popularity (no positive history)"
    if source == "history" and not recent and exclude_seen and not categories:
        recs = engine.recommend_user(user, history, k)  # nothing new since training: the cached ranking
    else:
        recs = await service._scored(engine, history, k, exclude_seen, categories)
    extra = {"user_id": user, "source": source, "fallback": source != "history", "recent_events_used": len(recent)}
    return recommendations(loaded, recs, **extra)


def history(service, loaded, user_id, limit: int) -> dict | StarletteJSON:
    """The user's newest interactions in ``loaded``'s memory plus their feedback since its training."""
    found = service.recent.for_request(loaded, user_id, service.recent_limit)
    if not isinstance(found, tuple):
        return found
    loaded, user, recent = found
    engine = loaded.engine
    erased = service.forgotten.has(user)  # an erasure between two refreshes
    items = [] if erased else history_items(engine, engine.history_for(user, recent), limit)
    known = user in engine.histories and not erased
    return {"user_id": user, "items": items, "known_user": known, "model_version": loaded.version}
