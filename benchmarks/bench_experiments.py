"""Online experiments on ml-latest-small: users needed to decide (split and interleave), A/A false
positives, and the serving cost of the impression log. Writes docs/benchmarks/experiments.md.

Each user's last ``--held-out`` ratings are held out as their future; popularity (the champion) and EASE
(the challenger, clearly better offline) are fitted on the rest, registered, and served by a real
``bentoml serve``. The simulator (tests/simulator.py) replays the users in a random order, visit after
visit, until the service decides by itself; each run gets a fresh feedback store (and service), and the
champion is put back afterwards. A/A runs test popularity against a copy of itself with a budget of
visits. The serving cost is /recommend at 16 concurrent clients without an experiment and with one
running (every answer's impression written durably before it goes out), side by side; the load
generator is Python threads on the same 2 cores, so absolute numbers are lower bounds.

    python -m benchmarks.bench_experiments [--runs 3] [--aa-runs 10] [--out docs/benchmarks/experiments.md]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

import requests

from benchmarks.common import machine_summary, movielens_dir, quiet_environment, utc_minute

ADMIN = "bench-experiments-token-0123456789abcdef"


def build(root: Path, folder: Path, held_out: int):
    import mlflow

    from components.data.dataset import InteractionData
    from components.data.sources import read_movielens
    from components.engine import write_bundle
    from components.models import EASE, Popularity
    from components.registry import configure, log_bundle_model
    from components.settings import load_settings
    from tests.simulator import movielens_users

    source = read_movielens(folder)
    train, users = movielens_users(source.interactions, held_out)
    data = InteractionData.from_frames(source.items, train)
    settings = load_settings(data_root=root)
    client = configure(settings)
    versions = {}
    for name, model in (("popularity", Popularity({})), ("copy", Popularity({})), ("ease", EASE({"l2": 500.0}))):
        started = time.perf_counter()
        model.fit(data)
        bundle = write_bundle(root / name / "bundle", model, data, None, {"model_name": model.name, "id_type": "int"})
        with mlflow.start_run(run_name=f"bench-{name}"):
            versions[name] = str(log_bundle_model(bundle, settings.registry.model_name)[0])
        print(f"{name}: fitted and registered in {time.perf_counter() - started:.1f}s", flush=True)
    client.set_registered_model_alias(settings.registry.model_name, "champion", versions["popularity"])
    return settings, users, versions


def with_store(settings, store: Path):
    """The settings with the feedback store at ``store`` (each run has its own, like its service)."""
    from components.settings import load_settings

    return load_settings(data_root=settings.data_root, feedback={"url": f"sqlite:///{store}"})


def serve(root: Path, store: Path, log_dir: Path, refresh_s: str = "1"):
    from components.settings import PROJECT_ROOT
    from tests.harness import BentoServer

    env = {
        "LMRECSYS_DATA_ROOT": str(root),
        "LMRECSYS_FEEDBACK__URL": f"sqlite:///{store}",
        "LMRECSYS_SERVING__ADMIN_TOKEN": ADMIN,
        "LMRECSYS_SERVING__POLL_INTERVAL_S": "3600",
        "LMRECSYS_EXPERIMENTS__REFRESH_S": refresh_s,  # decision runs: 1 s, so a decision is seen soon
    }
    log_dir.mkdir(parents=True, exist_ok=True)
    return BentoServer(env, log_dir, PROJECT_ROOT).wait_ready(timeout=300)


def _state(settings, exp_id: str) -> dict:
    from components.experiments import get_experiment

    return get_experiment(settings, exp_id)


def _both_served(server, exp_id: str) -> None:
    from tests.harness import wait_for

    def ready():
        body = requests.get(f"{server.base}/experiments/current", timeout=30).json()
        return body["experiment"]["experiment_id"] == exp_id and body["served"]["challenger_loaded"]

    wait_for(ready, 300, what="the challenger to load")


def decide_run(settings, users, versions, mode: str, seed: int, work: Path, budget: int) -> dict:
    from components.experiments import start_experiment
    from components.registry import configure
    from tests.simulator import Simulator

    settings = with_store(settings, work / f"{mode}-{seed}.db")
    server = serve(settings.data_root, work / f"{mode}-{seed}.db", work / f"{mode}-{seed}")
    try:
        exp_id = start_experiment(settings, versions["ease"], mode=mode, smoke=False)["experiment_id"]
        _both_served(server, exp_id)
        order = users[:]
        random.Random(seed).shuffle(order)
        simulator = Simulator(server.base, order, seed=seed)
        started = time.perf_counter()
        visits = simulator.run(budget, threads=4, until=lambda: _state(settings, exp_id)["state"] != "running")
        ended = _state(settings, exp_id)
        seconds = time.perf_counter() - started
    finally:
        server.stop()
        configure(settings).set_registered_model_alias(settings.registry.model_name, "champion", versions["popularity"])
    arms = ended["decision"].get("arms", {})
    return {
        "mode": mode,
        "seed": seed,
        "state": ended["state"],
        "reason": ended["reason"],
        "visits": visits,
        "distinct_users": min(visits, len(users)),
        "seconds": round(seconds, 1),
        "impressions": {arm: figures["impressions"] for arm, figures in arms.items()},
        "decisive_units": ended["decision"].get("decisive_units"),
    }


def aa_runs(settings, users, versions, runs: int, budget: int, work: Path) -> dict:
    from components.experiments import start_experiment, stop_experiment
    from tests.simulator import Simulator

    decided = []
    settings = with_store(settings, work / "aa.db")
    server = serve(settings.data_root, work / "aa.db", work / "aa")
    try:
        for run in range(runs):
            exp_id = start_experiment(settings, versions["copy"], smoke=False)["experiment_id"]
            _both_served(server, exp_id)
            order = users[:]
            random.Random(1000 + run).shuffle(order)
            Simulator(server.base, order, seed=1000 + run).run(budget, threads=4)
            time.sleep(2)
            state = _state(settings, exp_id)
            if state["state"] == "running":
                stop_experiment(settings, exp_id, "A/A run done")
            else:
                decided.append({"run": run, "state": state["state"], "reason": state["reason"]})
            print(f"A/A run {run}: {state['state']}", flush=True)
    finally:
        server.stop()
    return {"runs": runs, "visits_per_run": budget, "decided": decided}


def load(server, users, seconds: float, clients: int = 16) -> dict:
    latencies: list[float] = []
    errors = [0]
    stop = time.monotonic() + seconds
    lock = threading.Lock()

    def worker(offset: int) -> None:
        session, own, n = requests.Session(), [], offset
        while time.monotonic() < stop:
            user = users[n % len(users)].user_id
            n += clients
            started = time.perf_counter()
            answer = session.post(f"{server.base}/recommend", json={"user_id": int(user), "k": 10}, timeout=30)
            own.append((time.perf_counter() - started) * 1000)
            if answer.status_code != 200:
                with lock:
                    errors[0] += 1
        with lock:
            latencies.extend(own)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    return {
        "requests_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 2),
        "errors": errors[0],
    }


def serving_cost(settings, users, versions, seconds: float, work: Path) -> dict:
    from components.experiments import start_experiment, stop_experiment

    settings = with_store(settings, work / "cost.db")
    server = serve(settings.data_root, work / "cost.db", work / "cost", refresh_s="5")  # the default
    try:
        load(server, users, 5)  # warm-up: every user's ranking cached
        results = {"no experiment": load(server, users, seconds)}
        exp_id = start_experiment(settings, versions["copy"], smoke=False)["experiment_id"]
        _both_served(server, exp_id)
        load(server, users, 5)
        results["A/A experiment running (impressions logged)"] = load(server, users, seconds)
        stop_experiment(settings, exp_id, "cost measured")
    finally:
        server.stop()
    return results


def write_report(path: Path, results: dict) -> None:
    lines = [
        "# Online experiments on ml-latest-small",
        "",
        f"`python -m benchmarks.bench_experiments` ({results['when']}, {results['machine']}). Popularity is the",
        f"champion and EASE (λ = 500) the challenger; each user's last {results['held_out']} ratings are their",
        "future, held out of both fits; a simulated user likes each recommended item that is in their future",
        "(noise 0). Each run: a fresh feedback store and `bentoml serve`, the experiment started with the",
        "defaults (alpha 0.05, at least 200 impressions per arm, or 200 interleaved impressions), users",
        "replayed in a random order (a user comes back after every other user has been seen) until the",
        "service decided by itself (evaluated every second; the simulator looks every 50 visits, so the",
        "visit counts are upper bounds by up to about 80).",
        "",
        "| mode | run | decision | visits to decide | impressions per arm | decisive units | seconds | reason |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in results["decide"]:
        arms = ", ".join(f"{arm} {n}" for arm, n in run["impressions"].items())
        lines.append(
            f"| {run['mode']} | {run['seed']} | {run['state']} | {run['visits']} | {arms} | "
            f"{run['decisive_units']} | {run['seconds']} | {run['reason'].split(': ', 1)[-1]} |"
        )
    aa = results["aa"]
    lines += [
        "",
        f"A/A (popularity against a copy of itself, split): {len(aa['decided'])} of {aa['runs']} runs of "
        f"{aa['visits_per_run']} visits declared a winner or a loser (alpha 0.05).",
        "",
        "/recommend at 16 concurrent clients for 20 s each, side by side on one service (Python threads on the",
        "same cores as the service; the decision evaluated every 5 s, the default):",
        "",
        "| | req/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|",
    ]
    for name, numbers in results["cost"].items():
        figures = " | ".join(str(numbers[key]) for key in ("requests_per_s", "p50_ms", "p99_ms", "errors"))
        lines.append(f"| {name} | {figures} |")
    lines += ["", "Raw numbers:", "", "```json", json.dumps(results, indent=1, default=str), "```", ""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="decision runs per mode")
    parser.add_argument("--aa-runs", type=int, default=10)
    parser.add_argument("--aa-visits", type=int, default=1220, help="visits per A/A run (two per user)")
    parser.add_argument("--budget", type=int, default=6100, help="most visits of one decision run")
    parser.add_argument("--held-out", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of each serving-cost run")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/experiments.md"))
    args = parser.parse_args(argv)
    quiet_environment()
    with tempfile.TemporaryDirectory(prefix="bench-experiments-") as scratch:
        work = Path(scratch)
        settings, users, versions = build(work / "root", movielens_dir(require=True), args.held_out)
        results = {"when": utc_minute(), "machine": machine_summary(), "held_out": args.held_out, "decide": []}
        for mode in ("interleave", "split"):
            for seed in range(args.runs):
                run = decide_run(settings, users, versions, mode, seed, work, args.budget)
                print(json.dumps(run), flush=True)
                results["decide"].append(run)
        results["aa"] = aa_runs(settings, users, versions, args.aa_runs, args.aa_visits, work)
        results["cost"] = serving_cost(settings, users, versions, args.seconds, work)
    write_report(args.out, results)
    print(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
