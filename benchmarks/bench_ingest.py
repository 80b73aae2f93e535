"""Benchmark: ingest + validate ml-latest-small end to end, and at 10× synthetic volume.

Each case runs in a fresh subprocess so its peak RSS is its own. Usage:

    .venv/bin/python -m benchmarks.bench_ingest [--scale 10] [--out docs/benchmarks/ingest.md]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Standard library only: a case's child process times its own imports, from run_case on.
from benchmarks.common import peak_rss_mb, quiet_environment, vm_summary


def run_case(source: str, data_root: str) -> dict:
    """Ingest and validate once (in this process); return timings and peak RSS."""
    started = time.perf_counter()
    quiet_environment()  # imports components.settings, which the timed imports below include anyway
    from components.ingest import ingest
    from components.settings import load_settings
    from components.validation.runner import validate_snapshot

    imported = time.perf_counter()
    settings = load_settings(data_root=data_root, ingest={"source": source})
    snapshot = ingest(settings)
    ingested = time.perf_counter()
    validate_snapshot(settings, snapshot)
    validated = time.perf_counter()
    return {
        "interactions": snapshot.manifest["row_counts"]["interactions"],
        "items": snapshot.manifest["row_counts"]["items"],
        "import_s": round(imported - started, 2),
        "ingest_s": round(ingested - imported, 2),
        "validate_s": round(validated - ingested, 2),
        "total_s": round(validated - started, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def synthesise(source: Path, scale: int, target: Path) -> Path:
    """ml-latest-small with every user copied ``scale`` times under new ids (same items and tags)."""
    import pandas as pd

    ratings = pd.read_csv(source / "ratings.csv")
    max_user = int(ratings["userId"].max())
    copies = [ratings.assign(userId=ratings["userId"] + k * max_user) for k in range(scale)]
    target.mkdir(parents=True, exist_ok=True)
    pd.concat(copies).to_csv(target / "ratings.csv", index=False)
    for name in ("movies.csv", "tags.csv"):
        (target / name).write_bytes((source / name).read_bytes())
    return target


def markdown(results: dict, scale: int) -> str:
    lines = [
        "# Ingest and validate",
        "",
        f"Command: `.venv/bin/python -m benchmarks.bench_ingest --scale {scale}` · machine: {vm_summary()}. "
        "Each case in a fresh process; total includes importing pandas, pyarrow and Great Expectations.",
        "",
        "| case | interactions | items | import s | ingest s | validate s | total s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['interactions']:,} | {r['items']:,} | {r['import_s']} | {r['ingest_s']} "
            f"| {r['validate_s']} | {r['total_s']} | {r['peak_rss_mb']} |"
        )
    small, big = list(results.values())
    rows = big["interactions"] / small["interactions"]
    time_ratio = (big["ingest_s"] + big["validate_s"]) / max(small["ingest_s"] + small["validate_s"], 1e-9)
    lines += [
        "",
        f"Scaling: {rows:.1f}× the rows took {time_ratio:.1f}× the ingest + validate time (linear, nothing quadratic).",
        "",
        "```json",
        json.dumps(results, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", nargs=2, metavar=("SOURCE", "DATA_ROOT"), help=argparse.SUPPRESS)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--source", default=os.environ.get("LMRECSYS_INGEST__SOURCE"))
    parser.add_argument("--out", default=None, help="the Markdown report (default: docs/benchmarks/ingest.md)")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(*args.case)))
        return
    quiet_environment()
    from components.settings import PROJECT_ROOT, load_settings

    source = Path(args.source or load_settings().resolved_source())
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        synthetic = synthesise(source, args.scale, Path(tmp) / "synthetic")
        cases = {"ml-latest-small": source, f"{args.scale}x synthetic": synthetic}
        for name, folder in cases.items():
            data_root = str(Path(tmp) / f"root-{len(results)}")
            command = [sys.executable, "-m", "benchmarks.bench_ingest", "--case", str(folder), data_root]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
            print(name, results[name], flush=True)
    out = Path(args.out) if args.out else PROJECT_ROOT / "docs" / "benchmarks" / "ingest.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(results, args.scale))


if __name__ == "__main__":
    main()
