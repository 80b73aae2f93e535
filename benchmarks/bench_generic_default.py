"""Which model the default candidate set crowns on a catalogue loaded through the generic contract.

ml-latest-small is rewritten, in a temporary folder, into the generic data contract
(docs/data-contract.md): string ids (``m-<movieId>``, ``u-<userId>``), genres as ``categories``,
the movie's tags as ``tags``, ratings as ``rating`` events with ISO timestamps. The whole pipeline
then runs in-process with the default settings (default candidates, one fit each) on a fresh data
root, and the gate's decision is reported with every candidate's validation and test NDCG@10.

    python benchmarks/bench_generic_default.py [--movielens DIR] [--max-users N] [--out docs/benchmarks/generic.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

for _name, _value in (("BENTOML_DO_NOT_TRACK", "True"), ("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "true"), ("GX_ANALYTICS_ENABLED", "False"), ("HF_HUB_OFFLINE", "1")):
    os.environ.setdefault(_name, _value)

import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from components.models import MODEL_REGISTRY  # noqa: E402
from components.pipeline import run_pipeline  # noqa: E402
from components.settings import load_settings  # noqa: E402

DEFAULT_MOVIELENS = ROOT.parent / "shared" / "data" / "movielens" / "ml-latest-small"


def write_generic(movielens: Path, folder: Path, max_users: int | None) -> tuple[Path, Path]:
    """ml-latest-small in the generic contract: items.csv and events.csv under ``folder``."""
    movies = pd.read_csv(movielens / "movies.csv")
    ratings = pd.read_csv(movielens / "ratings.csv")
    tags = pd.read_csv(movielens / "tags.csv")
    if max_users:
        ratings = ratings[ratings["userId"].isin(sorted(ratings["userId"].unique())[:max_users])]
    movie_tags = tags.groupby("movieId")["tag"].agg(lambda values: "|".join(dict.fromkeys(str(v) for v in values)))
    items = pd.DataFrame(
        {
            "item_id": "m-" + movies["movieId"].astype(str),
            "title": movies["title"],
            "categories": movies["genres"].replace("(no genres listed)", ""),
            "tags": movies["movieId"].map(movie_tags).fillna(""),
        }
    )
    events = pd.DataFrame(
        {
            "user_id": "u-" + ratings["userId"].astype(str),
            "item_id": "m-" + ratings["movieId"].astype(str),
            "timestamp": pd.to_datetime(ratings["timestamp"], unit="s", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "event": "rating",
            "value": ratings["rating"],
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    items.to_csv(folder / "items.csv", index=False)
    events.to_csv(folder / "events.csv", index=False)
    return folder / "items.csv", folder / "events.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--movielens", type=Path, default=DEFAULT_MOVIELENS)
    parser.add_argument("--max-users", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write a Markdown report (and .json next to it)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-generic-"))
    items_path, events_path = write_generic(args.movielens, work / "catalogue", args.max_users)
    settings = load_settings(
        data_root=work / "data",
        ingest={"source_format": "generic", "items_path": str(items_path), "interactions_path": str(events_path)},
    )
    started = time.perf_counter()
    decision = run_pipeline(settings)
    seconds = time.perf_counter() - started
    report = json.loads(next((work / "data" / "runs").glob("*/report.json")).read_text())
    rows = []
    for name, entry in report["candidates"].items():
        rows.append((name, MODEL_REGISTRY[name].uses_text, entry["val"]["ndcg_at_10"], entry["val"]["ndcg_at_10_low"], entry["val"]["ndcg_at_10_high"], entry["test"]["ndcg_at_10"], entry["test"]["ndcg_at_10_low"], entry["test"]["ndcg_at_10_high"]))
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}",
        "candidates": settings.train.candidates,
        "decision": decision.get("decision"),
        "champion": decision.get("model_kind"),
        "champion_uses_text": MODEL_REGISTRY[decision["model_kind"]].uses_text if decision.get("model_kind") else None,
        "pipeline_seconds": round(seconds, 1),
        "rows": rows,
    }
    lines = [
        f"champion: {result['champion']} (uses the language model: {result['champion_uses_text']}); decision {result['decision']}; pipeline {seconds:.0f} s",
        "",
        "| candidate | uses text | validation NDCG@10 | test NDCG@10 |",
        "|---|---|---|---|",
    ]
    for name, text, val, val_lo, val_hi, test, test_lo, test_hi in rows:
        lines.append(f"| {name} | {'yes' if text else 'no'} | {val:.4f} [{val_lo:.4f}, {val_hi:.4f}] | {test:.4f} [{test_lo:.4f}, {test_hi:.4f}] |")
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
