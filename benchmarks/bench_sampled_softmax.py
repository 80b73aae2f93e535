"""Benchmark: the quality cost of sampled softmax at 1×, against the full softmax, on ml-latest-small.

    .venv/bin/python -m benchmarks.bench_sampled_softmax [--negatives 1024] [--out docs/benchmarks/sampled_softmax.md]

Both fits are LM-SASRec with its defaults on the fixed protocol (one fit on the test-side training
data, early-stopped on each user's validation item; validation and test NDCG@10 from that fit, with
the evaluator's 95% bootstrap intervals). The only difference: ``sampled_softmax_above: 0`` forces
the sampled softmax (``negatives`` items drawn by popularity a batch, logQ-corrected), which the
model otherwise uses only above 200,000 catalogue items. Run side by side in one process.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.common import machine_facts, movielens_dir, quiet_environment

quiet_environment()


def main() -> None:
    from benchmarks.bench_quality import item_vectors, load_data, run_model
    from components.data.dataset import leave_last_out

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--negatives", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/sampled_softmax.md"))
    args = parser.parse_args()
    source, data = load_data(movielens_dir(require=True))
    split = leave_last_out(data)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="lmrecsys-sampled-") as tmp:
        cache = Path(tmp)
        vectors = item_vectors(source, data, cache)
        for name, config in (
            ("full softmax", {"sampled_softmax_above": None}),
            (f"sampled softmax, {args.negatives} negatives", {"sampled_softmax_above": 0, "negatives": args.negatives}),
        ):
            spec = {"model": "lm_sasrec", "config": config, "note": name}
            rows[name] = run_model(name.split(",")[0].replace(" ", "_"), spec, split, vectors, cache, args.threads)
            print(name, json.dumps({k: rows[name][k] for k in ("val", "test", "fit_seconds", "best_epoch")}))
    facts = machine_facts()

    def cell(triple):
        return f"{triple[0]:.4f} [{triple[1]:.4f}, {triple[2]:.4f}]"

    lines = [
        "# Sampled softmax at 1×: its quality cost against the full softmax",
        "",
        f"Command: `python -m benchmarks.bench_sampled_softmax --negatives {args.negatives} "
        f"--threads {args.threads}` · machine: {facts['cpu']}, {facts['cores']} cores · date: {facts['date']}",
        "",
        f"LM-SASRec defaults on ml-latest-small ({data.n_items:,} items, {len(split.eval_users)} users), "
        "fixed protocol, one early-stopped fit each, side by side in one run.",
        "",
        "| loss | validation NDCG@10 | test NDCG@10 | test HR@10 | best epoch / run | fit s (s/epoch) |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {cell(row['val']['ndcg@10'])} | {cell(row['test']['ndcg@10'])} | {cell(row['test']['hr@10'])} "
            f"| {row['best_epoch']} / {row['epochs_run']} | {row['fit_seconds']} ({row['seconds_per_epoch']}) |"
        )
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
