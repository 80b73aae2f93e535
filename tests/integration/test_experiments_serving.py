"""Online experiments on a real ``bentoml serve``, driven by the simulator (tests/simulator.py).

The world is tiny and hand-made (60 items in 4 genres, 1,600 users who each keep to one genre, their
first 5 items for training and the rest held out as their future), so every model is fitted in well
under a second; the service, the feedback store, the registry and the decision are the real ones. Each
experiment meets users of its own, each once (a user who liked their future items has none left).

1. A/A: the champion against a copy of itself, 5 runs: at most one declares a winner or a loser.
2. A worse challenger (a content model on random vectors) in split mode: the service is killed with
   -9 mid-experiment, every impression it acknowledged is in the store, the experiment resumes on the
   restarted service, and it stops with the champion unchanged.
3. A clearly better challenger (the content model on vectors that know the genres), started through
   the admin API in interleave mode, wins and is promoted by itself; bad starts are refused.
"""

from __future__ import annotations

import time

import pytest
import requests

from tests.harness import BentoServer, restored_mlflow_state, wait_for
from tests.simulator import Simulator, tiny_world

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ADMIN = {"Authorization": "Bearer experiments-token-93b1"}


def _start_server(root, workdir) -> BentoServer:
    from components.settings import PROJECT_ROOT

    env = {
        "LMRECSYS_DATA_ROOT": str(root),
        "LMRECSYS_FEEDBACK__URL": f"sqlite:///{root / 'feedback.db'}",
        "LMRECSYS_SERVING__ADMIN_TOKEN": ADMIN["Authorization"].removeprefix("Bearer "),
        "LMRECSYS_SERVING__POLL_INTERVAL_S": "3600",
        "LMRECSYS_EXPERIMENTS__REFRESH_S": "0.5",
        "LMRECSYS_EXPERIMENTS__MIN_IMPRESSIONS": "50",
    }
    return BentoServer(env, workdir, PROJECT_ROOT).wait_ready(timeout=180)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with restored_mlflow_state():
        root = tmp_path_factory.mktemp("experiments-world")
        settings, users, versions = tiny_world(root)
        workdir = tmp_path_factory.mktemp("experiments-bento")
        server = _start_server(root, workdir)
        state = {"settings": settings, "users": users, "versions": versions, "server": server, "workdir": workdir}
        try:
            yield state
        finally:
            state["server"].stop()


def _experiment(settings, exp_id):
    from components.experiments import get_experiment

    return get_experiment(settings, exp_id)


def _serving_both(server, exp_id):
    def ready():
        body = requests.get(f"{server.base}/experiments/current", timeout=10).json()
        return body["experiment"]["experiment_id"] == exp_id and body["served"]["challenger_loaded"]

    wait_for(ready, 60, what="the service to load the challenger")


def _decided_tags(settings, version: str) -> dict | None:
    """The version's tags once they hold the experiment's decision (written just after the store ends it)."""
    from components.registry import configure

    tags = configure(settings).get_model_version(settings.registry.model_name, version).tags
    return tags if "experiment.decision" in tags else None


def _champion(settings) -> str:
    from components.registry import configure, get_alias_version

    return str(get_alias_version(configure(settings), settings.registry.model_name, "champion").version)


def test_aa_experiments_rarely_declare_a_winner(world):
    from components.experiments import start_experiment

    settings, server, versions = world["settings"], world["server"], world["versions"]
    decided = []
    for run in range(5):
        exp_id = start_experiment(settings, versions["popularity_copy"], smoke=False)["experiment_id"]
        _serving_both(server, exp_id)
        simulator = Simulator(server.base, world["users"][run * 160 : (run + 1) * 160], seed=run)
        simulator.run(160, threads=4)
        assert set(simulator.arms) == {"champion", "challenger"}
        time.sleep(1.0)  # one more decision round on everything sent
        if _experiment(settings, exp_id)["state"] != "running":
            decided.append(exp_id)
        else:
            stopped = requests.post(
                f"{server.base}/admin/experiments/{exp_id}/stop",
                json={"reason": "A/A run done"},
                headers=ADMIN,
                timeout=30,
            )
            assert stopped.status_code == 200, stopped.text
    assert len(decided) <= 1, decided  # alpha 0.05: P(2 or more of 5) < 2.3% even at the bound
    assert _champion(settings) == versions["popularity"] or decided


def test_a_worse_challenger_loses_and_a_crash_loses_no_acknowledged_impression(world):
    from components.experiments import start_experiment
    from components.feedback.store import FeedbackStore
    from components.registry import champion_history

    settings, versions = world["settings"], world["versions"]
    champion = _champion(settings)
    exp_id = start_experiment(settings, versions["worse"], share=0.5, smoke=False)["experiment_id"]
    _serving_both(world["server"], exp_id)
    before = Simulator(world["server"].base, world["users"][800:840], seed=11)
    before.run(40, threads=4)  # under min_impressions per arm: no decision yet
    world["server"].kill9()
    store = FeedbackStore(settings.feedback_url)
    try:
        missing = [rec_id for rec_id in before.acknowledged if store.impression(rec_id) is None]
        assert not missing and len(before.acknowledged) == 40, missing
    finally:
        store.close()
    assert _experiment(settings, exp_id)["state"] == "running"
    world["server"] = server = _start_server(settings.data_root, world["workdir"])
    _serving_both(server, exp_id)  # resumed
    after = Simulator(server.base, world["users"][840:1200], seed=12)
    after.run(360, threads=4, until=lambda: _experiment(settings, exp_id)["state"] != "running")
    ended = _experiment(settings, exp_id)
    assert ended["state"] == "stopped" and "worse" in ended["reason"], ended
    assert ended["decision"]["arms"]["champion"]["impressions"] >= 50
    assert _champion(settings) == champion
    # the decision's record ends the experiment first (once, in the store); the version tags follow it
    tags = wait_for(lambda: _decided_tags(settings, versions["worse"]), 30, what="the stopped version's tags")
    assert tags["experiment.decision"] == "stopped" and tags["experiment.id"] == exp_id
    assert champion_history(settings)[-1]["action"] == "experiment-stopped"


def test_a_better_challenger_wins_in_interleave_mode_and_is_promoted(world):
    from components.feedback.store import FeedbackStore
    from components.registry import champion_history

    settings, server, versions = world["settings"], world["server"], world["versions"]
    start = f"{server.base}/admin/experiments"
    refused = [
        ({"challenger": versions["better"], "share": 1.5}, 400, "--share must lie strictly between 0 and 1"),
        ({"challenger": "404"}, 400, "has no version '404'"),
        ({"challenger": versions["better"], "mode": "bandit"}, 400, "--mode must be one of"),
    ]
    for body, status, message in refused:
        answer = requests.post(start, json=body, headers=ADMIN, timeout=120)
        assert answer.status_code == status and message in answer.json()["error"], answer.text
    assert requests.post(start, json={"challenger": versions["better"]}, timeout=30).status_code == 401
    started = requests.post(
        start, json={"challenger": versions["better"], "mode": "interleave"}, headers=ADMIN, timeout=180
    )
    assert started.status_code == 200, started.text  # after its smoke test in a fresh process
    exp_id = started.json()["experiment_id"]
    second = requests.post(start, json={"challenger": versions["worse"]}, headers=ADMIN, timeout=60)
    assert second.status_code == 409 and exp_id in second.json()["error"]
    _serving_both(server, exp_id)

    session = requests.post(
        f"{server.base}/recommend_session", json={"item_ids": [100, 101], "session_id": "s-1"}, timeout=30
    )
    assert session.status_code == 200 and session.json()["arm"] == "interleaved"
    assert session.json()["recommendation_id"] and "+" in session.json()["model_version"]
    unknown = requests.post(
        f"{server.base}/feedback",
        json={"user_id": 2, "item_id": 100, "event": "like", "recommendation_id": "rec-unknown"},
        timeout=30,
    )
    assert unknown.status_code == 200 and unknown.json()["new"] == 1  # stored as plain feedback

    simulator = Simulator(server.base, world["users"][1200:], seed=21)
    steps = simulator.run(400, threads=4, until=lambda: _experiment(settings, exp_id)["state"] != "running")
    ended = _experiment(settings, exp_id)
    assert ended["state"] == "promoted", ended
    assert steps <= 300, steps  # interleaving decides within a few hundred users here
    assert _champion(settings) == versions["better"]
    history = champion_history(settings)[-1]
    assert history["version"] == versions["better"] and history["reason"].startswith(f"online experiment {exp_id}")
    wait_for(
        lambda: requests.get(f"{server.base}/info", timeout=10).json()["model_version"] == versions["better"],
        30,
        what="the service to serve the promoted challenger",
    )
    after = requests.post(f"{server.base}/recommend", json={"user_id": 2}, timeout=30).json()
    assert after["arm"] == "champion" and after["model_version"] == versions["better"]
    panel = requests.get(f"{server.base}/experiments/current", timeout=30).json()
    assert panel["experiment"]["state"] == "promoted" and len(panel["stats"]["series"]) >= 2
    store = FeedbackStore(settings.feedback_url)
    try:
        assert store.attribution_counts()["reasons"].get("unknown recommendation_id", 0) >= 1
    finally:
        store.close()
