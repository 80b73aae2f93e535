"""What the service's endpoints accept and answer: the limits, the annotated field types, the feedback
event, the shapes of the answers and the JSON error body.

BentoML builds each endpoint's input model from the endpoint's signature, so these annotated types are
also the OpenAPI schema and the source of the field-level details in a 400.
"""

from __future__ import annotations

import logging
from typing import Annotated

from pydantic import BaseModel, Field, Strict
from starlette.responses import JSONResponse

from components.data.events import EventType

MAX_QUERY_CHARS = 500
MAX_SESSION_ITEMS = 200
MAX_FEEDBACK_BATCH = 1000
MAX_ID_CHARS = 128
MAX_BODY_BYTES = 1 << 20
"""Request bodies over 1 MiB get 413 before anything parses them."""
NOT_READY = "no model is loaded yet; see /readyz"
log = logging.getLogger("lmrecsys.serving")

# Numbers and flags are strict: JSON true is not the id 1 or k=1, and "5" is not k=5 (a string id stays a
# string id). A float field still takes a JSON integer.
Int = Annotated[int, Strict()]
Flag = Annotated[bool, Strict(), Field(description="JSON true or false")]
Id = Annotated[
    Int | Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)],
    Field(description="A user or item id: an integer for MovieLens, any non-empty string for generic catalogues"),
]
Categories = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=64)]],
    Field(max_length=20, description="Keep only items in at least one of these categories (genres), case-insensitive"),
]
SessionItems = Annotated[
    list[Id], Field(max_length=MAX_SESSION_ITEMS, description="Items an unknown user just viewed, oldest first")
]
ViewedItems = Annotated[
    list[Id], Field(min_length=1, max_length=MAX_SESSION_ITEMS, description="Items just viewed, oldest first")
]
Query = Annotated[
    str,
    Field(min_length=1, max_length=MAX_QUERY_CHARS, description=f"Free text, at most {MAX_QUERY_CHARS} characters"),
]
HistoryLimit = Annotated[int, Strict(), Field(ge=1, le=200)]
Finite = Annotated[float, Strict(), Field(allow_inf_nan=False)]
EventId = Annotated[str, Field(min_length=1, max_length=128)]
RecommendationId = Annotated[
    str, Field(min_length=1, max_length=64, description="The recommendation_id of the answer the event responds to")
]
Position = Annotated[int, Strict(), Field(ge=0, le=10_000, description="The item's position (from 0) in that answer")]


def top_k(max_k: int):
    """The type of ``k``: how many items to return, 1 to ``max_k`` (the setting ``serving.max_k``)."""
    return Annotated[int, Strict(), Field(ge=1, le=max_k, description=f"How many items to return (1 to {max_k})")]


class FeedbackIn(BaseModel):
    """One user action on one item."""

    user_id: Id
    item_id: Id
    event: EventType
    value: Finite | None = Field(
        default=None, description="Rating value (required for ratings), or a strength for other events"
    )
    timestamp: Finite | None = Field(default=None, description="Epoch seconds; defaults to the time received")
    event_id: EventId | None = Field(default=None, description="Idempotency key: re-sending the same id is a no-op")
    recommendation_id: RecommendationId | None = None
    position: Position | None = None


FeedbackEvents = Annotated[
    list[FeedbackIn],
    Field(min_length=1, max_length=MAX_FEEDBACK_BATCH, description=f"1 to {MAX_FEEDBACK_BATCH} events"),
]


def invalid_user(engine, user_id) -> JSONResponse:
    """The 400 for a user id that is not of the catalogue's id type."""
    return error(400, f"user_id {user_id!r} is not a valid {engine.id_type} id for this catalogue", field="user_id")


def error(status: int, message: str, **extra) -> JSONResponse:
    """A JSON error a client can act on: what is wrong, and which field."""
    return JSONResponse({"error": message, **extra}, status_code=status)


def guarded(loaded, endpoint: str, fn, *args):
    """``fn(*args)``, or a 503 while no model is ``loaded``, or a 500 (traceback in the log) if it raises."""
    if loaded is None:
        return error(503, NOT_READY)
    try:
        return fn(*args)
    except Exception:
        log.exception("%s failed", endpoint)
        return error(500, f"{endpoint} failed; see the service log")


async def guarded_async(loaded, endpoint: str, fn, *args):
    """``guarded`` for work that is awaited (the micro-batched scoring)."""
    if loaded is None:
        return error(503, NOT_READY)
    try:
        return await fn(*args)
    except Exception:
        log.exception("%s failed", endpoint)
        return error(500, f"{endpoint} failed; see the service log")


def recommendations(loaded, recs, **extra) -> dict:
    """The answer of the recommending endpoints: ``recs`` (``Recommendation`` tuples) from the ``loaded`` model."""
    items = [r._asdict() for r in recs]
    return {"items": items, "model_version": loaded.version, "model": loaded.engine.model.name, **extra}


def history_items(engine, history, limit: int) -> list[dict]:
    """The newest ``limit`` events of ``history`` (None: no history), newest first, as ``/history`` lists them."""
    if history is None:
        return []
    items = []
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
    return items
