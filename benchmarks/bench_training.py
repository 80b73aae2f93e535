"""Benchmark: one fit per run, the served model against a cold refit, and warm against cold starts.

    .venv/bin/python -m benchmarks.bench_training [--model lm_sasrec] [--out docs/benchmarks/training.md]

On ml-latest-small, each user's newest interaction is hidden from everything below (``future``);
``past`` is the rest, what a pipeline run would have seen.

* **Served model.** The pipeline fits a sequential candidate once, on history before each user's
  test item (early stopping on the validation item), then serves that fit after ``serve_epochs``
  more epochs on every interaction. That is compared, on the hidden ``future`` item with full
  ranking, with serving the evaluation fit unchanged and with the old recipe: a second, cold fit on
  all of ``past`` with early stopping on each user's newest item.
* **Warm start.** The evaluation fit on ``past`` is the champion. The next snapshot adds the
  hidden items as new feedback (one event per user). The cold fit for that snapshot is exactly the
  cold refit above (same training data, same early-stopping items); the warm fit starts from the
  champion's weights. Reported: the epochs each needs to reach the cold fit's best validation
  NDCG@10, within its 95% interval.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.common import machine_facts, quiet_environment

quiet_environment()

import numpy as np  # noqa: E402

from components.settings import PROJECT_ROOT  # noqa: E402


def load(data_root: Path):
    """Ingest, validate and embed ml-latest-small under ``data_root`` (cached across runs)."""
    from components import pipeline
    from components.settings import load_settings

    settings = load_settings(data_root=data_root)
    snapshot_id = pipeline.stage_ingest(settings)
    pipeline.stage_validate(settings, snapshot_id)
    embeddings = pipeline.stage_embed(settings, snapshot_id)
    data = pipeline.load_data(settings, snapshot_id)
    vectors, _ = pipeline.aligned_vectors(data, embeddings)
    return data, vectors


def interval(model, histories, targets, train_counts, samples: int = 1000) -> dict:
    from components.evaluation.metrics import evaluate_scores

    scores = model.score(histories)
    result = evaluate_scores(
        scores, histories, targets, train_counts=train_counts, bootstrap_samples=samples, seed=0
    ).flat()
    keys = ("ndcg_at_10", "ndcg_at_10_low", "ndcg_at_10_high", "hr_at_10", "hr_at_10_low", "hr_at_10_high")
    return {key: round(float(result[key]), 4) for key in keys}


def epochs_to_reach(curve: list[float], start: float | None, level: float) -> int | None:
    """First epoch whose validation score reaches ``level`` (0: the starting weights)."""
    points = ([start] if start is not None else [None]) + list(curve)
    for epoch, value in enumerate(points):
        if value is not None and value >= level:
            return epoch
    return None


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lm_sasrec")
    parser.add_argument("--config", default="{}", help="JSON config overrides for the model")
    parser.add_argument("--data-root", type=Path, default=PROJECT_ROOT / ".lmrecsys-bench")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs" / "benchmarks" / "training.json")
    return parser.parse_args()


def served_model(args, config: dict, past, vectors, future, counts, results: dict, timings: dict):
    """The evaluation fit, served as is and after 2 and 5 more epochs; returns it and its state."""
    from components.data.dataset import leave_last_out
    from components.models import build_model

    future_histories, future_targets = future
    started = time.perf_counter()
    evaluation = build_model(args.model, config).fit(leave_last_out(past).test_train, vectors)
    timings["evaluation_fit_s"] = round(time.perf_counter() - started, 1)
    results["evaluation_fit"] = {"best_epoch": evaluation.best_epoch, "epochs_run": evaluation.epochs_run}
    results["served_as_is"] = interval(evaluation, future_histories, future_targets, counts)
    champion_state = {k: v.copy() for k, v in evaluation.state().items()}

    for extra in (2, 5):
        served = build_model(args.model, {**config, "serve_epochs": extra})
        served.n_items = evaluation.n_items
        served.set_state({k: v.copy() for k, v in champion_state.items()})
        started = time.perf_counter()
        served.continue_training(past)
        timings[f"continue_{extra}_s"] = round(time.perf_counter() - started, 1)
        results[f"served_plus_{extra}_epochs"] = interval(served, future_histories, future_targets, counts)
    return evaluation, champion_state


def warm_fit(args, config: dict, data, past, vectors, evaluation, champion_state, timings: dict):
    """A fit on ``past`` that starts from the champion's weights."""
    from components.models import build_model

    source = build_model(args.model, config)
    source.n_items = evaluation.n_items
    source.set_state(champion_state)
    warm = build_model(args.model, config)
    warm.warm_start(source, np.arange(data.n_items))
    started = time.perf_counter()
    warm.fit(past, vectors)  # == leave_last_out(past + new events).test_train
    timings["warm_fit_s"] = round(time.perf_counter() - started, 1)
    return warm


def main() -> None:
    from components.data.dataset import InteractionData, leave_last_out
    from components.models import build_model

    args = parse_args()
    config = {"progress": False, **json.loads(args.config)}

    data, vectors = load(args.data_root)
    keep = [len(h) >= 4 for h in data.histories]
    past_histories = [h.head(-1) if k else h for h, k in zip(data.histories, keep)]
    past = InteractionData(data.catalogue, data.user_ids, past_histories)
    future_histories = [h for h, k in zip(past.histories, keep) if k]
    future_targets = np.array([h.items[-1] for h, k in zip(data.histories, keep) if k], dtype=np.int64)
    future = (future_histories, future_targets)
    counts = past.item_counts()
    results: dict = {"model": args.model, "config": config, "users_scored": len(future_targets)}
    timings = {}
    evaluation, champion_state = served_model(args, config, past, vectors, future, counts, results, timings)

    started = time.perf_counter()
    cold = build_model(args.model, config).fit(past, vectors)
    timings["cold_refit_s"] = round(time.perf_counter() - started, 1)
    results["cold_refit"] = interval(cold, future_histories, future_targets, counts)
    results["cold_fit"] = {
        "best_epoch": cold.best_epoch,
        "epochs_run": cold.epochs_run,
        "best_val_ndcg": round(max(cold.validation_curve), 4),
    }

    # the cold fit's validation set is each user's newest item of past: what the warm fit stops on
    val = [(h.head(-1), int(h.items[-1])) for h in past.histories if len(h) >= 2]
    val_histories, val_targets = [h for h, _ in val], np.array([t for _, t in val], dtype=np.int64)
    cold_val = interval(cold, val_histories, val_targets, leave_last_out(data).test_train.item_counts())
    results["cold_val_interval"] = cold_val

    warm = warm_fit(args, config, data, past, vectors, evaluation, champion_state, timings)
    results["warm_fit"] = {
        "best_epoch": warm.best_epoch,
        "epochs_run": warm.epochs_run,
        "start_val_ndcg": round(warm.warm_start_score, 4),
        "best_val_ndcg": round(max([warm.warm_start_score, *warm.validation_curve]), 4),
    }
    level = cold_val["ndcg_at_10_low"]
    results["epochs_to_cold_interval"] = {
        "level": level,
        "cold": epochs_to_reach(cold.validation_curve, None, level),
        "warm": epochs_to_reach(warm.validation_curve, warm.warm_start_score, level),
        "cold_best_epoch": cold.best_epoch,
    }
    results["timings"] = timings
    results["machine"] = machine_facts()
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
