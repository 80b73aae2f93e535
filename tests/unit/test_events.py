"""components.data.events: one vocabulary, and every consumer agrees with it."""

import typing

from components.data.events import EVENT_TYPES, EVENT_WEIGHTS, NEGATIVE_EVENTS, POSITIVE_EVENTS, EventType


def test_vocabulary_is_partitioned():
    assert set(NEGATIVE_EVENTS) | set(POSITIVE_EVENTS) | {"rating"} == set(EVENT_TYPES)
    assert not set(NEGATIVE_EVENTS) & set(POSITIVE_EVENTS)
    assert set(EVENT_WEIGHTS) == set(EVENT_TYPES) - {"rating"}
    assert all(EVENT_WEIGHTS[event] < 0 for event in NEGATIVE_EVENTS)
    assert all(EVENT_WEIGHTS[event] > 0 for event in POSITIVE_EVENTS)


def test_store_and_service_accept_exactly_the_vocabulary():
    import pytest

    from components.feedback.store import FeedbackError, FeedbackEvent

    for event in EVENT_TYPES:
        FeedbackEvent(user_id="1", item_id="2", event=event, value=4.0 if event == "rating" else None).normalised()
    with pytest.raises(FeedbackError, match="unknown event type 'share'"):
        FeedbackEvent(user_id="1", item_id="2", event="share").normalised()
    assert typing.get_args(EventType) == EVENT_TYPES
