"""components.data.handles: ids that become paths cannot point outside the data root."""

from __future__ import annotations

import os

import pytest

from components.data import handles
from components.data.snapshots import open_snapshot
from components.errors import InvalidHandle, LmRecsysError

BAD_IDS = ["..", "../snap-x", "snap-../x", "snap-a/b", "/etc/passwd", "snap-", "snap-a\u0000", "", None, 7]


@pytest.mark.parametrize("value", BAD_IDS)
def test_malformed_snapshot_ids_are_refused(value):
    with pytest.raises(InvalidHandle, match="is not a snapshot id"):
        handles.snapshot_id(value)


@pytest.mark.parametrize("value", ["..", ".hidden", "a/b", "../runs", "/tmp/x", "a..b", "", "x" * 201, None])
def test_malformed_run_keys_are_refused(value):
    with pytest.raises(InvalidHandle, match="is not a run key"):
        handles.run_key(value)


def test_real_handles_pass():
    assert handles.snapshot_id("snap-0123456789abcdef") == "snap-0123456789abcdef"
    for key in ("reference", "run-20261202T185000-123", "manual__2026-12-02T18_50_00.123456_00_00"):
        assert handles.run_key(key) == key


def test_paths_must_stay_inside_their_folder(tmp_path):
    runs = tmp_path / "runs"
    (runs / "r1").mkdir(parents=True)
    assert handles.inside(runs, runs / "r1" / "report.json") == (runs / "r1" / "report.json").resolve()
    for escape in (runs / ".." / "elsewhere", tmp_path, "/etc", runs / "r1" / ".." / ".."):
        with pytest.raises(InvalidHandle, match="is outside"):
            handles.inside(runs, escape)
    os.symlink(tmp_path, runs / "link")
    with pytest.raises(InvalidHandle, match="is outside"):
        handles.inside(runs, runs / "link" / "x")


def test_stages_refuse_escaping_handles(settings):
    from components.pipeline import stage_evaluate, stage_register
    from components.training import stage_plan_training

    victim = settings.root.parent / "victim"
    victim.mkdir(parents=True, exist_ok=True)
    with pytest.raises(InvalidHandle):
        open_snapshot(settings.snapshots_dir, "../quarantine/snap-x")
    with pytest.raises(LmRecsysError):  # InvalidHandle is an LmRecsysError: the CLI reports it as one
        stage_plan_training(settings, "snap-missing", str(settings.embeddings_dir / "x"), "../victim")
    with pytest.raises(InvalidHandle, match="is outside"):
        stage_evaluate(settings, str(victim))
    with pytest.raises(InvalidHandle, match="is outside"):
        stage_register(settings, str(victim / "report.json"))
    assert victim.is_dir() and not any(victim.iterdir())
