"""Faults survived: crashes, store restarts, a full disk and hostile clients against a real ``bentoml serve``.

The full form of the fault tier (tests/faults/, which runs the smallest form of each):

- ``kill -9`` of the whole serving tree mid-write, several rounds: every acknowledged event stored;
- the feedback store's PostgreSQL (a private server) restarted under feedback load, fast and immediate;
- a full disk (``RLIMIT_FSIZE``) during ingest (the ``lmrecsys`` CLI), training and feedback writes;
- a battery of hostile requests (10,000 by default) of every kind in ``tests/faults/hostile.py``,
  then schemathesis over the whole OpenAPI schema; then the next pipeline run must register a version.

The champion is trained on the fault tier's small hand-written catalogue (seconds), so the figures
are about the service and its stores, not the model.

    python -m benchmarks.faults                      # writes docs/benchmarks/faults.md
    python -m benchmarks.faults --hostile 1000 --examples 10 --out /tmp/faults.md   # a quick run
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import quiet_environment, utc_minute

quiet_environment()

from components.settings import PROJECT_ROOT  # noqa: E402
from tests.faults.catalogue import build_small_champion, run_small_pipeline, small_env, small_settings  # noqa: E402
from tests.faults.conftest import serve  # noqa: E402
from tests.faults.disk import (  # noqa: E402
    INGEST_LIMIT,
    TRAIN_LIMIT,
    candidate_folders_complete,
    champion_version,
    cli_pipeline_run,
    hidden_entries,
    says_disk_full,
    set_tree_limit,
    train_stage,
    visible_entries,
)
from tests.faults.hostile import KINDS, run_battery, run_schemathesis  # noqa: E402
from tests.faults.postgres import PrivatePostgres, unavailable  # noqa: E402
from tests.faults.traffic import FeedbackPump, stored_event_ids  # noqa: E402
from tests.harness import restored_mlflow_state, wait_for  # noqa: E402

COLUMNS = ["fault", "load held", "faults survived", "bad inputs tried", "events lost", "notes"]


def cpu_line() -> str:
    """``<model name> × <cores>`` from /proc/cpuinfo."""
    with open("/proc/cpuinfo") as info:
        names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
    return f"{names[0] if names else 'unknown CPU'}, {os.cpu_count()} cores"


def lost(url: str, pump: FeedbackPump) -> tuple[int, int]:
    """(acknowledged, acknowledged but not in the store)."""
    acknowledged = pump.acknowledged()
    return len(acknowledged), len(set(acknowledged) - stored_event_ids(url, acknowledged))


def rate(pump: FeedbackPump) -> str:
    outcomes = pump.snapshot()
    seconds = max(o.done for o in outcomes) - min(o.sent for o in outcomes)
    acked = len(pump.acknowledged())
    return f"{acked:,} events acknowledged ({acked / seconds:,.0f}/s over {seconds:.0f} s, 4 threads)"


def kill9_rounds(root: Path, work: Path, rounds: int) -> dict:
    """``rounds`` times: serve, post feedback from 4 threads, ``kill -9`` the tree after a few hundred acks."""
    url = f"sqlite:///{work / 'kill9.db'}"
    acknowledged, started = [], time.monotonic()
    for n in range(rounds):
        server = serve(root, work / f"bento-kill9-{n}", url)
        pump = FeedbackPump(server.base, f"kill9-{n}", threads=4).start()
        pump.wait_acknowledged(300 + 200 * n, timeout=120)
        server.kill9()
        pump.stop()
        acknowledged += pump.acknowledged()
    server = serve(root, work / "bento-kill9-after", url)  # the store opens again after the last crash
    server.stop()
    missing = len(set(acknowledged) - stored_event_ids(url, acknowledged))
    seconds = time.monotonic() - started
    return {
        "fault": f"`kill -9` of the serving tree mid-write, {rounds} rounds (SQLite WAL)",
        "load held": f"{len(acknowledged):,} events acknowledged in {seconds:.0f} s, 4 threads",
        "faults survived": f"{rounds}/{rounds} (the store reopens, the service starts)",
        "bad inputs tried": "—",
        "events lost": missing,
        "notes": "4 client threads posting when the tree is killed; acknowledged = got a 2xx",
    }


def postgres_restarts(root: Path, work: Path, restarts: int) -> dict:
    """One service on a private PostgreSQL, restarted ``restarts`` times under load (the last one ``immediate``)."""
    if reason := unavailable():
        return {"fault": "PostgreSQL restart under load", "notes": f"skipped: {reason}"}
    pg = PrivatePostgres(work / "pg").start()
    server = serve(root, work / "bento-pg", pg.url)
    pump = FeedbackPump(server.base, "pg", threads=4).start()
    recoveries, downtimes = [], []
    try:
        pump.wait_acknowledged(200, timeout=60)
        for n in range(restarts):
            mode = "immediate" if n == restarts - 1 else "fast"
            began, back = pg.restart(mode)
            downtimes.append(back - began)
            wait_for(lambda back=back: pump.first_ok_after(back), 30, interval=0.05, what="a 2xx after the restart")
            recoveries.append(pump.first_ok_after(back) - back)
            time.sleep(2)
        pump.stop()
        acked, missing = lost(pg.url, pump)
    finally:
        pump.stop()
        server.stop()
        pg.close()
    statuses = pump.statuses()
    others = {s: n for s, n in statuses.items() if not 200 <= s < 300 and s != 503}
    return {
        "fault": f"PostgreSQL restart under load, {restarts} times (the last `-m immediate`: crash recovery)",
        "load held": rate(pump),
        "faults survived": f"{len(recoveries)}/{restarts}; each restart {min(downtimes):.2f}–{max(downtimes):.2f} s, "
        f"first 2xx at most {max(recoveries):.2f} s after the server was back",
        "bad inputs tried": "—",
        "events lost": missing,
        "notes": f"{statuses.get(503, 0)} answers 503 (retry with the same event_id)"
        + (f"; other failures {others}" if others else ""),
    }


def disk_full_feedback(root: Path, work: Path, seconds: float) -> dict:
    """The serving tree may not write past 4 KiB in any file for ``seconds``, then space is freed."""
    url = f"sqlite:///{work / 'disk.db'}"
    server = serve(root, work / "bento-disk", url)
    pump = FeedbackPump(server.base, "disk", threads=4).start()
    try:
        pump.wait_acknowledged(200, timeout=60)
        pids = [p.pid for p in server.tree()]
        set_tree_limit(pids, 4096)
        full = time.monotonic()
        time.sleep(seconds)
        set_tree_limit(pids, None)
        freed = time.monotonic()
        wait_for(lambda: pump.first_ok_after(freed), 30, interval=0.05, what="a 2xx once space is freed")
        time.sleep(1)
        pump.stop()
        alive = server.alive()
        acked, missing = lost(url, pump)
    finally:
        pump.stop()
        server.stop()
    during = [o for o in pump.snapshot() if full + 0.5 <= o.sent and o.done <= freed]
    refused = sum(o.status == 503 for o in during)
    return {
        "fault": f"disk full for {seconds:.0f} s during feedback writes (serving, SQLite)",
        "load held": rate(pump),
        "faults survived": f"{'1/1' if alive else '0/1'}; first 2xx {pump.first_ok_after(freed) - freed:.2f} s after",
        "bad inputs tried": "—",
        "events lost": missing,
        "notes": f"{refused} of {len(during)} requests while full answered 503, "
        f"other statuses {sorted({o.status for o in during} - {503}) or 'none'}",
    }


def disk_full_pipeline(work: Path) -> list[dict]:
    """A full disk during ingest (the CLI) and during training, then the pipeline run once space is freed."""
    from components.feedback.store import FeedbackEvent, FeedbackStore

    root = work / "disk-pipeline" / "data"
    with restored_mlflow_state():
        source, _ = build_small_champion(root)
    settings = small_settings(root, source)
    champion = champion_version(settings)
    store = FeedbackStore(settings.feedback_url)
    store.append(
        [FeedbackEvent(str(1000 + n), str(1 + n % 30), "view", None, 1.6e9 + n, f"d-{n}") for n in range(20_000)]
    )
    store.close()
    snapshots = visible_entries(settings.snapshots_dir)
    ingest = cli_pipeline_run(small_env(root, source), INGEST_LIMIT)
    one_line = "error: " in ingest.stderr and "Traceback" not in ingest.stderr
    ingest_ok = visible_entries(settings.snapshots_dir) == snapshots and not hidden_entries(settings.snapshots_dir)
    (snapshot_id,) = snapshots
    embeddings = next((settings.embeddings_dir / snapshot_id).iterdir())
    train = train_stage(small_env(root, source), snapshot_id, str(embeddings), "disk-full", TRAIN_LIMIT)
    run = settings.runs_dir / "disk-full"
    folders = candidate_folders_complete(run)
    train_ok = set(folders.values()) <= {"ok"} and not hidden_entries(run) and not (run / "bundle").exists()
    unchanged = champion_version(settings) == champion
    decision = run_small_pipeline(root, source, "space-freed")
    common = {"load held": "—", "bad inputs tried": "—", "events lost": "—"}
    return [
        {
            "fault": "disk full during ingest (`lmrecsys pipeline run`, 128 KiB per file)",
            **common,
            "faults survived": "1/1" if ingest.returncode != 0 and ingest_ok and unchanged else "0/1",
            "notes": f"exit {ingest.returncode}, names the write: {says_disk_full(ingest.stderr)}, one-line error: "
            f"{one_line}; no partial snapshot: {ingest_ok}; champion unchanged: {unchanged}",
        },
        {
            "fault": "disk full during training (the train stage, 256 KiB per file)",
            **common,
            "faults survived": "1/1" if train.returncode != 0 and train_ok and unchanged else "0/1",
            "notes": f"exit {train.returncode}, names the write: {says_disk_full(train.stderr)}; candidate folders "
            f"{folders} (whole or absent), no bundle; champion unchanged; space freed: the next run registered "
            f"version {decision['version']} ({decision['decision']})",
        },
    ]


def hostile(root: Path, source: Path, work: Path, n: int, examples: int) -> tuple[list[dict], dict]:
    """The hostile battery and schemathesis against one service, then the next pipeline run."""
    server = serve(root, work / "bento-hostile", f"sqlite:///{root / 'feedback.db'}")
    try:
        started = time.monotonic()
        battery = run_battery(server.base, n)
        battery_s = time.monotonic() - started
        checked, failures = run_schemathesis(server.base, examples)
        alive = server.alive()
    finally:
        server.stop()
    decision = run_small_pipeline(root, source, "after-hostile")
    kinds = {kind: dict(sorted(counts.items())) for kind, counts in battery.by_kind.items()}
    rows = [
        {
            "fault": f"hostile battery: {len(KINDS)} kinds of bad request",
            "load held": f"{battery.total:,} requests in {battery_s:.0f} s "
            f"({battery.total / battery_s:,.0f}/s, 8 threads)",
            "faults survived": f"service up: {alive}; next pipeline run registered version {decision['version']}",
            "bad inputs tried": f"{battery.count(400, 500):,} answered 4xx, {battery.count(200, 300):,} 2xx",
            "events lost": "—",
            "notes": f"{battery.count(500, 600)} answered 5xx, {battery.connection_errors} connection errors",
        },
        {
            "fault": f"schemathesis over /docs.json (every operation but /admin, {examples} examples each)",
            "load held": f"{checked:,} generated requests",
            "faults survived": f"service up: {alive}",
            "bad inputs tried": f"{checked:,}",
            "events lost": "—",
            "notes": f"{len(failures)} answered 5xx" + (f": {failures[:3]}" if failures else ""),
        },
    ]
    return rows, {"kinds": kinds, "server_errors": battery.server_errors[:20], "schemathesis_failures": failures[:20]}


def markdown(rows: list[dict], extra: dict, args: argparse.Namespace, seconds: float) -> str:
    lines = [
        "# Faults survived",
        "",
        f"Command: `{args.command}` · machine: {cpu_line()} · date: {utc_minute()} · whole run {seconds / 60:.1f} min",
        "",
        "The champion is trained on the fault tier's small hand-written catalogue (tests/faults/catalogue.py);",
        "the service is a real `bentoml serve`, the stores real SQLite files and a private PostgreSQL server.",
        "A full disk is simulated with `RLIMIT_FSIZE` (writes past the limit fail with EFBIG, as ENOSPC would).",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in COLUMNS) + " |" for row in rows]
    lines += ["", "## The hostile battery by kind", "", "| kind | answers by status |", "|---|---|"]
    lines += [f"| {kind} | {counts} |" for kind, counts in sorted(extra["kinds"].items())]
    if extra["server_errors"] or extra["schemathesis_failures"]:
        lines += ["", "## 5xx answers (first 20)", ""]
        lines += [f"- `{e}`" for e in extra["server_errors"] + extra["schemathesis_failures"]]
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hostile", type=int, default=10_000, help="hostile requests in the battery")
    parser.add_argument("--examples", type=int, default=100, help="schemathesis examples per operation")
    parser.add_argument("--kill-rounds", type=int, default=3, help="kill -9 rounds")
    parser.add_argument("--pg-restarts", type=int, default=3, help="PostgreSQL restarts under load")
    parser.add_argument("--disk-full-s", type=float, default=5.0, help="how long the disk stays full for serving")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs" / "benchmarks" / "faults.md")
    args = parser.parse_args()
    defaults = parser.parse_args([])
    changed = [f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v != getattr(defaults, k)]
    args.command = " ".join(["python -m benchmarks.faults", *changed])
    return args


def main() -> None:
    args = parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lmrecsys-faults-") as tmp:
        work = Path(tmp)
        root = work / "champion" / "data"
        with restored_mlflow_state():
            source, _ = build_small_champion(root)
        rows = [kill9_rounds(root, work, args.kill_rounds), postgres_restarts(root, work, args.pg_restarts)]
        rows.append(disk_full_feedback(root, work, args.disk_full_s))
        rows += disk_full_pipeline(work)
        hostile_rows, extra = hostile(root, source, work, args.hostile, args.examples)
        rows += hostile_rows
    text = markdown(rows, extra, args, time.monotonic() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
