"""The lmrecsys command line: readable help, JSON output, meaningful exit codes."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from components.cli import app
from components.feedback.store import FeedbackStore
from tests.unit._data_fixtures import TINY_RATINGS_CSV, write_movielens

runner = CliRunner()


@pytest.fixture
def cli_env(monkeypatch, tmp_path, tiny_movielens):
    monkeypatch.setenv("LMRECSYS_DATA_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("LMRECSYS_INGEST__SOURCE", str(tiny_movielens))
    monkeypatch.setenv("LMRECSYS_TRAIN__BOOTSTRAP_SAMPLES", "50")
    return tmp_path / "root"


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("pipeline", "snapshots", "models", "serve", "feedback", "status"):
        assert command in result.output
    assert runner.invoke(app, ["models", "--help"]).exit_code == 0


def test_pipeline_run_then_inspect(cli_env):
    run = runner.invoke(app, ["pipeline", "run", "--json"])
    assert run.exit_code == 0, run.output
    decision = json.loads(run.stdout)
    assert decision["decision"] == "promoted" and decision["version"] == "1"

    listed = json.loads(runner.invoke(app, ["snapshots", "list", "--json"]).stdout)
    assert [row["state"] for row in listed] == ["accepted"]
    assert listed[0]["snapshot_id"] == decision["snapshot_id"] and listed[0]["interactions"] == 7

    shown = json.loads(runner.invoke(app, ["snapshots", "show", decision["snapshot_id"], "--json"]).stdout)
    assert shown["manifest"]["row_counts"]["users"] == 3 and shown["validation"]["success"] is True

    status = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    assert status["champion"]["version"] == "1"
    assert status["feedback_backlog"]["untrained_events"] == 0

    text = runner.invoke(app, ["status"])
    assert text.exit_code == 0 and "champion: version 1" in text.output


def test_unknown_snapshot_is_exit_1(cli_env):
    result = runner.invoke(app, ["snapshots", "show", "snap-nope"])
    assert result.exit_code == 1
    assert "no snapshot 'snap-nope'" in result.output


def test_validation_failure_is_exit_3(cli_env, tmp_path, monkeypatch):
    bad = write_movielens(tmp_path / "bad", ratings=TINY_RATINGS_CSV.replace("1,4,5.0,", "1,4,7.0,"))
    monkeypatch.setenv("LMRECSYS_INGEST__SOURCE", str(bad))
    result = runner.invoke(app, ["pipeline", "run"])
    assert result.exit_code == 3
    assert "failed validation" in result.output
    quarantined = json.loads(runner.invoke(app, ["snapshots", "list", "--quarantined", "--json"]).stdout)
    assert [row["state"] for row in quarantined] == ["rejected"]


def test_feedback_replay_is_idempotent(cli_env, tmp_path):
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,event,value,event_id\n1,2,like,,e1\n2,4,rating,4.5,e2\n")
    first = runner.invoke(app, ["feedback", "replay", str(events), "--json"])
    assert first.exit_code == 0, first.output
    assert json.loads(first.output) == {"events": 2, "new": 2, "duplicates": 0}
    again = json.loads(runner.invoke(app, ["feedback", "replay", str(events), "--json"]).stdout)
    assert again == {"events": 2, "new": 0, "duplicates": 2}
    assert FeedbackStore(f"sqlite:///{cli_env / 'feedback.db'}").count() == 2


def test_feedback_replay_rejects_a_bad_file(cli_env, tmp_path):
    events = tmp_path / "events.csv"
    events.write_text("user,item\n1,2\n")
    result = runner.invoke(app, ["feedback", "replay", str(events)])
    assert result.exit_code == 1
    assert "lacks column(s) ['event', 'item_id', 'user_id']" in result.output


def test_promote_by_hand_needs_force(cli_env):
    result = runner.invoke(app, ["models", "promote", "--version", "1", "--reason", "test"])
    assert result.exit_code == 2
    assert "--force" in result.output


def test_models_history_rollback_and_forced_promotion(cli_env):
    for _ in range(2):  # the same data twice: version 2 is as good as version 1, so the gate promotes it
        assert runner.invoke(app, ["pipeline", "run"]).exit_code == 0
    versions = json.loads(runner.invoke(app, ["models", "list", "--json"]).stdout)
    assert sorted(str(v["version"]) for v in versions) == ["1", "2"]
    history = json.loads(runner.invoke(app, ["models", "history", "--json"]).stdout)
    assert [str(event["version"]) for event in history] == ["1", "2"]

    rolled = runner.invoke(app, ["models", "rollback", "--reason", "bad A/B result", "--json"])
    assert rolled.exit_code == 0, rolled.output
    status = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    assert status["champion"]["version"] == "1"
    assert runner.invoke(app, ["models", "rollback", "--reason", "again"]).exit_code == 1  # nothing before version 1

    forced = runner.invoke(
        app, ["models", "promote", "--version", "2", "--force", "--reason", "hotfix verified", "--json"]
    )
    assert forced.exit_code == 0, forced.output
    history = json.loads(runner.invoke(app, ["models", "history", "--json"]).stdout)
    assert [(str(e["version"]), e["by"]) for e in history][-2:] == [("1", "human"), ("2", "human")]
    assert "hotfix verified" in history[-1]["reason"]
    text = runner.invoke(app, ["models", "history"])
    assert text.exit_code == 0 and "hotfix verified" in text.output


def test_text_tables_keep_every_value_whole():
    from components.cli import _table

    assert _table([], ["a"]) == "(none)"
    long = "snap-" + "f" * 200
    text = _table([{"id": long, "state": "accepted"}, {"id": "x", "state": "[bold]rejected"}], ["id", "state"])
    header, rule, first, second = text.splitlines()
    assert header.split() == ["id", "state"] and set(rule.strip()) <= {"─", " "}
    assert first.split() == [long, "accepted"]
    assert second.split() == ["x", "[bold]rejected"]  # printed as text, not as rich markup
    assert first.index("accepted") == second.index("[bold]rejected") == header.index("state")
