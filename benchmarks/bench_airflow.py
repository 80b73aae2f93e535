"""Benchmark: wall time from trigger to a promoted, served model through the real embedded stack.

Starts Airflow (scheduler, dag-processor, api-server on SQLite with LocalExecutor) and
``bentoml serve`` on a fresh data root, then measures

1. the full run on ml-latest-small (all users, empty embedding cache), triggered through the
   REST API, until ``/recommend`` answers with the promoted version;
2. a feedback-triggered incremental run: N events posted to the service's ``/feedback_batch``
   start ``lm_recsys_pipeline`` through ``lm_recsys_feedback_watch`` (the catalogue is unchanged,
   so every text is an embedding cache hit), until the service answers with the new version.

For each run it reports per-task durations and queue delays, and the scheduler's overhead: the
run's wall time minus the sum of its task durations (and minus the critical path, where the
mapped shards count once). Usage:

    .venv/bin/python -m benchmarks.bench_airflow [--max-users N] [--events 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
import urllib.parse
import uuid
from datetime import datetime
from pathlib import Path

from benchmarks.common import quiet_environment

quiet_environment()

from components.settings import PROJECT_ROOT, load_settings  # noqa: E402
from devtools.stack import AirflowStack, BentoServer, wait_for  # noqa: E402

PIPELINE = "lm_recsys_pipeline"
WATCH = "lm_recsys_feedback_watch"


def _ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


def task_table(stack: AirflowStack, run_id: str) -> list[dict]:
    """Per task instance: duration, and the delay between being queued and starting."""
    rows = []
    instances = stack.task_instances(PIPELINE, run_id)
    for ti in sorted(instances, key=lambda t: (_ts(t["start_date"]) or 0, t["map_index"])):
        queued, started, ended = _ts(ti["queued_when"]), _ts(ti["start_date"]), _ts(ti["end_date"])
        name = ti["task_id"] if ti["map_index"] < 0 else f"{ti['task_id']}[{ti['map_index']}]"
        rows.append(
            {
                "task": name,
                "task_id": ti["task_id"],
                "state": ti["state"],
                "tries": ti["try_number"],
                "duration_s": round(ti["duration"] or 0.0, 2),
                "queue_delay_s": round(started - queued, 2) if queued and started else None,
                "start": started,
                "end": ended,
            }
        )
    return rows


def overhead(run: dict, tasks: list[dict]) -> dict:
    """How much of the run's wall time no task was accounting for."""
    wall = _ts(run["end_date"]) - _ts(run["start_date"])
    total = sum(t["duration_s"] for t in tasks)
    # the mapped shards run side by side: on the critical path only the longest counts
    by_task: dict[str, float] = {}
    for t in tasks:
        by_task[t["task_id"]] = max(by_task.get(t["task_id"], 0.0), t["duration_s"])
    critical = sum(by_task.values())
    return {
        "run_wall_s": round(wall, 2),
        "sum_task_durations_s": round(total, 2),
        "overhead_vs_sum_s": round(wall - total, 2),
        "critical_path_s": round(critical, 2),
        "overhead_vs_critical_path_s": round(wall - critical, 2),
        "overhead_per_task_s": round((wall - critical) / max(1, len(by_task)), 2),
    }


def wait_served(server: BentoServer, version: str, user_id: str, timeout: float) -> float:
    """Poll /recommend until it answers with ``version``; returns when it first did."""

    def served():
        response = server.post("/recommend", {"user_id": user_id, "k": 10}, timeout=10)
        return response.status_code == 200 and response.json().get("model_version") == version

    wait_for(served, timeout, interval=0.5, what=f"the service to serve version {version}", procs=[server])
    return time.time()


def measure_run(
    stack: AirflowStack, server: BentoServer, run_id: str, started: float, user_id: str, timeout: float
) -> dict:
    state = stack.wait_run(PIPELINE, run_id, timeout=timeout)
    finished = time.time()
    if state != "success":
        states = [(t["task"], t["state"]) for t in task_table(stack, run_id)]
        raise RuntimeError(f"run {run_id} ended {state}: {states}")
    decision = stack.xcom(PIPELINE, run_id, "promote")
    served_at = wait_served(server, decision["version"], user_id, 180) if decision["decision"] == "promoted" else None
    run = stack.api("GET", f"/dags/{PIPELINE}/dagRuns/{urllib.parse.quote(run_id, safe='')}")
    tasks = task_table(stack, run_id)
    shard_count = sum(t["task_id"] == "embed_shard" for t in tasks)
    shards = [stack.xcom(PIPELINE, run_id, "embed_shard", map_index=i) for i in range(shard_count)]
    return {
        "run_id": run_id,
        "run_type": run["run_type"],
        "decision": decision["decision"],
        "reason": decision["reason"],
        "version": decision["version"],
        "trigger_to_run_start_s": round(_ts(run["start_date"]) - started, 2),
        "trigger_to_run_end_s": round(finished - started, 2),
        "trigger_to_served_s": round(served_at - started, 2) if served_at else None,
        "shards": [{k: s[k] for k in ("shard", "encoded", "seconds")} for s in shards],
        **overhead(run, tasks),
        "tasks": [{k: v for k, v in t.items() if k not in ("start", "end", "task_id")} for t in tasks],
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-users", type=int, default=None, help="reduce the data (default: all users)")
    parser.add_argument("--events", type=int, default=20, help="feedback events that trigger the second run")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.02,
        help="gate tolerance, so the incremental run's challenger is promoted and served",
    )
    parser.add_argument("--workdir", default=None, help="keep the stack's files here (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument(
        "--feedback-only",
        action="store_true",
        help="reuse --workdir from an earlier run (champion and embedding cache in place) "
        "and measure only the feedback-triggered run",
    )
    return parser.parse_args()


def stack_env(args: argparse.Namespace, data_root: Path, source: str) -> dict:
    """The environment of the Airflow stack and the service."""
    env = {
        "LMRECSYS_DATA_ROOT": str(data_root),
        "LMRECSYS_INGEST__SOURCE": source,
        "LMRECSYS_AIRFLOW__PIPELINE_CRON": "0 0 1 1 *",
        "LMRECSYS_AIRFLOW__EMBED_SHARDS": "2",
        "LMRECSYS_FEEDBACK__TRIGGER_MIN_EVENTS": str(args.events),
        "LMRECSYS_AIRFLOW__WATCH_INTERVAL_S": "10",
        "LMRECSYS_SERVING__POLL_INTERVAL_S": "2",
        "LMRECSYS_REGISTRY__TOLERANCE": str(args.tolerance),
    }
    if args.max_users:
        env["LMRECSYS_INGEST__MAX_USERS"] = str(args.max_users)
    return env


def feedback_run(stack: AirflowStack, server: BentoServer, settings, events: int) -> dict:
    """Post ``events`` feedback events through the service; measure the run they trigger."""
    import pandas as pd

    from components.data.snapshots import newest_accepted

    # the feedback-triggered run: events through the service, no human step after them
    snapshot = newest_accepted(settings.snapshots_dir)
    items = pd.read_parquet(snapshot.path / "items.parquet")["item_id"].astype(str).tolist()
    before = {r["dag_run_id"] for r in stack.runs(PIPELINE)}
    stack.api("PATCH", f"/dags/{WATCH}", json={"is_paused": False})
    events = [
        {"user_id": "7", "item_id": item, "event": "like", "event_id": f"bench-{uuid.uuid4().hex}"}
        for item in random.Random(time.time_ns()).sample(items, events)
    ]
    server.wait_ready(timeout=300)
    response = server.post("/feedback_batch", {"events": events}, timeout=60)
    response.raise_for_status()
    posted = time.time()
    new_run = wait_for(
        lambda: [r for r in stack.runs(PIPELINE) if r["dag_run_id"] not in before],
        600,
        interval=1,
        what="the feedback-triggered run",
        procs=stack.procs,
    )[0]
    result = measure_run(stack, server, new_run["dag_run_id"], posted, "7", 3600)
    result["events_to_run_queued_s"] = round(_ts(new_run["queued_at"]) - posted, 2)
    stack.api("PATCH", f"/dags/{WATCH}", json={"is_paused": True})
    return result


def main() -> int:
    args = parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lmrecsys-bench-airflow-"))
    data_root = work / "data"
    settings = load_settings(data_root=data_root)
    env = stack_env(args, data_root, settings.resolved_source())
    stack = AirflowStack(work / "airflow", PROJECT_ROOT / "dags", env)
    server = None
    results: dict = {
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "load_before": os.getloadavg(),
    }
    try:
        t0 = time.time()
        stack.start(timeout=300)
        stack.wait_dag(WATCH, timeout=300)
        stack.api("PATCH", f"/dags/{WATCH}", json={"is_paused": True})
        stack.wait_dag(PIPELINE, timeout=300)
        server = BentoServer(env, work / "bento", PROJECT_ROOT)
        results["stack_start_s"] = round(time.time() - t0, 2)

        if not args.feedback_only:
            started = time.time()
            run_id = stack.trigger(PIPELINE)
            results["full"] = measure_run(stack, server, run_id, started, "1", 3600)
            print(json.dumps({k: v for k, v in results["full"].items() if k != "tasks"}), flush=True)

        results["feedback"] = feedback_run(stack, server, settings, args.events)
        print(json.dumps({k: v for k, v in results["feedback"].items() if k != "tasks"}), flush=True)
    finally:
        if server is not None:
            server.stop()
        stack.stop()
    results["load_after"] = os.getloadavg()
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    for case in [c for c in ("full", "feedback") if c in results]:
        print(f"\n{case}: | task | tries | duration s | queue delay s |")
        for t in results[case]["tasks"]:
            print(f"| {t['task']} | {t['tries']} | {t['duration_s']} | {t['queue_delay_s']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
