"""The event vocabulary: every kind of feedback the loop knows, and what each one means.

The feedback store accepts exactly ``EVENT_TYPES``; the service's request schema, the user
profile weights and the engine's explanations all read their sets from here.
"""

from __future__ import annotations

from typing import Literal, get_args

EventType = Literal["rating", "like", "dislike", "click", "view", "purchase", "interaction"]
"""The type of an event's ``event`` field."""

EVENT_TYPES: tuple[str, ...] = get_args(EventType)
"""Every known event type, in a fixed order."""

NEGATIVE_EVENTS: tuple[str, ...] = ("dislike",)
"""Events that say a user does not want an item: kept in snapshots, left out of histories."""

POSITIVE_EVENTS: tuple[str, ...] = ("like", "purchase", "click", "view", "interaction")
"""Events that count as liking an item whatever their value (a rating counts by its value)."""

EVENT_WEIGHTS: dict[str, float] = {
    "like": 1.0,
    "purchase": 1.0,
    "click": 0.5,
    "view": 0.3,
    "interaction": 0.5,
    "dislike": -1.0,
}
"""How much one event moves a user's text profile (a rating's weight comes from its value)."""

POSITIVE_RATING = 3.5
"""A rating at or above this counts as liking the item."""
