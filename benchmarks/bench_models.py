"""Every candidate recommender on ml-latest-small, in one process, on the fixed protocol.

Run from the project root::

    python -m benchmarks.bench_models                      # writes docs/benchmarks/models.{md,json}
    python -m benchmarks.bench_models --device cpu --threads 2
    python -m benchmarks.bench_models --vectors item_vectors.npy --out-dir /some/folder

Data: ``$LMRECSYS_MOVIELENS`` or ``../shared/data/movielens/ml-latest-small``. Item text vectors
come from ``--vectors`` (a saved items × dim ``.npy`` aligned with the catalogue sorted by movie
id) or are encoded now with the project's encoder (timed apart, not part of training time).

For each candidate (popularity, lm_content, ease, sasrec, lm_sasrec) the model is fitted once on
the test-side training data of the fixed leave-last-out split (tuning and early stopping use each
user's validation item inside ``fit``) and scored on the test item: HR@10, NDCG@10, MRR@10 and
Recall@20 with 95% bootstrap intervals, coverage@10, the cold-start slice, train and inference
time. Then two second views: the sequential models on shuffled training order (the order
control) and every candidate on a global time split. Peak RSS is the process's high-water mark.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

from benchmarks.common import machine_summary, movielens_dir, peak_rss_mb, quiet_environment

quiet_environment()

import numpy as np  # noqa: E402

from components.data.atomic import atomic_write_text  # noqa: E402
from components.data.dataset import InteractionData, Split, leave_last_out  # noqa: E402
from components.data.sources import read_movielens  # noqa: E402
from components.evaluation.splits import evaluate_on_split, global_time_split, shuffled_split  # noqa: E402
from components.models import build_model  # noqa: E402
from components.settings import PROJECT_ROOT  # noqa: E402

CANDIDATES = ["popularity", "lm_content", "ease", "sasrec", "lm_sasrec"]
SEQUENTIAL = ["sasrec", "lm_sasrec"]
METRIC_KEYS = ("hr@10", "ndcg@10", "mrr@10", "recall@20")


def run_candidate(name: str, config: dict, split: Split, vectors: np.ndarray, *, samples: int, seed: int) -> dict:
    """Fit on the test-side training data, score the test items; metrics, times and model facts."""
    started = time.perf_counter()
    model = build_model(name, config).fit(split.test_train, vectors)
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    result = evaluate_on_split(model, split, "test", bootstrap_samples=samples, seed=seed)
    inference_seconds = time.perf_counter() - started
    row = {
        "model": name,
        "config": model.config.model_dump(),
        "users": result.users,
        "metrics": result.metrics,
        "intervals": {k: list(v) for k, v in result.intervals.items()},
        "coverage@10": result.coverage_at_10,
        "cold": result.cold,
        "cold_users": result.cold_users,
        "train_seconds": round(train_seconds, 2),
        "inference_seconds": round(inference_seconds, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    for attribute in ("chosen_l2", "best_epoch", "train_seconds_per_epoch"):
        if hasattr(model, attribute):
            row[attribute] = getattr(model, attribute)
    if hasattr(model, "validation_curve"):
        row["epochs_run"] = len(model.validation_curve)
    print(
        f"{name:>10}: HR@10 {result.metrics['hr@10']:.4f}  NDCG@10 {result.metrics['ndcg@10']:.4f}  "
        f"train {train_seconds:.1f}s",
        flush=True,
    )
    return row


def item_vectors(data_dir: Path, vectors_path: str | None) -> tuple[np.ndarray, float]:
    if vectors_path:
        return np.load(vectors_path), 0.0
    from components.data.columns import ITEM_COL
    from components.embed import item_texts, load_encoder

    started = time.perf_counter()
    items = read_movielens(data_dir).items.sort_values(ITEM_COL, kind="stable")
    vectors = load_encoder(None).encode(item_texts(items), progress=True)
    return vectors, time.perf_counter() - started


def cell(row: dict, key: str) -> str:
    low, high = row["intervals"][key]
    return f"{row['metrics'][key]:.4f} [{low:.4f}, {high:.4f}]"


def markdown(report: dict) -> str:
    """The report as markdown tables."""
    header = (
        "| model | HR@10 | NDCG@10 | MRR@10 | Recall@20 | coverage@10 | cold HR@10 (users) | train s "
        "| inference s | peak RSS MiB |"
    )
    rule = "|---|---|---|---|---|---|---|---|---|---|"

    def table(rows: list[dict]) -> list[str]:
        lines = [header, rule]
        for row in rows:
            if "chosen_l2" in row:
                extra = f" (λ={row['chosen_l2']:g})"
            else:
                extra = f" (epoch {row['best_epoch']})" if "best_epoch" in row else ""
            lines.append(
                f"| {row['model']}{extra} | {cell(row, 'hr@10')} | {cell(row, 'ndcg@10')} | {cell(row, 'mrr@10')} "
                f"| {cell(row, 'recall@20')} | {row['coverage@10']:.4f} "
                f"| {row['cold'].get('hr@10', 0.0):.4f} ({row['cold_users']}) | {row['train_seconds']:.1f} "
                f"| {row['inference_seconds']:.2f} | {row['peak_rss_mb']:.0f} |"
            )
        return lines

    machine = report["machine"]
    time_split = report["time_split"]
    lines = [
        "# Recommender benchmark (ml-latest-small)",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {machine['description']}; torch device `{machine['device']}`, "
        f"{machine['torch_threads']} torch threads.  ",
        f"Date: {report['date']}. Users evaluated: {report['users']}; items: {report['items']}; full ranking, "
        f"pessimistic ties; 95% bootstrap intervals ({report['bootstrap_samples']} samples).",
        "",
        "## Fixed protocol (leave-last-out; tuning and early stopping on the validation item)",
        "",
        *table(report["fixed"]),
        "",
        f"Total training time of the candidate set: {report['total_train_seconds']:.1f} s; "
        f"process peak RSS {report['peak_rss_mb']:.0f} MiB.",
        "",
        "## Order control: the sequential models on shuffled training order",
        "",
        *table(report["shuffled"]),
        "",
        f"## Global time split (train before the {time_split['test_quantile']:.0%} timestamp quantile, "
        f"score each user's first later interaction; {time_split['users']} users)",
        "",
        *table(time_split["rows"]),
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out-dir", default=str(PROJECT_ROOT / "docs" / "benchmarks"), help="where models.md and models.json go"
    )
    parser.add_argument("--vectors", default=None, help="saved item text vectors (.npy)")
    parser.add_argument(
        "--device", default=None, help="torch device for the sequential models (default: CUDA if present)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--configs", default="{}", help='JSON {"model": {config overrides}}')
    parser.add_argument("--bootstrap-samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and of the shuffled order")
    parser.add_argument("--skip-time-split", action="store_true")
    parser.add_argument("--machine", default=None, help="machine description for the report")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = movielens_dir(require=True)
    source = read_movielens(data_dir)
    data = InteractionData.from_frames(source.items, source.interactions)
    vectors, encode_seconds = item_vectors(data_dir, args.vectors)
    overrides = json.loads(args.configs)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    def config(name: str) -> dict:
        base = {"device": device, "progress": False} if name in SEQUENTIAL else {}
        return {**base, **overrides.get(name, {})}

    split = leave_last_out(data)
    common = {"samples": args.bootstrap_samples, "seed": args.seed}
    fixed = [run_candidate(name, config(name), split, vectors, **common) for name in CANDIDATES]
    print("shuffled order:", flush=True)
    order_control = shuffled_split(data, seed=args.seed)
    shuffled = [run_candidate(name, config(name), order_control, vectors, **common) for name in SEQUENTIAL]
    time_rows, time_users = [], 0
    if not args.skip_time_split:
        print("global time split:", flush=True)
        by_time = global_time_split(data)
        time_users = len(by_time.test_targets)
        time_rows = [run_candidate(name, config(name), by_time, vectors, **common) for name in CANDIDATES]
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else None
    report = {
        "command": "python -m benchmarks.bench_models " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": dt.date.today().isoformat(),
        "machine": {
            "description": args.machine or machine_summary() + (f", {gpu}" if gpu else ""),
            "device": device,
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "users": len(split.test_targets),
        "items": data.n_items,
        "bootstrap_samples": args.bootstrap_samples,
        "encode_seconds": round(encode_seconds, 1),
        "fixed": fixed,
        "total_train_seconds": round(sum(row["train_seconds"] for row in fixed), 1),
        "shuffled": shuffled,
        "time_split": {"test_quantile": 0.9, "val_quantile": 0.8, "users": time_users, "rows": time_rows},
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    out = Path(args.out_dir)
    atomic_write_text(out / "models.json", json.dumps(report, indent=2, default=float))
    atomic_write_text(out / "models.md", markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
