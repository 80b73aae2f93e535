"""Which model the default candidate set crowns on a catalogue loaded through the generic contract.

ml-latest-small is rewritten, in a temporary folder, into the generic data contract
(docs/data-contract.md): string ids (``m-<movieId>``, ``u-<userId>``), genres as ``categories``,
the movie's tags as ``tags``, ratings as ``rating`` events with ISO timestamps. The whole pipeline
then runs in-process with the default settings (default candidates, one fit each) on a fresh data
root, and the gate's decision is reported with every candidate's validation and test NDCG@10.

    python -m benchmarks.bench_generic_default [--movielens DIR] [--max-users N] [--out docs/benchmarks/generic.md]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine_summary, quiet_environment, utc_minute

quiet_environment()

import pandas as pd  # noqa: E402

from components.models import MODEL_REGISTRY  # noqa: E402
from components.pipeline import run_pipeline  # noqa: E402
from components.settings import LOCAL_MOVIELENS, load_settings  # noqa: E402


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


def candidate_rows(report: dict) -> list[tuple]:
    """(name, uses text, validation NDCG@10 with its interval, test NDCG@10 with its interval) per candidate."""
    rows = []
    for name, entry in report["candidates"].items():
        val, test = entry["val"], entry["test"]
        rows.append(
            (
                name,
                MODEL_REGISTRY[name].uses_text,
                val["ndcg_at_10"],
                val["ndcg_at_10_low"],
                val["ndcg_at_10_high"],
                test["ndcg_at_10"],
                test["ndcg_at_10_low"],
                test["ndcg_at_10_high"],
            )
        )
    return rows


def markdown_lines(result: dict, seconds: float) -> list[str]:
    lines = [
        f"champion: {result['champion']} (uses the language model: {result['champion_uses_text']}); "
        f"decision {result['decision']}; pipeline {seconds:.0f} s",
        "",
        "| candidate | uses text | validation NDCG@10 | test NDCG@10 |",
        "|---|---|---|---|",
    ]
    for name, text, val, val_lo, val_hi, test, test_lo, test_hi in result["rows"]:
        lines.append(
            f"| {name} | {'yes' if text else 'no'} | {val:.4f} [{val_lo:.4f}, {val_hi:.4f}] "
            f"| {test:.4f} [{test_lo:.4f}, {test_hi:.4f}] |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--movielens", type=Path, default=LOCAL_MOVIELENS)
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
    champion = decision.get("model_kind")
    result = {
        "date": utc_minute(),
        "machine": machine_summary(),
        "candidates": settings.train.candidates,
        "decision": decision.get("decision"),
        "champion": champion,
        "champion_uses_text": MODEL_REGISTRY[decision["model_kind"]].uses_text if champion else None,
        "pipeline_seconds": round(seconds, 1),
        "rows": candidate_rows(report),
    }
    lines = markdown_lines(result, seconds)
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
