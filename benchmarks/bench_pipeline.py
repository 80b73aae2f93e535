"""Benchmark: in-process pipeline wall time per stage, and `bentoml serve` start-up time.

    .venv/bin/python -m benchmarks.bench_pipeline [--max-users N] [--out docs/benchmarks/pipeline.md]

The first pipeline run encodes every item; the second (same data plus a few feedback events) hits
the embedding cache, which is what a feedback-triggered retrain costs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.common import peak_rss_mb, quiet_environment, vm_summary

quiet_environment(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")

from components.settings import PROJECT_ROOT  # noqa: E402


def timed_run(settings, run_key: str) -> dict:
    from components import pipeline

    times, started = {}, time.perf_counter()

    def step(name, fn, *args):
        t = time.perf_counter()
        out = fn(*args)
        times[name] = round(time.perf_counter() - t, 2)
        return out

    snapshot_id = step("ingest", pipeline.stage_ingest, settings)
    step("validate", pipeline.stage_validate, settings, snapshot_id)
    embeddings = step("embed", pipeline.stage_embed, settings, snapshot_id)
    run_dir = step("train", pipeline.stage_train, settings, snapshot_id, embeddings, run_key)
    report = step("evaluate", pipeline.stage_evaluate, settings, run_dir)
    registration = step("register", pipeline.stage_register, settings, report)
    decision = step("promote", pipeline.stage_promote, settings, registration)
    times["total"] = round(time.perf_counter() - started, 2)
    return {
        "stages_s": times,
        "decision": decision["decision"],
        "version": decision["version"],
        "model": decision["model_kind"],
    }


def service_start(data_root: Path) -> float:
    from devtools.stack import BentoServer

    started = time.perf_counter()
    server = BentoServer({"LMRECSYS_DATA_ROOT": str(data_root)}, data_root / "logs", PROJECT_ROOT)
    try:
        server.wait_ready(timeout=300)
        return round(time.perf_counter() - started, 2)
    finally:
        server.stop()


def markdown(result: dict, max_users: int | None, candidates: list[str]) -> str:
    first, second, start_s = result["first"], result["incremental"], result["service_start_s"]
    stages = list(first["stages_s"])
    users_flag = f" --max-users {max_users}" if max_users else ""
    lines = [
        "# Pipeline wall time and service start",
        "",
        f"Command: `.venv/bin/python -m benchmarks.bench_pipeline{users_flag}` · "
        f"machine: {vm_summary()} · candidates: {', '.join(candidates)} · "
        f"data: ml-latest-small{' (first ' + str(max_users) + ' users)' if max_users else ''}.",
        "In-process stage functions (what each Airflow task calls), without Airflow's own overhead.",
        "",
        "| run | " + " | ".join(stages) + " |",
        "|---|" + "---|" * len(stages),
        "| first (encodes every item) | " + " | ".join(str(first["stages_s"][s]) for s in stages) + " |",
        "| incremental (5 feedback events, embedding cache hit) | "
        + " | ".join(str(second["stages_s"][s]) for s in stages)
        + " |",
        "",
        f"`bentoml serve` from start to `/readyz` 200 with the champion loaded: **{start_s} s**. "
        f"Peak RSS of the pipeline process: {result['peak_rss_mb']} MB.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-users", type=int, default=None)
    parser.add_argument("--out", default=str(PROJECT_ROOT / "docs" / "benchmarks" / "pipeline.md"))
    args = parser.parse_args()
    from components.feedback.store import FeedbackEvent, FeedbackStore
    from components.settings import load_settings

    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(data_root=tmp, ingest={"max_users": args.max_users})
        first = timed_run(settings, "first")
        store = FeedbackStore(settings.feedback_url)
        store.append([FeedbackEvent("1", str(item), "like") for item in (1, 2, 3, 4, 5)])
        second = timed_run(settings, "second")
        start_s = service_start(Path(tmp))
    result = {"first": first, "incremental": second, "service_start_s": start_s, "peak_rss_mb": round(peak_rss_mb())}
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(markdown(result, args.max_users, settings.train.candidates))


if __name__ == "__main__":
    main()
