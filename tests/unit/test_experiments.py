"""Online experiments without a service: the split, interleaving, the always-valid test, starting with
bad input, and the decision acting through a real MLflow registry (SQLite) and feedback store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from components.errors import LmRecsysError
from components.experiments import (
    CHALLENGER,
    CHAMPION,
    assign,
    credit,
    evaluate,
    get_experiment,
    list_experiments,
    mixture_test,
    start_experiment,
    stop_experiment,
    team_draft,
)
from components.feedback.store import FeedbackStore
from components.registry import champion_history, configure, get_alias_version
from components.settings import load_settings
from tests.harness import restored_mlflow_state
from tests.unit._experiment_fixtures import fill, register_copies


def test_the_split_is_stable_and_follows_the_share():
    users = [str(u) for u in range(20_000)]
    first = [assign("exp-1", u, 0.3) for u in users]
    assert first == [assign("exp-1", u, 0.3) for u in users]  # the same user, the same arm, every time
    assert abs(first.count(CHALLENGER) / len(users) - 0.3) < 0.015
    other = [assign("exp-2", u, 0.3) for u in users]
    agree = sum(a == b for a, b in zip(first, other)) / len(users)
    assert 0.52 < agree < 0.64  # independent of another experiment's split (0.7² + 0.3² = 0.58)


def test_team_draft_interleaving_takes_turns_and_credits_the_team_that_placed_an_item():
    a, b = [1, 2, 3, 4, 5], [3, 6, 1, 7, 8]
    items, teams = team_draft(a, b, 6, seed="rec-1")
    assert len(items) == len(set(items)) == 6 and (items, teams) == team_draft(a, b, 6, seed="rec-1")
    assert teams.count(CHAMPION) == teams.count(CHALLENGER) == 3  # equal picks per team
    for item, team in zip(items, teams):
        assert item in (a if team == CHAMPION else b)
    assert credit(teams, [teams.index(CHALLENGER)]) == {CHAMPION: 0, CHALLENGER: 1}
    seeds = [team_draft(a, b, 2, seed=f"r{i}")[1][0] for i in range(400)]
    assert 160 < seeds.count(CHAMPION) < 240  # the first pick is a fair coin
    assert team_draft([1, 2], [1, 2], 5, seed="x")[0] == [1, 2]  # no more items than both lists hold


def _peeking_run(rng, rate_a, rate_b, n, looks, tau, alpha) -> bool:
    """One experiment looked at ``looks`` times: does the mSPRT ever call it?"""
    a, b = rng.random(n) < rate_a, rng.random(n) < rate_b
    for m in np.linspace(n / looks, n, looks).astype(int):
        va, vb = a[:m].var(ddof=1), b[:m].var(ddof=1)
        if mixture_test(b[:m].mean() - a[:m].mean(), (va + vb) / m, tau, alpha)["significant"]:
            return True
    return False


def test_the_always_valid_test_keeps_its_false_positive_rate_however_often_it_is_looked_at():
    rng = np.random.default_rng(7)
    runs = 300
    false_positives = sum(_peeking_run(rng, 0.1, 0.1, 4000, 40, 0.05, 0.05) for _ in range(runs))
    assert false_positives / runs <= 0.05 + 0.03  # alpha, plus the binomial slack of 300 runs
    wins = sum(_peeking_run(rng, 0.1, 0.16, 4000, 40, 0.05, 0.05) for _ in range(50))
    assert wins >= 45  # and it still finds a clear difference
    test = mixture_test(0.06, 0.0001, 0.05, 0.05)
    assert test["significant"] and test["interval"][0] > 0 > mixture_test(0.0, 0.0001, 0.05, 0.05)["interval"][0]


# ---------------------------------------------------------------- a real registry and feedback store


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A champion (version 1), a copy (version 2) and a version with a changed bundle (version 3)."""
    with restored_mlflow_state():
        root = tmp_path_factory.mktemp("experiments")
        settings = load_settings(data_root=root, experiments={"min_impressions": 50})
        client = configure(settings)
        uris = register_copies(settings, 3)
        location = client.get_logged_model(uris[2].rsplit("/", 1)[-1]).artifact_location
        changed = Path(location.removeprefix("file://")) / "artifacts" / "bundle" / "popularity.npy"
        np.save(changed, np.load(changed)[::-1].copy())
        yield settings


def test_starting_refuses_bad_input_and_changes_nothing(registry):
    settings = registry
    bad = [
        ({"challenger": "2", "share": 0}, "--share must lie strictly between 0 and 1"),
        ({"challenger": "2", "share": 1.0}, "--share must lie strictly between 0 and 1"),
        ({"challenger": "2", "share": 1.5}, "--share must lie strictly between 0 and 1"),
        ({"challenger": "2", "mode": "bandit"}, "--mode must be one of split, interleave"),
        ({"challenger": "2", "metric": "ctr"}, "--metric must be one of"),
        ({"challenger": "2", "max_days": -1}, "--max-days must be a positive number"),
        ({"challenger": "99"}, "has no version '99'"),
        ({"challenger": "1"}, "is the champion already"),
        ({"challenger": "3"}, "version 3 fails its smoke test: .*content hash"),
    ]
    for arguments, message in bad:
        with pytest.raises(LmRecsysError, match=message):
            start_experiment(settings, **arguments)
    assert list_experiments(settings) == []
    client = configure(settings)
    assert not any(k.startswith("experiment.") for k in client.get_model_version("recommender", "2").tags)


def test_a_better_challenger_is_promoted_through_the_registry(registry):
    settings = registry
    experiment = start_experiment(settings, "2", share=0.5)  # the real smoke test, in a fresh process
    with pytest.raises(LmRecsysError, match=f"{experiment['experiment_id']} is already running"):
        start_experiment(settings, "2", smoke=False)
    assert len(list_experiments(settings)) == 1
    fill(settings, experiment, {CHAMPION: 0.05, CHALLENGER: 0.05}, 30)
    waiting = evaluate(settings, experiment)
    assert waiting["decision"]["action"] == "continue"  # too few impressions to decide
    fill(settings, experiment, {CHAMPION: 0.05, CHALLENGER: 0.45}, 300, seed=1)
    result = evaluate(settings, experiment)
    assert result["decision"]["action"] == "promote" and result["decision"]["state"] == "promoted", result["decision"]
    client = configure(settings)
    assert str(get_alias_version(client, "recommender", "champion").version) == "2"
    tags = client.get_model_version("recommender", "2").tags
    exp_id = experiment["experiment_id"]
    assert tags["experiment.id"] == exp_id and tags["experiment.decision"] == "promoted"
    assert tags["experiment.role"] == "challenger" and float(tags["experiment.p_value"]) < 0.05
    assert client.get_model_version("recommender", "1").tags["experiment.decision"] == "promoted"
    last = champion_history(settings)[-1]
    assert (
        last["version"] == "2"
        and last["by"] == "experiment"
        and last["reason"].startswith(f"online experiment {exp_id}")
    )
    assert get_experiment(settings, exp_id)["state"] == "promoted"
    again = evaluate(settings, get_experiment(settings, exp_id))
    assert again["decision"]["action"] == "ended"  # decided once

    # now version 1 challenges version 2 and is worse: stopped, the champion stays
    worse = start_experiment(settings, "1", smoke=False)
    fill(settings, worse, {CHAMPION: 0.45, CHALLENGER: 0.05}, 300, seed=2)
    result = evaluate(settings, worse)
    assert result["decision"]["state"] == "stopped" and "worse" in result["decision"]["reason"]
    assert str(get_alias_version(client, "recommender", "champion").version) == "2"
    assert champion_history(settings)[-1]["action"] == "experiment-stopped"

    # a human stop needs a reason and a running experiment
    third = start_experiment(settings, "1", smoke=False)
    with pytest.raises(LmRecsysError, match="needs --reason"):
        stop_experiment(settings, third["experiment_id"], " ")
    assert stop_experiment(settings, third["experiment_id"], "enough")["state"] == "stopped"
    with pytest.raises(LmRecsysError, match="is not running"):
        stop_experiment(settings, third["experiment_id"], "again")
    with pytest.raises(LmRecsysError, match="there is no experiment 'exp-nope'"):
        stop_experiment(settings, "exp-nope", "why")


def test_a_challenger_that_errors_breaks_the_guardrail(registry):
    settings = registry
    experiment = start_experiment(settings, "1", smoke=False)
    fill(settings, experiment, {CHAMPION: 0.1, CHALLENGER: 0.1}, 20)
    store = FeedbackStore(settings.feedback_url)
    try:
        store.log_impressions(
            [
                {
                    "recommendation_id": f"err-{i}",
                    "experiment_id": experiment["experiment_id"],
                    "arm": CHALLENGER,
                    "model_version": "1",
                    "endpoint": "recommend",
                    "item_ids": [],
                    "latency_ms": 1.0,
                    "error": True,
                }
                for i in range(6)
            ]
        )
    finally:
        store.close()
    result = evaluate(settings, experiment)
    assert (
        result["decision"]["state"] == "stopped"
        and "guardrail: the challenger's error rate" in result["decision"]["reason"]
    )
    assert str(get_alias_version(configure(settings), "recommender", "champion").version) == "2"


def test_an_end_recorded_first_by_another_decider_stands(registry, monkeypatch):
    from components.experiments.decision import act

    settings = registry
    champion = str(get_alias_version(configure(settings), "recommender", "champion").version)
    challenger = "2" if champion == "1" else "1"
    experiment = start_experiment(settings, challenger, smoke=False)
    exp_id = experiment["experiment_id"]
    stats = evaluate(settings, experiment, apply=False)["stats"]
    original = FeedbackStore.finish_experiment

    def raced(self, experiment_id, state, reason, decision):
        original(self, experiment_id, "stopped", "stopped elsewhere", {})  # the other decider's insert lands first
        return original(self, experiment_id, state, reason, decision)

    monkeypatch.setattr(FeedbackStore, "finish_experiment", raced)
    outcome = act(settings, experiment, "stop", "the guardrail", stats)
    assert outcome == {"changed": False, "experiment_id": exp_id, "state": "stopped"}
    assert get_experiment(settings, exp_id)["reason"] == "stopped elsewhere"
    tags = configure(settings).get_model_version("recommender", challenger).tags
    assert "the guardrail" not in tags.get("experiment.reason", "")  # the losing decider tagged nothing


def test_the_cli_starts_shows_lists_and_stops(registry, monkeypatch):
    from components.cli import app

    settings = registry
    monkeypatch.setenv("LMRECSYS_DATA_ROOT", str(settings.data_root))
    runner = CliRunner()
    bad = runner.invoke(app, ["experiments", "start", "--challenger", "1", "--share", "2"])
    assert bad.exit_code == 1 and "--share must lie strictly between 0 and 1" in bad.output
    started = runner.invoke(app, ["experiments", "start", "--challenger", "1", "--no-smoke-test", "--json"])
    assert started.exit_code == 0, started.output
    exp_id = json.loads(started.stdout)["experiment_id"]
    shown = json.loads(runner.invoke(app, ["experiments", "show", exp_id, "--json"]).stdout)
    assert shown["experiment"]["state"] == "running" and set(shown["stats"]["arms"]) == {CHAMPION, CHALLENGER}
    assert exp_id in runner.invoke(app, ["experiments", "list"]).stdout
    decided = runner.invoke(app, ["experiments", "decide", "--json"])  # no impressions yet: carry on
    assert decided.exit_code == 0, decided.output
    assert [(d["experiment_id"], d["decision"], d["changed"]) for d in json.loads(decided.stdout)] == [
        (exp_id, "continue", False)
    ]
    stopped = runner.invoke(app, ["experiments", "stop", exp_id, "--reason", "cli test"])
    assert stopped.exit_code == 0 and "stopped" in stopped.stdout
    assert runner.invoke(app, ["experiments", "stop", exp_id, "--reason", "again"]).exit_code == 1
    assert "no experiment is running" in runner.invoke(app, ["experiments", "decide"]).output


def test_with_online_promotion_the_gate_sends_its_winner_to_an_experiment(registry):
    from components.pipeline import _start_online_experiment
    from components.registry import promote_if_better

    settings = registry.model_copy(update={"registry": registry.registry.model_copy(update={"promotion": "online"})})
    client = configure(settings)
    champion = str(get_alias_version(client, "recommender", "champion").version)
    uri = f"models:/recommender/{'1' if champion == '2' else '2'}"
    challenger = uri.rsplit("/", 1)[-1]
    decision = promote_if_better(
        client, settings, challenger, 0.5, 0.4, 0.1, uri, expected_champion=champion, move=False
    )
    assert decision["decision"] == "online" and "sent to an online experiment" in decision["reason"], decision
    assert str(get_alias_version(client, "recommender", "champion").version) == champion  # not moved
    started = _start_online_experiment(settings, challenger)
    experiment = get_experiment(settings, started["experiment_id"])
    assert experiment["state"] == "running" and experiment["challenger_version"] == challenger
    assert experiment["created_by"] == "pipeline"
    assert "already running" in _start_online_experiment(settings, challenger)["experiment_error"]
    stop_experiment(settings, experiment["experiment_id"], "test done")


def test_a_small_arm_with_one_outcome_is_not_shown_as_certain():
    """Three likes out of three impressions: the smoothed variance floor keeps the interval wide."""
    from components.experiments.stats import split_stats

    impressions = pd.DataFrame(
        {
            "recommendation_id": [f"r{i}" for i in range(6)],
            "arm": ["champion"] * 3 + ["challenger"] * 3,
            "error": [0] * 6,
            "latency_ms": [1.0] * 6,
        }
    )
    attributions = pd.DataFrame({"recommendation_id": ["r3", "r4", "r5"], "event": ["like"] * 3})
    stats = split_stats(impressions, attributions, ("like",), ("dislike",), tau=1.0, alpha=0.05)
    challenger, champion = stats["arms"]["challenger"], stats["arms"]["champion"]
    assert challenger["rate"] == 1.0 and champion["rate"] == 0.0
    for arm in (challenger, champion):
        low, high = arm["interval"]
        assert high - low > 0.5, arm["interval"]  # no zero-width interval from a zero sample variance
    assert not stats["test"]["significant"]  # 3 against 3 decides nothing
