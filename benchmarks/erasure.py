"""Benchmark: how long forgetting a user takes, from the request to a clean audit, on ml-latest-small.

    .venv/bin/python -m benchmarks.erasure [--user 1] [--max-users N] [--out docs/benchmarks/erasure.md]

A first pipeline run builds a champion (not timed). Then, timed: ``forget`` (the store forgets at
once), the feedback trigger, the erasure's pipeline run (cold training, the gate's erasure override,
the purge), and the audit, which must find the user nowhere.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine_facts, movielens_dir, quiet_environment

quiet_environment(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")


def measure(root: Path, user: str, max_users: int | None) -> dict:
    from components.feedback.trigger import claim_trigger
    from components.pipeline import run_pipeline
    from components.privacy import audit_user, forget_user
    from components.settings import load_settings

    ingest = {"source": str(movielens_dir(require=True)), **({"max_users": max_users} if max_users else {})}
    settings = load_settings(data_root=root, ingest=ingest)
    started = time.perf_counter()
    first = run_pipeline(settings, "baseline")
    baseline_s = time.perf_counter() - started
    times = {}
    t0 = time.perf_counter()
    forgotten = forget_user(settings, user, "benchmark")
    times["forget (store clean)"] = time.perf_counter() - t0
    t = time.perf_counter()
    backlog = claim_trigger(settings)
    times["trigger"] = time.perf_counter() - t
    t = time.perf_counter()
    decision = run_pipeline(settings, "erasure")
    times["erasure run (ingest → promote → purge)"] = time.perf_counter() - t
    t = time.perf_counter()
    audit = audit_user(settings, user)
    times["audit"] = time.perf_counter() - t
    times["request → audit clean"] = time.perf_counter() - t0
    return {
        "baseline_run_s": round(baseline_s, 1),
        "baseline_model": first["model_kind"],
        "events_deleted": forgotten["events_deleted"],
        "trigger_due": backlog.due,
        "decision": decision["decision"],
        "reason": decision["reason"],
        "purge": decision.get("purge", {}),
        "audit_found": audit["found"],
        "times_s": {k: round(v, 2) for k, v in times.items()},
    }


def render(result: dict, facts: dict, command: str) -> str:
    rows = "\n".join(f"| {name} | {seconds:.2f} |" for name, seconds in result["times_s"].items())
    purge = result["purge"]
    return f"""# Erasure: request to a clean audit

Command: `{command}` · machine: {facts["cpu"]}, {facts["cores"]} cores, Python {facts["python"]} · date: {facts["date"]}

A first run built the champion ({result["baseline_model"]}, {result["baseline_run_s"]} s, not counted). Then:

| step | seconds |
|---|---|
{rows}

The erasure run's decision: **{result["decision"]}**, {result["reason"]}. The purge retired versions
{purge.get("versions_retired")}, deleted run folders {purge.get("run_folders_deleted")} and rewrote
{len(purge.get("snapshots_rewritten") or {})} snapshot(s). The audit then found the user in
{result["audit_found"]} place(s). The trigger was due at once: {result["trigger_due"]}.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--user", default="1")
    parser.add_argument("--max-users", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/erasure.md"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lmrecsys-erasure-") as tmp:
        result = measure(Path(tmp), args.user, args.max_users)
    command = "python -m benchmarks.erasure" + (f" --max-users {args.max_users}" if args.max_users else "")
    args.out.write_text(render(result, machine_facts(), command))
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
