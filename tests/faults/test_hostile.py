"""Hostile clients against a real ``bentoml serve``: schemathesis over the whole OpenAPI schema, then a
battery of bad requests of every kind in ``hostile.py``; never a 5xx, and the next pipeline run still
registers a version from the feedback they left behind."""

from __future__ import annotations

import pytest

from tests.faults.catalogue import build_small_champion, run_small_pipeline
from tests.faults.conftest import serve
from tests.faults.hostile import KINDS, run_battery, run_schemathesis
from tests.harness import restored_mlflow_state

pytestmark = [pytest.mark.integration]
BATTERY = 1_000
EXAMPLES = 10
"""Per operation; the benchmark runs more (docs/benchmarks/faults.md)."""


@pytest.fixture(scope="module")
def hostile_target(tmp_path_factory):
    """(data root, source, server): a champion of this module's own, served with its default feedback store."""
    with restored_mlflow_state():
        root = tmp_path_factory.mktemp("hostile") / "data"
        source, _ = build_small_champion(root)
    server = serve(root, root.parent / "bento", f"sqlite:///{root / 'feedback.db'}")
    try:
        yield root, source, server
    finally:
        server.stop()


def test_schemathesis_finds_no_server_error(hostile_target):
    _, _, server = hostile_target
    checked, failures = run_schemathesis(server.base, EXAMPLES)
    assert checked >= 5 * EXAMPLES, checked
    assert not failures, "\n".join(failures[:20])
    assert server.alive()


def test_hostile_battery_gets_no_server_error_and_the_next_run_registers(hostile_target):
    root, source, server = hostile_target
    result = run_battery(server.base, BATTERY)
    assert result.total == BATTERY
    assert len(result.by_kind) == len(KINDS), sorted(result.by_kind)
    assert not result.server_errors, "\n".join(result.server_errors[:20])
    assert result.count(400, 500) > BATTERY / 2, dict(result.by_kind)
    assert server.alive()
    decision = run_small_pipeline(root, source, "after-hostile")
    assert decision["version"] == "2", decision
