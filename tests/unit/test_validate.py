"""components.validation.runner: the Great Expectations suites accept good snapshots and quarantine bad ones."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from components.data.snapshots import Snapshot, list_snapshots, write_snapshot
from components.errors import SnapshotRejected, ValidationFailed
from components.validation.runner import validate_snapshot

GOOD_ITEMS = pd.DataFrame(
    {
        "item_id": [1, 2, 3, 4],
        "title": ["Toy Story (1995)", "Heat (1995)", "Babylon 5", "Amélie (2001)"],
        "year": pd.array([1995, 1995, None, 2001], dtype="Int64"),
        "categories": ["Animation", "Crime", "", "Comedy"],
        "tags": ["pixar", "", "", "paris"],
        "description": ["", "", "", ""],
    }
)
# Ten ratings by three users, all on the 0.5-5 scale, all between 2000 and 2008.
_RATINGS = [
    (1, 1, 964982703, 4.0),
    (1, 2, 964982931, 3.5),
    (1, 4, 964983100, 5.0),
    (2, 1, 1100000000, 5.0),
    (2, 3, 1100000500, 2.5),
    (2, 4, 1100000900, 0.5),
    (3, 2, 1200000000, 4.5),
    (3, 4, 1200000100, 1.0),
    (3, 1, 1200000200, 3.0),
    (3, 3, 1200000300, 2.0),
]
GOOD_INTERACTIONS = pd.DataFrame(
    {
        "event_id": [f"ml-{u}-{i}-{t}" for u, i, t, _ in _RATINGS],
        "user_id": [u for u, _, _, _ in _RATINGS],
        "item_id": [i for _, i, _, _ in _RATINGS],
        "timestamp": [t for _, _, t, _ in _RATINGS],
        "event": "rating",
        "value": [v for _, _, _, v in _RATINGS],
        "source": "movielens",
    }
)
REMOTE_LINK = re.compile(r"""<(?:link|script)\b[^>]*(?:href|src)\s*=\s*["']?https?://""", re.IGNORECASE)


def make_snapshot(settings, items=GOOD_ITEMS, interactions=GOOD_INTERACTIONS) -> Snapshot:
    return write_snapshot(
        settings.snapshots_dir,
        items.copy(),
        interactions.copy(),
        id_type="int",
        feedback_watermark=0,
        parent=None,
        sources={},
    )


def test_good_snapshot_is_accepted(settings):
    snapshot = make_snapshot(settings)
    assert validate_snapshot(settings, snapshot) is snapshot
    result = json.loads((snapshot.path / "validation.json").read_text())
    assert result["success"] is True and result["failed"] == [] and result["checks"] == 19
    assert result["snapshot_id"] == snapshot.snapshot_id
    assert snapshot.accepted and snapshot.require_accepted() is snapshot
    report = (snapshot.path / "report.html").read_text()
    assert "accepted" in report and not REMOTE_LINK.search(report)
    assert json.loads((snapshot.path / "gx_result.json").read_text()).keys() == {"items", "interactions", "ratings"}
    assert not settings.quarantine_dir.exists()
    validated_at = result["validated_at"]
    validate_snapshot(settings, snapshot)  # already accepted: a no-op
    assert json.loads((snapshot.path / "validation.json").read_text())["validated_at"] == validated_at


def _nan_rating(items, inter):
    inter.loc[3, "value"] = np.nan
    return items, inter


def _rating_seven(items, inter):
    inter.loc[3, "value"] = 7.0
    return items, inter


def _timestamp_2090(items, inter):
    inter.loc[3, "timestamp"] = 3_786_912_000  # 2090-01-01
    return items, inter


def _duplicated_rows(items, inter):
    copies = inter.iloc[:3].copy()
    copies["event_id"] = ["dup-1", "dup-2", "dup-3"]  # distinct ids, same (user, item, timestamp)
    return items, pd.concat([inter, copies], ignore_index=True)


def _unknown_item(items, inter):
    inter.loc[3, "item_id"] = 999
    return items, inter


def _empty_title(items, inter):
    items.loc[1, "title"] = ""
    return items, inter


CORRUPTIONS = {
    "nan_rating": (_nan_rating, "[ratings] expect_column_values_to_not_be_null on column 'value': 1 of 10 rows fail"),
    "rating_7": (
        _rating_seven,
        "[ratings] expect_column_values_to_be_between on column 'value': 1 of 10 rows fail, e.g. [7.0]",
    ),
    "timestamp_2090": (
        _timestamp_2090,
        "[interactions] expect_column_values_to_be_between on column 'timestamp': 1 of 10 rows fail, e.g. [3786912000]",
    ),
    "duplicates_30pct": (
        _duplicated_rows,
        "[interactions] expect_compound_columns_to_be_unique on column 'user_id,item_id,timestamp,event'",
    ),
    "unknown_item": (
        _unknown_item,
        "[interactions] expect_column_values_to_be_in_set on column 'item_id (must exist in items)': "
        "1 of 10 rows fail, e.g. [999]",
    ),
    "empty_title": (
        _empty_title,
        "[items] expect_column_value_lengths_to_be_between on column 'title': 1 of 4 rows fail",
    ),
}


def assert_quarantined(settings, snapshot_id: str, expected: str, info) -> None:
    message = str(info.value)
    assert f"snapshot {snapshot_id} failed validation (1 of" in message
    assert expected in message
    assert not (settings.snapshots_dir / snapshot_id).exists()
    assert list_snapshots(settings.snapshots_dir) == []
    moved = settings.quarantine_dir / snapshot_id
    assert info.value.report_path == str(moved / "report.html")
    result = json.loads((moved / "validation.json").read_text())
    assert result["success"] is False and len(result["failed"]) == 1 and expected in result["failed"][0]
    assert set(json.loads((moved / "gx_result.json").read_text())) >= {"items", "interactions"}
    report = (moved / "report.html").read_text()
    assert "rejected: 1 failed check(s)" in report and "FAIL" in report
    assert not REMOTE_LINK.search(report) and "http://" not in report and "https://" not in report
    with pytest.raises(SnapshotRejected, match="was rejected by validation"):
        Snapshot(moved).require_accepted()


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruption_is_rejected_and_quarantined(settings, name):
    corrupt, expected = CORRUPTIONS[name]
    items, inter = corrupt(GOOD_ITEMS.copy(), GOOD_INTERACTIONS.copy())
    snapshot = make_snapshot(settings, items, inter)
    with pytest.raises(ValidationFailed) as info:
        validate_snapshot(settings, snapshot)
    assert_quarantined(settings, snapshot.snapshot_id, expected, info)


def test_duplicate_item_ids_are_rejected(settings):
    # write_snapshot de-duplicates item ids itself, so a duplicate can only reach validation through a
    # corrupted (tampered) snapshot folder: the items suite must still catch it.
    snapshot = make_snapshot(settings)
    items = pd.concat([GOOD_ITEMS, GOOD_ITEMS.iloc[[1]].assign(title="Heat, again")], ignore_index=True)
    items.to_parquet(snapshot.path / "items.parquet", index=False)
    with pytest.raises(ValidationFailed) as info:
        validate_snapshot(settings, snapshot)
    assert_quarantined(
        settings,
        snapshot.snapshot_id,
        "[items] expect_column_values_to_be_unique on column 'item_id': 2 of 5 rows fail, e.g. [2, 2]",
        info,
    )


def test_thresholds_come_from_settings(make_settings):
    lenient = make_settings(validation={"value_max": 10.0})
    items, inter = _rating_seven(GOOD_ITEMS.copy(), GOOD_INTERACTIONS.copy())
    assert validate_snapshot(lenient, make_snapshot(lenient, items, inter)).accepted


def test_duplicate_rate_below_the_limit_is_accepted(settings):
    # 50 users x 4 items = 200 distinct rows, plus one repeat: 2 of 201 rows share a key, under the 1% limit.
    rows = [(u, i, 1_000_000_000 + 10 * u + i) for u in range(50) for i in range(1, 5)]
    rows.append(rows[0])
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    inter = frame.assign(event_id=[f"e{k}" for k in range(len(frame))], event="rating", value=3.0, source="t")
    assert validate_snapshot(settings, make_snapshot(settings, GOOD_ITEMS, inter)).accepted
