"""Benchmark: the pipeline on PostgreSQL + CeleryExecutor + Redis with 1 and with 2 workers, side by side.

For each worker count, on a fresh data root, a fresh PostgreSQL database (Airflow's metadata and
Celery's result backend) and an empty Redis database (the broker), it starts the real Airflow
stack (api-server, scheduler, dag-processor and N Celery workers of concurrency 1), triggers
``lm_recsys_pipeline`` on the synthetic workload (``benchmarks.workload``, in the generic data
contract) and reports, from the Airflow REST API's task instances, each task's duration and worker
and the run's wall time. Both runs start cold (empty embedding cache, no champion) and use the
same settings, so they do the same work; only the number of workers differs.

Sequential candidates are capped at ``--max-epochs`` evaluation epochs and ``--serve-epochs``
serving epochs (``train.model_configs``): their per-epoch cost is reported, so the uncapped cost
can be read from it. Usage:

    .venv/bin/python -m benchmarks.bench_celery [--scale 10] [--workers 1,2] [--max-epochs 1]
        [--serve-epochs 0] [--workload DIR] [--max-users N] [--workdir DIR] [--json out.json]

Needs PostgreSQL (``--pg-admin-url``, default trust auth on 127.0.0.1:5432) and Redis
(``--redis-url``, default database 6 on 127.0.0.1:6379, flushed before and after each run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.common import quiet_environment

quiet_environment()

from benchmarks.bench_airflow import overhead, task_table  # noqa: E402
from components.settings import PROJECT_ROOT  # noqa: E402
from devtools.stack import AirflowStack  # noqa: E402

PIPELINE = "lm_recsys_pipeline"
SEQUENTIAL = ("lm_sasrec", "sasrec")


class BenchError(Exception):
    """A benchmark that cannot run; the message names the problem."""


def parse_workers(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--workers must be comma-separated whole numbers, got {text!r}") from None
    if not counts or any(n < 1 for n in counts):
        raise argparse.ArgumentTypeError(f"--workers must list worker counts of at least 1, got {text!r}")
    return counts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=10, help="workload size, N× ml-latest-small (default 10)")
    parser.add_argument("--workload", type=Path, default=None, help="an existing benchmarks.workload folder")
    parser.add_argument("--workers", type=parse_workers, default=[1, 2], help="worker counts, run in order (1,2)")
    parser.add_argument("--max-epochs", type=int, default=1, help="evaluation epochs of sequential candidates")
    parser.add_argument("--serve-epochs", type=int, default=0, help="serving epochs of sequential candidates")
    parser.add_argument("--max-users", type=int, default=None, help="ingest only the first N users (smoke runs)")
    parser.add_argument("--candidates", default=None, help="comma-separated candidates (default: the defaults)")
    parser.add_argument("--shards", type=int, default=2, help="embedding shards (mapped embed_shard tasks)")
    parser.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/6")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one pipeline run may take")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the files here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    for name in ("scale", "max_epochs", "shards"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.serve_epochs < 0:
        parser.error(f"--serve-epochs must be at least 0, got {args.serve_epochs}")
    if args.workload is not None and not (args.workload / "workload.json").exists():
        parser.error(f"--workload {args.workload} has no workload.json; write one with python -m benchmarks.workload")
    return args


def workload(args: argparse.Namespace, work: Path) -> tuple[Path, dict, float | None]:
    """The workload folder, its description and the seconds it took to write (None when reused)."""
    if args.workload is not None:
        folder, seconds = args.workload, None
    else:
        folder = work / f"workload-x{args.scale}"
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "benchmarks.workload", "--scale", str(args.scale), "--out", str(folder)],
            check=True,
            cwd=PROJECT_ROOT,
        )
        seconds = round(time.perf_counter() - started, 1)
    return folder, json.loads((folder / "workload.json").read_text()), seconds


def pipeline_env(args: argparse.Namespace, data_root: Path, folder: Path, pg_url: str, broker: str) -> dict:
    capped = {"max_epochs": args.max_epochs, "serve_epochs": args.serve_epochs, "progress": False}
    configs = {name: capped for name in SEQUENTIAL}
    env = {
        "LMRECSYS_DATA_ROOT": str(data_root),
        "LMRECSYS_INGEST__SOURCE_FORMAT": "generic",
        "LMRECSYS_INGEST__ITEMS_PATH": str(folder / "items.csv"),
        "LMRECSYS_INGEST__INTERACTIONS_PATH": str(folder / "events.csv"),
        "LMRECSYS_AIRFLOW__PIPELINE_CRON": "0 0 1 1 *",  # only the benchmark's trigger starts a run
        "LMRECSYS_AIRFLOW__EMBED_SHARDS": str(args.shards),
        "LMRECSYS_TRAIN__MODEL_CONFIGS": json.dumps(configs),
        "AIRFLOW__CELERY__BROKER_URL": broker,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + pg_url.replace("+psycopg2", ""),
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
        "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
        "AIRFLOW__CORE__PARALLELISM": "8",
        # the watch DAG stays paused, so none of its runs takes a worker during the measured run
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
    }
    if args.max_users:
        env["LMRECSYS_INGEST__MAX_USERS"] = str(args.max_users)
    if args.candidates:
        env["LMRECSYS_TRAIN__CANDIDATES"] = json.dumps([c.strip() for c in args.candidates.split(",") if c.strip()])
    return env


class FreshDatabase:
    """A PostgreSQL database created for one run and dropped after it."""

    def __init__(self, admin_url: str):
        import psycopg2

        try:
            self.admin = psycopg2.connect(admin_url, connect_timeout=5)
        except psycopg2.OperationalError as exc:
            raise BenchError(f"PostgreSQL is not reachable at {admin_url}: {exc}") from exc
        self.admin.autocommit = True
        self.name = f"lmrecsys_bench_{uuid.uuid4().hex[:12]}"
        with self.admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{self.name}"')
        self.url = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://", 1) + f"/{self.name}"

    def drop(self) -> None:
        with self.admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self.admin.close()


def redis_client(url: str):
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise BenchError(f"Redis is not reachable at {url}: {exc}") from exc
    return client


def fit_costs(run_dir: Path) -> dict:
    """Per candidate: the fit's seconds, and for a sequential one its epochs and seconds per epoch."""
    costs = {}
    for fit_file in sorted(run_dir.glob("*/fit.json")):
        fit = json.loads(fit_file.read_text())
        inner = fit.get("fit") or {}
        costs[fit_file.parent.name] = {
            "status": fit.get("status"),
            "seconds": fit.get("seconds"),
            "serve_seconds": fit.get("serve_seconds"),
            "epochs_run": inner.get("epochs_run"),
            "seconds_per_epoch": inner.get("seconds_per_epoch"),
        }
    return costs


def one_run(args: argparse.Namespace, workers: int, work: Path, folder: Path) -> dict:
    """The pipeline through a fresh Celery stack with ``workers`` workers."""
    case = work / f"workers-{workers}"
    if case.exists():
        shutil.rmtree(case)
    data_root = case / "data"
    database = FreshDatabase(args.pg_admin_url)
    broker = redis_client(args.redis_url)
    broker.flushdb()
    names = [f"w{i + 1}" for i in range(workers)]
    env = pipeline_env(args, data_root, folder, database.url, args.redis_url)
    stack = AirflowStack(case / "airflow", PROJECT_ROOT / "dags", env, executor="CeleryExecutor", db_url=database.url)
    try:
        started = time.time()
        stack.start(workers=names, timeout=300)
        stack.wait_dag(PIPELINE, timeout=300)
        stack.api("PATCH", f"/dags/{PIPELINE}", json={"is_paused": False})
        stack_start_s = round(time.time() - started, 1)
        load_before = os.getloadavg()
        triggered = time.time()
        run_id = stack.trigger(PIPELINE)
        state = stack.wait_run(PIPELINE, run_id, timeout=args.timeout)
        finished = time.time()
        instances = {
            (ti["task_id"], ti["map_index"]): ti["hostname"].split("@")[0]
            for ti in stack.task_instances(PIPELINE, run_id)
        }
        tasks = task_table(stack, run_id)
        if state != "success":
            raise BenchError(f"the {workers}-worker run ended {state}: {[(t['task'], t['state']) for t in tasks]}")
        run = stack.api("GET", f"/dags/{PIPELINE}/dagRuns/{urllib.parse.quote(run_id, safe='')}")
        decision = stack.xcom(PIPELINE, run_id, "promote")
        report = json.loads(Path(stack.xcom(PIPELINE, run_id, "evaluate")).read_text())
    finally:
        stack.stop()
        broker.flushdb()
        broker.close()
        database.drop()
    for row in tasks:
        task_id, _, index = row["task"].partition("[")
        row["worker"] = instances.get((task_id, int(index.rstrip("]")) if index else -1))
    busy: dict[str, float] = {}
    for row in tasks:
        busy[row["worker"]] = round(busy.get(row["worker"], 0.0) + row["duration_s"], 2)
    return {
        "workers": workers,
        "stack_start_s": stack_start_s,
        "trigger_to_run_end_s": round(finished - triggered, 2),
        **overhead(run, tasks),
        "busy_s_by_worker": busy,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "decision": decision["decision"],
        "best": report["best"],
        "dropped": report.get("dropped", {}),
        "users": report.get("users"),
        "items": report.get("items"),
        "fits": fit_costs(data_root / "runs" / report_run_key(report, data_root)),
        "tasks": [{k: v for k, v in t.items() if k not in ("start", "end", "task_id")} for t in tasks],
    }


def report_run_key(report: dict, data_root: Path) -> str:
    """The run folder of the (single) run under ``data_root``."""
    runs = sorted(p.name for p in (data_root / "runs").iterdir() if (p / "report.json").exists())
    if len(runs) != 1:
        raise BenchError(f"expected one run folder under {data_root / 'runs'}, found {runs}")
    return runs[0]


def markdown(results: dict) -> str:
    runs = results["runs"]
    head = " | ".join(f"{r['workers']} worker{'s' if r['workers'] > 1 else ''}" for r in runs)
    lines = [f"| task | {head} |", "|---|" + "---|" * len(runs)]
    order = [t["task"] for t in runs[0]["tasks"]]
    for name in order + [t["task"] for r in runs[1:] for t in r["tasks"] if t["task"] not in order]:
        cells = []
        for r in runs:
            row = next((t for t in r["tasks"] if t["task"] == name), None)
            cells.append(f"{row['duration_s']} s ({row['worker']})" if row else "–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for label, key in (("run wall", "run_wall_s"), ("sum of task durations", "sum_task_durations_s")):
        lines.append(f"| **{label}** | " + " | ".join(f"**{r[key]} s**" for r in runs) + " |")
    first = runs[0]["run_wall_s"]
    lines.append("| speed-up vs first | " + " | ".join(f"{first / r['run_wall_s']:.2f}×" for r in runs) + " |")
    return "\n".join(lines)


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return f"{model}, {len(os.sched_getaffinity(0))} cores, {platform.machine()}"


def write_json(path: Path, results: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lmrecsys-bench-celery-"))
    work.mkdir(parents=True, exist_ok=True)
    folder, description, workload_s = workload(args, work)
    results = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "python": platform.python_version(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "workload": {"scale": description.get("scale"), "output": description.get("output"), "seconds": workload_s},
        "runs": [],
    }
    try:
        for workers in args.workers:
            result = one_run(args, workers, work, folder)
            results["runs"].append(result)
            print(json.dumps({k: v for k, v in result.items() if k != "tasks"}), flush=True)
    except BenchError as exc:
        print(f"bench_celery: {exc}", file=sys.stderr)
        return 2
    finally:
        if args.json and results["runs"]:
            write_json(args.json, results)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
