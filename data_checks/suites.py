"""The expectation suites for items, interactions and ratings.

Each function builds a fresh ``ExpectationSuite`` from the validation settings, so thresholds
live in one place (``LMRECSYS_VALIDATION__*``) and the suites stay reviewable as plain code.
"""

from __future__ import annotations

import time

import great_expectations as gx
import great_expectations.expectations as gxe

from components.data.columns import EVENT_COL, EVENT_ID_COL, ITEM_COL, TIMESTAMP_COL, TITLE_COL, USER_COL, VALUE_COL
from components.settings import ValidationSettings

KNOWN_ITEM_FLAG = "item_is_known"
"""Computed before validation: does the interaction's item exist in the snapshot's catalogue?"""
FUTURE_SLACK_S = 86_400
"""Timestamps may run this far ahead of the validating clock (clock skew between machines)."""


def items_suite(cfg: ValidationSettings) -> gx.ExpectationSuite:
    return gx.ExpectationSuite(
        name="items",
        expectations=[
            gxe.ExpectColumnToExist(column=ITEM_COL),
            gxe.ExpectColumnToExist(column=TITLE_COL),
            gxe.ExpectColumnValuesToNotBeNull(column=ITEM_COL),
            gxe.ExpectColumnValuesToBeUnique(column=ITEM_COL),
            gxe.ExpectColumnValuesToNotBeNull(column=TITLE_COL),
            gxe.ExpectColumnValueLengthsToBeBetween(column=TITLE_COL, max_value=cfg.max_title_length),
            gxe.ExpectColumnValueLengthsToBeBetween(column=TITLE_COL, min_value=1, mostly=1.0 - cfg.max_untitled_share),
            gxe.ExpectTableRowCountToBeBetween(min_value=1),
        ],
    )


def interactions_suite(cfg: ValidationSettings) -> gx.ExpectationSuite:
    return gx.ExpectationSuite(
        name="interactions",
        expectations=[
            gxe.ExpectTableColumnsToMatchSet(
                column_set=[
                    EVENT_ID_COL,
                    USER_COL,
                    ITEM_COL,
                    TIMESTAMP_COL,
                    EVENT_COL,
                    VALUE_COL,
                    "source",
                    KNOWN_ITEM_FLAG,
                ],
                exact_match=True,
            ),
            gxe.ExpectColumnValuesToNotBeNull(column=USER_COL),
            gxe.ExpectColumnValuesToNotBeNull(column=ITEM_COL),
            gxe.ExpectColumnValuesToNotBeNull(column=TIMESTAMP_COL),
            gxe.ExpectColumnValuesToBeUnique(column=EVENT_ID_COL),
            gxe.ExpectColumnValuesToBeInSet(column=KNOWN_ITEM_FLAG, value_set=[True]),
            gxe.ExpectColumnValuesToBeBetween(
                column=TIMESTAMP_COL, min_value=cfg.earliest_timestamp, max_value=int(time.time()) + FUTURE_SLACK_S
            ),
            gxe.ExpectCompoundColumnsToBeUnique(
                column_list=[USER_COL, ITEM_COL, TIMESTAMP_COL, EVENT_COL], mostly=1.0 - cfg.max_duplicate_rate
            ),
            gxe.ExpectTableRowCountToBeBetween(min_value=cfg.min_interactions, max_value=cfg.max_interactions),
        ],
    )


def ratings_suite(cfg: ValidationSettings) -> gx.ExpectationSuite:
    """Rows whose event is ``rating``: the value must be present and on the configured scale."""
    return gx.ExpectationSuite(
        name="ratings",
        expectations=[
            gxe.ExpectColumnValuesToNotBeNull(column=VALUE_COL),
            gxe.ExpectColumnValuesToBeBetween(column=VALUE_COL, min_value=cfg.value_min, max_value=cfg.value_max),
        ],
    )


DRIFT_COLUMNS = ("volume_ratio", "unknown_item_share", "new_user_ratio", "event_divergence")
"""One-row frame computed by components.validation.runner.drift_metrics against the reference snapshot."""


def drift_suite(cfg: ValidationSettings) -> gx.ExpectationSuite:
    return gx.ExpectationSuite(
        name="drift",
        expectations=[
            gxe.ExpectColumnValuesToBeBetween(
                column="volume_ratio", min_value=cfg.drift_min_volume_ratio, max_value=cfg.drift_max_volume_ratio
            ),
            gxe.ExpectColumnValuesToBeBetween(
                column="unknown_item_share", min_value=0.0, max_value=cfg.drift_max_unknown_item_share
            ),
            gxe.ExpectColumnValuesToBeBetween(
                column="new_user_ratio", min_value=0.0, max_value=cfg.drift_max_new_user_ratio
            ),
            gxe.ExpectColumnValuesToBeBetween(
                column="event_divergence", min_value=0.0, max_value=cfg.drift_max_divergence
            ),
        ],
    )
