"""Benchmark: ingest + validate ml-latest-small end to end, and at 10× synthetic volume.

Each case runs in a fresh subprocess so its peak RSS is its own. Usage:

    .venv/bin/python benchmarks/bench_ingest.py [--scale 10] [--out docs/benchmarks/ingest.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run_case(source: str, data_root: str) -> dict:
    """Ingest and validate once (in this process); return timings and peak RSS."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    started = time.perf_counter()
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
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", nargs=2, metavar=("SOURCE", "DATA_ROOT"), help=argparse.SUPPRESS)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--source", default=os.environ.get("LMRECSYS_INGEST__SOURCE"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "ingest.md"))
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(*args.case)))
        return
    from components.settings import load_settings

    source = Path(args.source or load_settings().resolved_source())
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        cases = {"ml-latest-small": source, f"{args.scale}x synthetic": synthesise(source, args.scale, Path(tmp) / "synthetic")}
        for name, folder in cases.items():
            done = subprocess.run([sys.executable, __file__, "--case", str(folder), str(Path(tmp) / f"root-{len(results)}")], capture_output=True, text=True, check=True)
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
            print(name, results[name], flush=True)
    lines = [
        "# Ingest and validate",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_ingest.py --scale {args.scale}` · machine: {os.cpu_count()}-core CPU VM, "
        f"Python {platform.python_version()} · date: {time.strftime('%Y-%m-%d')}. Each case in a fresh process; "
        "total includes importing pandas, pyarrow and Great Expectations.",
        "",
        "| case | interactions | items | import s | ingest s | validate s | total s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['interactions']:,} | {r['items']:,} | {r['import_s']} | {r['ingest_s']} | {r['validate_s']} | {r['total_s']} | {r['peak_rss_mb']} |")
    small, big = list(results.values())
    lines += ["", f"Scaling: {big['interactions'] / small['interactions']:.1f}× the rows took {(big['ingest_s'] + big['validate_s']) / max(small['ingest_s'] + small['validate_s'], 1e-9):.1f}× the ingest + validate time (linear, nothing quadratic).", "", "```json", json.dumps(results, indent=2), "```", ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))


if __name__ == "__main__":
    main()
