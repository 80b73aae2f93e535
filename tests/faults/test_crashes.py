"""Serving killed with ``kill -9`` mid-write, and the feedback store's PostgreSQL restarted under load.

Either way no acknowledged event is lost: every event that got a 2xx is in the store afterwards.
"""

from __future__ import annotations

import time

import pytest

from tests.faults.conftest import serve
from tests.faults.traffic import FeedbackPump, stored_event_ids
from tests.harness import wait_for

pytestmark = [pytest.mark.integration]


def test_kill_9_mid_write_loses_no_acknowledged_event(small_champion, tmp_path):
    data_root, _ = small_champion
    url = f"sqlite:///{tmp_path / 'feedback.db'}"
    server = serve(data_root, tmp_path / "bento", url)
    pump = FeedbackPump(server.base, "kill9", threads=4)
    try:
        pump.start().wait_acknowledged(300, timeout=60)
        server.kill9()  # the whole tree at once, with writes in flight: no shutdown hook runs
        pump.stop()
    finally:
        pump.stop()
        if server.alive():
            server.stop()
    acknowledged = pump.acknowledged()
    restarted = serve(data_root, tmp_path / "bento-again", url)  # the store opens again after the crash
    try:
        assert restarted.post("/feedback", {"user_id": 1, "item_id": 1, "event": "view"}).status_code == 200
    finally:
        restarted.stop()
    missing = set(acknowledged) - stored_event_ids(url, acknowledged)
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged events lost: {sorted(missing)[:10]}"


def test_postgres_restart_under_load_loses_nothing(small_champion, private_postgres, tmp_path):
    data_root, _ = small_champion
    server = serve(data_root, tmp_path / "bento", private_postgres.url)
    pump = FeedbackPump(server.base, "pg", threads=4)
    try:
        pump.start().wait_acknowledged(200, timeout=60)
        began, back = private_postgres.restart()
        wait_for(lambda: pump.first_ok_after(back), 15, interval=0.05, what="a 2xx after the restart", procs=[server])
        time.sleep(0.5)
        pump.stop()
    finally:
        pump.stop()
        server.stop()
    acknowledged = pump.acknowledged()
    missing = set(acknowledged) - stored_event_ids(private_postgres.url, acknowledged)
    assert not missing, f"{len(missing)} acknowledged events lost: {sorted(missing)[:10]}"
    assert pump.first_ok_after(back) - began <= 10, pump.statuses()  # 2xx again within 10 s of the restart
    assert {status for status in pump.statuses() if status >= 500} <= {503}, pump.statuses()
