"""Quality benchmark: LM-SASRec variants, EASE and a validation-tuned blend on the fixed protocol.

Run from the project root (one torch thread, as measured)::

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_quality                 # the reproduce set
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_quality --runs lm_sasrec_len200,blend_len200_ease
    .venv/bin/python -m benchmarks.bench_quality --list                            # every named experiment

Writes ``docs/benchmarks/quality.md`` and ``quality.json``. Rows already in ``quality.json`` are
kept, so experiments can be run one process at a time and the report grows; a row that is re-run
is replaced.

Data: ``$LMRECSYS_MOVIELENS`` or the shared ml-latest-small folder, read in place. Item text
vectors are the project's encoder output for the embed stage's item text ("Title (year). Genres:
... Tags: ..."); they are encoded once and cached with the score matrices under ``--cache-dir``.

Protocol (docs: the architecture's fixed protocol). Each sequential model is fitted once on the
test-side training data of the leave-last-out split, early-stopped on each user's validation item
inside ``fit`` (exactly what the train stage does); its validation NDCG@10 is that fit scored on
the validation item, its test NDCG@10 the same fit scored on the test item. EASE is fitted per
side (validation side on history before the validation item, test side on history before the test
item), λ tuned inside ``fit``. A blend adds per-user z-scored scores of its parts,
``w · z(a) + (1 - w) · z(b)``, with ``w`` picked on the validation item only; test is read once for
the picked ``w``. Intervals are the evaluator's 95% bootstrap intervals over users.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.common import movielens_dir, quiet_environment, utc_minute

quiet_environment()

import numpy as np  # noqa: E402

from components.data.atomic import atomic_write_text  # noqa: E402
from components.settings import PROJECT_ROOT  # noqa: E402

MACHINE = (
    "rows dated up to 2026-12-03: a 2-core Intel Xeon VM with AMX, shared with other jobs, 1 torch thread at the "
    "lowest priority; rows dated 2026-12-04: a 2-core AMD EPYC (Zen 4) VM, 2 torch threads, alone (the "
    "`lm_sasrec_maskseen` row: 1 thread, beside the test suite)"
)

# Every experiment is one named row. "model" rows fit a model; "blend" rows combine cached scores.
EXPERIMENTS: dict[str, dict] = {
    "ease": {"model": "ease", "config": {}, "note": "λ tuned on the validation side's held-out item"},
    "lm_sasrec": {"model": "lm_sasrec", "config": {}, "note": "today's default candidate"},
    "lm_sasrec_len200": {
        "model": "lm_sasrec",
        "config": {"max_len": 200},
        "note": "read the newest 200 items (the reference's setting)",
    },
    "lm_sasrec_h128": {"model": "lm_sasrec", "config": {"hidden": 128}, "note": "wider items and transformer"},
    "lm_sasrec_drop3": {"model": "lm_sasrec", "config": {"dropout": 0.3}, "note": "more dropout"},
    "lm_sasrec_lr2e3": {"model": "lm_sasrec", "config": {"lr": 2e-3}, "note": "higher learning rate"},
    "lm_sasrec_drop1": {"model": "lm_sasrec", "config": {"dropout": 0.1}, "note": "less dropout"},
    "lm_sasrec_drop4": {"model": "lm_sasrec", "config": {"dropout": 0.4}, "note": "still more dropout"},
    "lm_sasrec_lr5e4": {"model": "lm_sasrec", "config": {"lr": 5e-4}, "note": "lower learning rate"},
    "lm_sasrec_blocks3": {"model": "lm_sasrec", "config": {"blocks": 3}, "note": "one more block"},
    "lm_sasrec_blocks1": {"model": "lm_sasrec", "config": {"blocks": 1}, "note": "one block fewer"},
    "lm_sasrec_dual": {
        "model": "lm_sasrec",
        "config": {"dual_view": True},
        "note": "LLM-ESR-style dual view: separate ID and text streams",
    },
    "lm_sasrec_seed2": {
        "model": "lm_sasrec",
        "config": {"seed": 7},
        "note": "default config, another seed (for seed ensembles)",
    },
    "blend_lm_sasrec_ease": {"blend": ["lm_sasrec", "ease"], "note": "z-score blend, weight tuned on validation"},
    "blend_len200_ease": {"blend": ["lm_sasrec_len200", "ease"], "note": "z-score blend, weight tuned on validation"},
    "blend_seeds": {
        "blend": ["lm_sasrec", "lm_sasrec_seed2"],
        "weight": 0.5,
        "note": "two seeds of the default, equal weights (not tuned)",
    },
    "blend_seeds_ease": {
        "blend": ["blend_seeds", "ease"],
        "note": "the two-seed ensemble blended with EASE, weight tuned on validation",
    },
    "lm_sasrec_white384": {
        "model": "lm_sasrec",
        "config": {"text_dim": 384},
        "note": "full-rank whitening (all 384 components, WhitenRec style), rows at unit length",
    },
    "lm_sasrec_white384_raw": {
        "model": "lm_sasrec",
        "config": {"text_dim": 384, "normalise_text": False},
        "note": "full-rank whitening left as is: zero mean, identity covariance",
    },
    "lm_sasrec_pat20": {
        "model": "lm_sasrec",
        "config": {"patience": 20},
        "note": "the default with twice the early-stopping patience",
    },
    "lm_sasrec_seed3_pat20": {
        "model": "lm_sasrec",
        "config": {"seed": 13, "patience": 20},
        "note": "the third seed with twice the early-stopping patience",
    },
    "lm_sasrec_seed3": {
        "model": "lm_sasrec",
        "config": {"seed": 13},
        "note": "default config, a third seed (for seed ensembles)",
    },
    "blend_seeds3": {
        "mean": ["lm_sasrec", "lm_sasrec_seed2", "lm_sasrec_seed3"],
        "note": "three seeds of the default, the mean of their z-scores (no weight tuned)",
    },
    "blend_seeds3_ease": {
        "blend": ["blend_seeds3", "ease"],
        "note": "the three-seed ensemble blended with EASE, weight tuned on validation",
    },
    "blend_seeds3_pat20": {
        "mean": ["lm_sasrec", "lm_sasrec_seed2", "lm_sasrec_seed3_pat20"],
        "note": "three seeds, the third with patience 20, the mean of their z-scores (no weight tuned)",
    },
    "blend_seeds3_pat20_ease": {
        "blend": ["blend_seeds3_pat20", "ease"],
        "note": "that ensemble blended with EASE, weight tuned on validation",
    },
    "lm_sasrec_maskseen": {
        "model": "lm_sasrec",
        "config": {"mask_seen": True},
        "note": "seen items left out of the training softmax, as they are left out of a ranking",
    },
    "lm_sasrec_ema8": {
        "model": "lm_sasrec",
        "config": {"weight_average": 0.8},
        "note": "validation and early stopping on a moving average of the weights (decay 0.8 per epoch)",
    },
    "lm_sasrec_ema8_seed2": {
        "model": "lm_sasrec",
        "config": {"weight_average": 0.8, "seed": 7},
        "note": "the weight average on the second seed",
    },
    "lm_sasrec_ema8_seed3": {
        "model": "lm_sasrec",
        "config": {"weight_average": 0.8, "seed": 13},
        "note": "the weight average on the third seed",
    },
    "blend_ema8_seeds3": {
        "mean": ["lm_sasrec_ema8", "lm_sasrec_ema8_seed2", "lm_sasrec_ema8_seed3"],
        "note": "three seeds with the weight average, the mean of their z-scores (no weight tuned)",
    },
    "blend_ema8_seeds3_ease": {
        "blend": ["blend_ema8_seeds3", "ease"],
        "note": "that ensemble blended with EASE, weight tuned on validation",
    },
    "lm_sasrec_ema8_maskseen": {
        "model": "lm_sasrec",
        "config": {"weight_average": 0.8, "mask_seen": True},
        "note": "both: the weight average and the seen-item mask",
    },
    "lm_sasrec_dual_h32": {
        "model": "lm_sasrec",
        "config": {"dual_view": True, "hidden": 32},
        "note": "dual view at the default's total width (2 × 32)",
    },
}
REPRODUCE = ["ease", "lm_sasrec", "lm_sasrec_seed2", "blend_lm_sasrec_ease", "blend_seeds", "blend_seeds_ease"]
"""What a plain run re-computes: the baselines and the best configuration."""
WEIGHTS = [round(w, 2) for w in np.linspace(0.0, 1.0, 21)]

TRIED: list[str] = [
    "**Outcome (2026-12-04).** The target is still missed. The best test figure is still `blend_seeds3_pat20`'s "
    "0.0704. The weight average (`weight_average`, below) makes single fits far less seed-dependent, but it does not "
    "raise the best of them. The three-seed ensemble with the average and EASE reaches test 0.0697. Before "
    "2026-12-04: the best configuration by validation is `blend_lm_sasrec_ease` (one "
    "default LM-SASRec, 0.95 : 0.05 z-score blend with EASE): validation 0.0766 [0.0597, 0.0948], test NDCG@10 0.0662 "
    "[0.0514, 0.0822] against the default's 0.0651 [0.0509, 0.0808] and the 0.080 target. No single-model change "
    "(dropout, learning rate, blocks, full-rank whitening) beat the default on validation by more than seed noise. "
    "The 2026-12-02 figure of 0.0722 for `blend_seeds_ease` did not hold: re-running its seed-7 part gave a different "
    "fit (see the caveat), and the blend now scores 0.0686 [0.0533, 0.0848] on test and 0.0750 on validation.",
    "**Seed noise is larger than one pair of seeds suggested.** Three seeds of the default: validation 0.0711 "
    "(seed 42), 0.0681 (seed 7), 0.0564 (seed 13); test 0.0651, 0.0625, 0.0507. Seed 13 stopped at epoch 30 with "
    "its best at 20 (patience 10), far earlier than the others (best 62, 51). Re-runs of the same seed differ "
    "too: seed 42 validation 0.0714 → 0.0711, test 0.0650 → 0.0651; seed 7 validation 0.0675 → 0.0681, test "
    "0.0647 → 0.0625, best epoch 53 → 51.",
    "**Dropout 0.3** (`lm_sasrec_drop3`, default 0.2): validation 0.0718 [0.0542, 0.0897] (+0.0007 over the default, "
    "inside the noise), test 0.0624 [0.0493, 0.0766]; best epoch 62 of 72, the default's. Not chosen.",
    "**Learning rate 2e-3** (`lm_sasrec_lr2e3`, default 1e-3): validation 0.0679 [0.0513, 0.0846] (below the "
    "default), test 0.0672 [0.0517, 0.0837]; best epoch 35 of 45, about half the default's fit time. Not chosen: "
    "it loses on validation, and picking it for its test figure would tune on the test item.",
    "**Three blocks** (`lm_sasrec_blocks3`, default 2): validation 0.0530 [0.0400, 0.0682], test 0.0508 [0.0387, "
    "0.0645]; it stopped at epoch 34 (best 24), like the weak seed 13, so one fit cannot separate depth from an early "
    "stop.",
    "**One block** (`lm_sasrec_blocks1`): validation 0.0669 [0.0496, 0.0849], test 0.0601 [0.0460, 0.0751]; best "
    "epoch 54 of 64 (its 19 s per epoch were measured under heavy load from other jobs). Not chosen.",
    "**Dropout 0.1** (`lm_sasrec_drop1`): validation 0.0733 [0.0564, 0.0908] (+0.0022 over the default, inside the "
    "noise), test 0.0636 [0.0489, 0.0796]; best epoch 61 of 71. With 0.3 also level, dropout between 0.1 and 0.3 "
    "does not matter here. Not chosen.",
    "**Full-rank whitening** (`lm_sasrec_white384`, WhitenRec style: all 384 principal components whitened, rows at "
    "unit length, against the default's top 64): validation 0.0693 [0.0533, 0.0859], test 0.0631 [0.0480, 0.0788], "
    "test HR@10 0.1098 (default 0.1279); best epoch 38 of 48. Not chosen. It needed no new option: `text_dim` set to "
    "the encoder's width already gives it, and `normalise_text: False` on top gives exactly zero-mean, "
    "identity-covariance input (unit test `tests/unit/test_lm_sasrec_whitening.py`).",
    "**Full whitening left as is** (`lm_sasrec_white384_raw`: `normalise_text: False`, so the input has exactly "
    "zero mean and identity covariance, the literal WhitenRec input): validation 0.0385 [0.0265, 0.0512], test "
    "0.0266 [0.0177, 0.0370], test HR@10 0.0508; best epoch 34 of 44. The whitened vectors are about 20 long and "
    "swamp the ID embeddings, as the 64-component version without unit length did. Not chosen.",
    "**Patience 20** (`lm_sasrec_seed3_pat20`: seed 13 again, early-stopping patience 20 instead of 10): "
    "validation 0.0734 [0.0561, 0.0917] against 0.0564 at patience 10, test 0.0659 [0.0499, 0.0817] against 0.0507; "
    "best epoch 62 of 82. The validation curve is noisy: with patience 10 a one-epoch spike at epoch 20 stopped the "
    "fit at 30, while the curve kept rising to epoch 62. On the default seed (`lm_sasrec_pat20`, seed 42) patience "
    "20 gave validation 0.0732 [0.0560, 0.0906] (+0.0021, inside the noise) but test 0.0565 [0.0431, 0.0705] "
    "against 0.0651: it ran to epoch 116 and picked epoch 96, a later peak of a noisy validation curve. 611.6 s "
    "(116 epochs). So patience 20 rescues a premature stop but can also over-fit the validation item; the default's "
    "patience is unchanged.",
    "**Three seeds with the patience-20 third** (`blend_seeds3_pat20`, mean of z-scores): validation 0.0738 [0.0558, "
    "0.0925], test 0.0704 [0.0543, 0.0867]; with EASE (`blend_seeds3_pat20_ease`, weight 0.95) validation 0.0760 "
    "[0.0590, 0.0929], test 0.0682 [0.0535, 0.0840]. Both below `blend_lm_sasrec_ease` on validation.",
    "**Three-seed ensemble** (`blend_seeds3`: mean of the three seeds' per-user z-scores, nothing tuned): validation "
    "0.0697 [0.0538, 0.0879], test 0.0686 [0.0533, 0.0858], at 3 fits. The weak seed 13 pulls validation below the "
    "best single seed. Adding EASE (`blend_seeds3_ease`) picked EASE weight 0 on validation, so it equals "
    "`blend_seeds3`.",
    "**Two-seed ensemble** (re-run): `blend_seeds` validation 0.0705 [0.0529, 0.0897], test 0.0686 [0.0535, "
    "0.0837]; with EASE (`blend_seeds_ease`, weight 0.95) validation 0.0750 [0.0575, 0.0926], test 0.0686 [0.0533, "
    "0.0848].",
    "**max_len 200** (2026-12-02): validation 0.0714, the same as max_len 50; test 0.0655. About 4× the seconds per "
    "epoch on one thread. Not worth it here.",
    "**Dual view** (opt-in `dual_view`, LLM-ESR style, 2026-12-02): worse, validation 0.0663 and test 0.0522, at "
    "roughly 1.2–1.3× the cost per epoch and more epochs.",
    "**hidden 128** (2026-12-02): validation 0.0668, test 0.0659; about 1.2× the default's fit time. Not chosen.",
    "**LM-SASRec + EASE blend** (per-user z-scores, weight picked on validation over 0, 0.05, ..., 1): weight 0.95 "
    "for one model, two seeds and max_len 200 (validation +0.003 to +0.005), 1.0 for three seeds. Temperature "
    "log-softmax and reciprocal-rank fusion (validation only, not in the table) reached the same validation range.",
    "**A moving average of the weights** (`weight_average: 0.8`, 2026-12-04; validation and early stopping read an "
    "exponential average of the weights, updated after every epoch, so the noisy validation curve is smoothed): seed "
    "42 (`lm_sasrec_ema8`) validation 0.0703 [0.0536, 0.0874] against the default's 0.0711, test 0.0663 [0.0518, "
    "0.0822] against 0.0651; seed 13 (`lm_sasrec_ema8_seed3`) validation 0.0708 [0.0538, 0.0889] against 0.0564, "
    "test 0.0643 [0.0488, 0.0792] against 0.0507. It does not raise a good fit, but it removes the premature stop "
    "that made seed 13 the weak seed (the patience-20 fit rescued it too, at 82 epochs). Seed 7 "
    "(`lm_sasrec_ema8_seed2`): validation 0.0662 [0.0499, 0.0835] against 0.0681, test 0.0639 [0.0500, 0.0786] "
    "against 0.0625. Over the three seeds the mean validation NDCG@10 rises from 0.0652 to 0.0691 and the mean test "
    "from 0.0594 to 0.0648, with a spread of 0.0046 instead of 0.0147 on validation. Their ensemble "
    "(`blend_ema8_seeds3`, mean of z-scores) reaches validation 0.0719 [0.0549, 0.0898], test 0.0681 [0.0527, "
    "0.0836]; with EASE (`blend_ema8_seeds3_ease`, weight picked on validation) validation 0.0732 [0.0566, 0.0900], "
    "test 0.0697 [0.0546, 0.0852]. It stays opt-in for now: with a constant decay a short fit (the tests' reduced "
    "configs, a warm start's few epochs) would weigh its first epochs too much, and a warm-up of the decay has not "
    "been measured.",
    "**Seen items left out of the training softmax** (`mask_seen`, 2026-12-04): validation 0.0595 [0.0443, 0.0752], "
    "test 0.0550 [0.0412, 0.0707]; best epoch 29 of 39, an early stop like seed 13's. Worse; not chosen.",
    "**Learning rate 5e-4** (`lm_sasrec_lr5e4`, 2026-12-04): validation 0.0626 [0.0479, 0.0782], test 0.0612 "
    "[0.0469, 0.0778]. **Dropout 0.4** (`lm_sasrec_drop4`): validation 0.0689 [0.0521, 0.0854], test 0.0570 [0.0434, "
    "0.0710]. Both below the default on validation; not chosen.",
    "Not tried for lack of time on two cores: patience 20 on seed 7 and combined with dropout 0.1; relaxed "
    "(group) whitening and the WhitenRec+ ensemble.",
]
"""The "what we tried" list of the report (also kept in quality.json under "tried")."""


def load_data(data_dir: Path):
    from components.data.dataset import InteractionData
    from components.data.sources import read_movielens

    source = read_movielens(data_dir)
    return source, InteractionData.from_frames(source.items, source.interactions)


def item_vectors(source, data, cache: Path) -> np.ndarray:
    """The encoder's vectors for the embed stage's item text, aligned with the catalogue (cached)."""
    from components.data.columns import ITEM_COL
    from components.embed import item_texts, load_encoder

    path = cache / "item_vectors.npy"
    items = source.items.sort_values(ITEM_COL, kind="stable")
    if not np.array_equal(items[ITEM_COL].to_numpy(), data.catalogue.item_ids):
        raise SystemExit("the catalogue is not the items sorted by id; cannot align text vectors")
    if path.exists():
        vectors = np.load(path)
        if len(vectors) == data.n_items:
            return vectors
    started = time.perf_counter()
    vectors = load_encoder(None).encode(item_texts(items), progress=False)
    print(f"encoded {len(vectors)} item texts in {time.perf_counter() - started:.0f}s", flush=True)
    np.save(path, vectors)
    return vectors


def metrics(scores: np.ndarray, histories, targets, train) -> dict:
    from components.evaluation.metrics import evaluate_scores

    result = evaluate_scores(
        scores, histories, targets, train_counts=train.item_counts(), bootstrap_samples=1000, seed=0
    )
    out = {}
    for name in ("ndcg@10", "hr@10", "mrr@10", "recall@20"):
        low, high = result.intervals[name]
        out[name] = [round(result.metrics[name], 4), round(low, 4), round(high, 4)]
    out["coverage@10"] = round(result.coverage_at_10, 4)
    out["cold_hr@10"] = round(result.cold.get("hr@10", 0.0), 4)
    return out


def run_model(name: str, spec: dict, split, vectors: np.ndarray, cache: Path, threads: int) -> dict:
    from components.models import build_model

    config = dict(spec["config"])
    row: dict = {"kind": spec["model"], "note": spec["note"]}
    if spec["model"] == "ease":
        started = time.perf_counter()
        val_model = build_model("ease", config).fit(split.val_train, vectors)
        val_seconds = time.perf_counter() - started
        started = time.perf_counter()
        test_model = build_model("ease", config).fit(split.test_train, vectors)
        row["fit_seconds"] = round(time.perf_counter() - started, 1)
        row["val_side_fit_seconds"] = round(val_seconds, 1)
        row["config"] = {"val_side_l2": val_model.chosen_l2, "test_side_l2": test_model.chosen_l2}
    else:
        config = {"progress": False, "threads": threads, "device": "cpu", **config}
        started = time.perf_counter()
        val_model = test_model = build_model(spec["model"], config).fit(split.test_train, vectors)
        row["fit_seconds"] = round(time.perf_counter() - started, 1)
        row["config"] = {k: v for k, v in test_model.config.model_dump().items() if k not in ("progress", "device")}
        row["best_epoch"], row["epochs_run"] = int(test_model.best_epoch), int(test_model.epochs_run)
        row["seconds_per_epoch"] = round(float(test_model.train_seconds_per_epoch), 2)
        row["best_val_ndcg_in_fit"] = round(max(test_model.validation_curve), 4)
        row["validation_curve"] = [round(v, 4) for v in test_model.validation_curve]
    val_scores = val_model.score(split.val_histories)
    test_scores = test_model.score(split.test_histories)
    np.savez(cache / f"{name}.npz", val=val_scores, test=test_scores)
    row["val"] = metrics(val_scores, split.val_histories, split.val_targets, split.val_train)
    row["test"] = metrics(test_scores, split.test_histories, split.test_targets, split.test_train)
    return row


def zscore(scores: np.ndarray, histories) -> np.ndarray:
    """Per-user standardised scores over the items the user has not consumed (seen items: 0)."""
    out = np.array(scores, dtype=np.float64, copy=True)
    for row, history in enumerate(histories):
        unseen = np.ones(out.shape[1], dtype=bool)
        unseen[history.items] = False
        line = out[row]
        mean, std = line[unseen].mean(), line[unseen].std()
        line[:] = (line - mean) / max(std, 1e-12)
        line[~unseen] = 0.0
    return out


def run_blend(name: str, spec: dict, split, cache: Path, rows: dict) -> dict:
    from components.evaluation.metrics import per_user_metrics, target_ranks

    first, second = spec["blend"]
    for part in (first, second):
        if not (cache / f"{part}.npz").exists():
            raise SystemExit(f"{name} needs the cached scores of {part}: run --runs {part} first")
    a, b = np.load(cache / f"{first}.npz"), np.load(cache / f"{second}.npz")
    za, zb = zscore(a["val"], split.val_histories), zscore(b["val"], split.val_histories)
    curve = []
    grid = [spec["weight"]] if "weight" in spec else WEIGHTS  # a fixed weight is not tuned
    for weight in grid:
        blended = (weight * za + (1 - weight) * zb).astype(np.float32)
        ranks = target_ranks(blended, split.val_histories, split.val_targets)
        curve.append(round(float(per_user_metrics(ranks)["ndcg@10"].mean()), 4))
    weight = grid[int(np.argmax(curve))]
    val = (weight * za + (1 - weight) * zb).astype(np.float32)
    test = weight * zscore(a["test"], split.test_histories) + (1 - weight) * zscore(b["test"], split.test_histories)
    test = test.astype(np.float32)
    np.savez(cache / f"{name}.npz", val=val, test=test)  # a blend can be a part of another blend
    fit_seconds = sum(rows.get(part, {}).get("fit_seconds", float("nan")) for part in (first, second))
    return {
        "kind": "blend",
        "note": spec["note"],
        "config": {"parts": [first, second], "weight_of_first": weight},
        "validation_curve": dict(zip(map(str, grid), curve)),
        "fit_seconds": round(fit_seconds, 1),
        "val": metrics(val, split.val_histories, split.val_targets, split.val_train),
        "test": metrics(test, split.test_histories, split.test_targets, split.test_train),
    }


def run_mean(name: str, spec: dict, split, cache: Path, rows: dict) -> dict:
    """The mean of the parts' per-user z-scores: an equal-weight ensemble, nothing tuned."""
    parts = spec["mean"]
    for part in parts:
        if not (cache / f"{part}.npz").exists():
            raise SystemExit(f"{name} needs the cached scores of {part}: run --runs {part} first")
    loaded = [np.load(cache / f"{part}.npz") for part in parts]
    val = np.mean([zscore(scores["val"], split.val_histories) for scores in loaded], axis=0).astype(np.float32)
    test = np.mean([zscore(scores["test"], split.test_histories) for scores in loaded], axis=0).astype(np.float32)
    np.savez(cache / f"{name}.npz", val=val, test=test)
    return {
        "kind": "mean",
        "note": spec["note"],
        "config": {"parts": parts},
        "fit_seconds": round(sum(rows.get(part, {}).get("fit_seconds", float("nan")) for part in parts), 1),
        "val": metrics(val, split.val_histories, split.val_targets, split.val_train),
        "test": metrics(test, split.test_histories, split.test_targets, split.test_train),
    }


def cell(triple: list[float]) -> str:
    value, low, high = triple
    return f"{value:.4f} [{low:.4f}, {high:.4f}]"


def describe(name: str, row: dict) -> str:
    config = row["config"]
    if row["kind"] == "blend":
        first, second = config["parts"]
        return f"{config['weight_of_first']:g} · z({first}) + {1 - config['weight_of_first']:g} · z({second})"
    if row["kind"] == "mean":
        return "mean of " + ", ".join(f"z({part})" for part in config["parts"])
    if row["kind"] == "ease":
        return f"λ = {config['val_side_l2']:g} (val side), {config['test_side_l2']:g} (test side)"
    default = EXPERIMENTS[name]["config"]
    return ", ".join(f"{k} {v}" for k, v in default.items()) or "defaults"


def markdown(report: dict) -> str:
    rows = report["rows"]
    lines = [
        "# Quality: LM-SASRec variants, EASE and blends (ml-latest-small)",
        "",
        f"Command: `{report['command']}` (rows accumulate across runs; each row's date is in quality.json).  ",
        f"Machine: {report['machine']}.  ",
        f"Date: {report['date']}. Users evaluated: {report['users']}; items: {report['items']}. Fixed protocol: "
        "leave-last-out, "
        "full ranking over the catalogue, seen items excluded, pessimistic ties; 95% bootstrap intervals over users "
        "(1000 samples).",
        "",
        "Validation is each user's second-to-last item (all tuning, early stopping and blend weights use it); test is "
        "the last "
        "item, read once per configuration. A sequential model's validation and test numbers come from one "
        "early-stopped fit "
        "(the train stage's fit); fit seconds are that fit's wall time on one thread. A blend's fit seconds are the "
        "sum of its parts'.",
        "",
        "Caveats. A sequential model's validation figure is slightly optimistic: early stopping picked its best epoch "
        "on the "
        "same item. Fit seconds move with the load other work puts on the shared machine (the seed-7 configuration "
        "took 4.1 s per epoch in one run and 15.3 s in another), so compare seconds per epoch only between rows run "
        "under similar load. A CPU fit is not bit-for-bit repeatable from one run to the next here: re-running a "
        "configuration moved its validation NDCG@10 by up to 0.0006 and its test NDCG@10 by up to 0.0022.",
        "",
        "| config | settings | validation NDCG@10 | test NDCG@10 | test HR@10 | best epoch / run | fit s (s/epoch) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        epochs = f"{row['best_epoch']} / {row['epochs_run']}" if "best_epoch" in row else "–"
        per_epoch = f" ({row['seconds_per_epoch']:.1f})" if "seconds_per_epoch" in row else ""
        lines.append(
            f"| {name} | {describe(name, row)} | {cell(row['val']['ndcg@10'])} | {cell(row['test']['ndcg@10'])} "
            f"| {cell(row['test']['hr@10'])} | {epochs} | {row['fit_seconds']:.1f}{per_epoch} |"
        )
    lines += ["", "## What we tried", ""]
    lines += [f"- {item}" for item in report.get("tried", [])] or ["- (see the table)"]
    lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=",".join(REPRODUCE), help="comma-separated experiment names (see --list)")
    parser.add_argument("--list", action="store_true", help="print the named experiments and exit")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--cache-dir", type=Path, default=PROJECT_ROOT / ".lmrecsys-bench" / "quality")
    parser.add_argument("--out-dir", type=Path, default=PROJECT_ROOT / "docs" / "benchmarks")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    from components.data.dataset import leave_last_out

    args = parse_args(argv)
    if args.list:
        for name, spec in EXPERIMENTS.items():
            print(f"{name:>22}: {spec.get('config', spec.get('blend', spec.get('mean')))}  {spec['note']}")
        return {}

    import torch

    torch.set_num_threads(args.threads)
    data_dir = movielens_dir(require=True)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.out_dir / "quality.json"
    report = json.loads(json_path.read_text()) if json_path.exists() else {"rows": {}}
    source, data = load_data(data_dir)
    split = leave_last_out(data)
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise SystemExit(f"unknown experiment(s) {unknown}; see --list")
    vectors = item_vectors(source, data, args.cache_dir) if any("model" in EXPERIMENTS[n] for n in names) else None
    for name in names:
        spec = EXPERIMENTS[name]
        print(f"running {name} ...", flush=True)
        if "blend" in spec:
            row = run_blend(name, spec, split, args.cache_dir, report["rows"])
        elif "mean" in spec:
            row = run_mean(name, spec, split, args.cache_dir, report["rows"])
        else:
            row = run_model(name, spec, split, vectors, args.cache_dir, args.threads)
        row["date"] = utc_minute()
        report["rows"][name] = row
        print(
            f"{name}: val NDCG@10 {cell(row['val']['ndcg@10'])}  test NDCG@10 {cell(row['test']['ndcg@10'])}  "
            f"fit {row['fit_seconds']}s",
            flush=True,
        )
        report.update(
            command="OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python -m benchmarks.bench_quality",
            machine=MACHINE,
            date=time.strftime("%Y-%m-%d", time.gmtime()),
            users=len(split.test_targets),
            items=data.n_items,
            torch=torch.__version__,
            threads=args.threads,
        )
        report["tried"] = TRIED
        atomic_write_text(json_path, json.dumps(report, indent=2))
        atomic_write_text(args.out_dir / "quality.md", markdown(report))
    return report


if __name__ == "__main__":
    main()
