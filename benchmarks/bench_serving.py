"""Serving throughput: /recommend on the real champion, BentoML's trivial endpoint, bare Starlette.

All three run in one run, each at 16 and 64 connections (then ``/recommend`` alternated with a
second service whose impression log is off, for the log's cost, and the scored one with
micro-batching off, for that ratio), with ``wrk`` as the load generator in
its own process (``apt-get install -y wrk``). Then feedback ingestion: unique events posted as fast
as possible, and the store counted afterwards (events in the store must equal 2xx responses, up to
the requests still in flight when wrk stops).

    python -m benchmarks.bench_serving --data-root DIR   # a data root holding a champion
    python -m benchmarks.bench_serving                   # builds one on the full ml-latest-small first

Prints a Markdown table and writes it (with the raw numbers as JSON) to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from benchmarks.common import cpu_model, quiet_environment, utc_minute

quiet_environment()

import psutil  # noqa: E402
import requests  # noqa: E402

from components.settings import PROJECT_ROOT  # noqa: E402
from devtools.stack import BentoServer, ManagedProcess, free_port, wait_for  # noqa: E402

RESULTS = PROJECT_ROOT / "benchmarks" / "results"

RECOMMEND_LUA = """
math.randomseed(os.time())
request = function()
  local body = string.format('{"user_id": %d, "k": 10}', math.random(1, %USERS%))
  return wrk.format("POST", "/recommend", {["Content-Type"] = "application/json"}, body)
end
"""

SWEEP_LUA = """
local next_user = 0
local threads = 0
setup = function(thread)
  thread:set("offset", threads * 97)
  threads = threads + 1
end
request = function()
  next_user = next_user + 1
  local body = string.format('{"user_id": %d, "k": 10}', ((next_user + offset) %% %USERS%) + 1)
  return wrk.format("POST", "/recommend", {["Content-Type"] = "application/json"}, body)
end
"""
"""Warm-up for /recommend: every wrk thread walks all users in turn, so each worker's ranking
cache holds every user before the timed run (the steady state between two model swaps)."""

FEEDBACK_LUA = """
local counter = 0
local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("tid", "%RUN%-" .. threads)
end
request = function()
  counter = counter + 1
  local body = string.format('{"user_id": %USER%, "item_id": %ITEM%, "event": "view", "event_id": "bench-%s-%d"}',
    (counter %% %USERS%) + 1, tid, counter)
  return wrk.format("POST", "/feedback", {["Content-Type"] = "application/json"}, body)
end
"""


def feedback_script(item: str, run: str, users: int, user_format: str = "%d") -> str:
    """wrk script posting unique ``view`` events (ids ``bench-RUN-THREAD-N``) of users 1..``users`` on
    ``item`` (a JSON literal: ``5`` or ``"bk-5"``); ``user_format`` is the Lua format of a user id's JSON
    (``%d``, or ``"u-%d"`` for string ids)."""
    script = FEEDBACK_LUA.replace("%USER%", user_format).replace("%ITEM%", item).replace("%USERS%", str(users))
    return script.replace("%RUN%", run).replace("%%", "%")


PING_LUA = """
wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Content-Type"] = "application/json"
"""

BARE_APP = textwrap.dedent(
    """
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def ping(request):
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/ping", ping, methods=["POST"])])
    """
)


def parse_wrk(output: str) -> dict:
    """req/s, p50, p99 (ms), total requests and errors from ``wrk --latency`` output."""

    def ms(token: str) -> float:
        value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)\w*", token).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]

    requests_done = int(re.search(r"(\d+) requests in", output).group(1))
    non_2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", output)) else 0
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    socket_errors = sum(int(g) for g in socket.groups()) if socket else 0
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        "p50_ms": ms(re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE).group(1)),
        "p99_ms": ms(re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE).group(1)),
        "requests": requests_done,
        "errors": non_2xx + socket_errors,
        "ok": requests_done - non_2xx,
    }


def run_wrk(url: str, script: str, connections: int, seconds: int, threads: int = 2) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    try:
        command = ["wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
        command += ["--latency", "-s", handle.name, url]
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    finally:
        os.unlink(handle.name)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr}")
    try:
        return parse_wrk(done.stdout)
    except (AttributeError, ValueError) as exc:
        raise RuntimeError(f"cannot parse wrk output ({exc}):\n{done.stdout}\n{done.stderr}") from exc


def tree_rss_mb(proc: ManagedProcess) -> tuple[float, float]:
    """(RSS of the largest process, RSS of the whole tree) in MB."""
    sizes = []
    for p in proc.tree():
        try:
            sizes.append(p.memory_info().rss / 2**20)
        except psutil.NoSuchProcess:
            pass
    return max(sizes, default=0.0), sum(sizes)


def build_champion(data_root: Path) -> None:
    from components.pipeline import run_pipeline
    from components.settings import load_settings

    print(f"building a champion on the full ml-latest-small in {data_root} (several minutes)...", flush=True)
    print(run_pipeline(load_settings(data_root=data_root, train={"bootstrap_samples": 200})), flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, help="a data root with a registered champion (built when absent)")
    parser.add_argument("--seconds", type=int, default=10, help="duration of each wrk run")
    parser.add_argument("--warm-up", type=int, default=4, help="duration of the warm-up before each run")
    parser.add_argument(
        "--users",
        type=int,
        default=610,
        help="/recommend picks user ids uniformly from 1..USERS (610 in ml-latest-small)",
    )
    parser.add_argument("--connections", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--ab-rounds", type=int, default=3, help="alternations of the impression-log A/B")
    parser.add_argument("--skip-unbatched", action="store_true", help="skip the scored run with micro-batching off")
    parser.add_argument(
        "--ab-only",
        action="store_true",
        help="only the impression-log A/B (written to serving_ab.json unless --out is given)",
    )
    parser.add_argument("--out", type=Path, help="where the results go (default benchmarks/results/serving.json)")
    return parser.parse_args()


def print_run(name: str, connections: int, numbers: dict) -> None:
    print(
        f"{name:40s} c={connections:3d} {numbers['rps']:9.1f} req/s p50 {numbers['p50_ms']:7.2f} ms "
        f"p99 {numbers['p99_ms']:7.2f} ms errors {numbers['errors']}",
        flush=True,
    )


def throughput_runs(bento: BentoServer, bare_port: int, recommend: str, sweep: str, args, results: dict) -> None:
    """/recommend (ranking cached, then scored), BentoML's /ping and bare Starlette's, at each connection count."""
    scored = recommend.replace('"k": 10}', '"k": 10, "exclude_seen": false}')
    targets = [
        ("/recommend (real champion, ranking cached)", f"{bento.base}/recommend", recommend, sweep),
        ("/recommend (real champion, scored per request)", f"{bento.base}/recommend", scored, None),
        ("/ping (BentoML, trivial async)", f"{bento.base}/ping", PING_LUA, None),
        ("/ping (bare Starlette, uvicorn)", f"http://127.0.0.1:{bare_port}/ping", PING_LUA, None),
    ]
    for connections in args.connections:
        for name, url, script, warm_up in targets:
            run_wrk(url, warm_up or script, connections, args.warm_up)
            numbers = run_wrk(url, script, connections, args.seconds)
            results["runs"].append({"target": name, "connections": connections, **numbers})
            print_run(name, connections, numbers)


def feedback_runs(bento: BentoServer, feedback_db: Path, item, args, results: dict) -> None:
    """Unique /feedback events as fast as possible; the store counted afterwards."""
    from components.feedback.store import FeedbackStore

    store = FeedbackStore(f"sqlite:///{feedback_db}")
    for connections in args.connections:
        before = store.count()
        run = f"c{connections}-{os.getpid()}-{int(time.time())}"
        script = feedback_script(str(item), run, 600)
        numbers = run_wrk(f"{bento.base}/feedback", script, connections, args.seconds)
        time.sleep(1)
        stored = store.count() - before
        lost = max(0, numbers["ok"] - stored)
        target = "/feedback (durable, group commit)"
        run_result = {"target": target, "connections": connections, **numbers, "stored": stored, "lost": lost}
        results["runs"].append(run_result)
        print(
            f"/feedback c={connections:3d} {numbers['rps']:9.1f} events/s p50 {numbers['p50_ms']:7.2f} ms "
            f"p99 {numbers['p99_ms']:7.2f} ms 2xx {numbers['ok']} stored {stored} lost {lost}",
            flush=True,
        )


def impression_ab_runs(bento: BentoServer, env: dict, work: Path, recommend: str, sweep: str, args, results) -> None:
    """The impression log's cost: a second service with ``serving.impressions: off`` beside the first, and
    /recommend (cached, then scored) alternated between the two, ``--ab-rounds`` times at 16 connections, so
    both see the same load; the medians and their ratio go into the results."""
    import statistics

    off_env = {**env, "LMRECSYS_SERVING__IMPRESSIONS": "off", "LMRECSYS_FEEDBACK__URL": f"sqlite:///{work}/ab-off.db"}
    unlogged = BentoServer(off_env, work / "bento-unlogged", PROJECT_ROOT)
    unlogged.wait_ready(timeout=300)
    try:
        scored = recommend.replace('"k": 10}', '"k": 10, "exclude_seen": false}')
        servers = {"on": bento, "off": unlogged}
        for server in servers.values():
            run_wrk(f"{server.base}/recommend", sweep, 16, args.warm_up)
        seen: dict = {}
        for _ in range(args.ab_rounds):
            for kind, script in (("ranking cached", recommend), ("scored per request", scored)):
                for log_mode, server in servers.items():
                    numbers = run_wrk(f"{server.base}/recommend", script, 16, args.seconds)
                    seen.setdefault((kind, log_mode), []).append(numbers)
                    print_run(f"/recommend ({kind}, impression log {log_mode})", 16, numbers)
        summary = {}
        for kind in ("ranking cached", "scored per request"):
            on = statistics.median(n["rps"] for n in seen[(kind, "on")])
            off = statistics.median(n["rps"] for n in seen[(kind, "off")])
            p99 = {m: statistics.median(n["p99_ms"] for n in seen[(kind, m)]) for m in ("on", "off")}
            summary[kind] = {
                "rps_on": on,
                "rps_off": off,
                "ratio": on / off,
                "p99_on": p99["on"],
                "p99_off": p99["off"],
            }
            print(f"impression log, {kind}: {on:.0f} vs {off:.0f} req/s ({on / off:.2f}x), p99 {p99}", flush=True)
        results["impression_log_ab"] = {"rounds": args.ab_rounds, "connections": 16, "summary": summary}
    finally:
        unlogged.stop()


def unbatched_runs(env: dict, work: Path, recommend: str, args, results: dict) -> None:
    """The same scored requests with micro-batching off, right after."""
    unbatched = BentoServer({**env, "LMRECSYS_SERVING__BATCH_SCORING": "false"}, work / "bento-unbatched", PROJECT_ROOT)
    unbatched.wait_ready(timeout=300)
    try:
        scored = recommend.replace('"k": 10}', '"k": 10, "exclude_seen": false}')
        for connections in args.connections:
            run_wrk(f"{unbatched.base}/recommend", scored, connections, args.warm_up)
            numbers = run_wrk(f"{unbatched.base}/recommend", scored, connections, args.seconds)
            name = "/recommend (real champion, scored per request, micro-batching off)"
            results["runs"].append({"target": name, "connections": connections, **numbers})
            print_run(name, connections, numbers)
    finally:
        unbatched.stop()


def main() -> None:
    args = parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk")

    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    data_root = args.data_root or work / "data"
    if args.data_root is None:
        build_champion(data_root)
    feedback_db = work / "feedback.db"
    env = {
        "LMRECSYS_DATA_ROOT": str(data_root),
        "LMRECSYS_FEEDBACK__URL": f"sqlite:///{feedback_db}",
        "LMRECSYS_SERVING__POLL_INTERVAL_S": "3600",
    }
    bento = BentoServer(env, work / "bento", PROJECT_ROOT).wait_ready(timeout=300)
    bare_port = free_port()
    (work / "bare_app.py").write_text(BARE_APP)
    uvicorn = ["-m", "uvicorn", "bare_app:app", "--host", "127.0.0.1", "--port", str(bare_port)]
    bare = ManagedProcess(
        "bare-starlette",
        [sys.executable, *uvicorn, "--no-access-log", "--log-level", "warning"],
        {**os.environ},
        work / "bare",
        cwd=work,
    )
    memory_gib = round(psutil.virtual_memory().total / 2**30)
    results: dict = {
        "machine": f"{cpu_model()}, {psutil.cpu_count()}-core CPU, {memory_gib} GiB",
        "date": utc_minute(),
        "python": platform.python_version(),
        "runs": [],
    }
    try:
        wait_for(
            lambda: requests.post(f"http://127.0.0.1:{bare_port}/ping", timeout=2).ok,
            30,
            what="bare starlette",
            procs=[bare],
        )
        info = requests.get(f"{bento.base}/info", timeout=10).json()
        probe = requests.post(f"{bento.base}/recommend", json={"user_id": 999_999, "k": 1}, timeout=10).json()
        item = probe["items"][0]["item_id"]
        results["model"] = info
        recommend = RECOMMEND_LUA.replace("%USERS%", str(args.users))
        sweep = SWEEP_LUA.replace("%USERS%", str(args.users)).replace("%%", "%")
        if not args.ab_only:
            throughput_runs(bento, bare_port, recommend, sweep, args, results)
        impression_ab_runs(bento, env, work, recommend, sweep, args, results)
        if args.ab_only:
            return finish(results, args.out or RESULTS / "serving_ab.json")
        results["rss_mb_worker"], results["rss_mb_tree"] = tree_rss_mb(bento)
        feedback_runs(bento, feedback_db, item, args, results)
        results["rss_mb_worker_after_feedback"], results["rss_mb_tree_after_feedback"] = tree_rss_mb(bento)
        print(
            f"service RSS: largest process {results['rss_mb_worker']:.0f} MB, "
            f"whole tree {results['rss_mb_tree']:.0f} MB",
            flush=True,
        )
    finally:
        bento.stop()
        bare.stop()
    if not args.skip_unbatched:
        unbatched_runs(env, work, recommend, args, results)
    finish(results, args.out or RESULTS / "serving.json")


def finish(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
