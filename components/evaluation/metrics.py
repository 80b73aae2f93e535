"""The fixed offline evaluation protocol: full ranking, leave-last-out, bootstrap intervals.

Every item in the catalogue is ranked (no sampled negatives); items already in the user's
history are excluded. Ties are pessimistic: a target that scores the same as other items ranks
after all of them, so a model cannot gain from constant or coarse scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from components.data.dataset import History

METRICS = ("hr@10", "ndcg@10", "mrr@10", "recall@20")
COLD_START_MAX_TRAIN = 5
NEVER = 1 << 40
"""The rank given to a target that cannot be recommended at all."""
"""A test item with at most this many training interactions is cold."""


def target_ranks(scores: np.ndarray, histories: list[History], targets: np.ndarray) -> np.ndarray:
    """0-based rank of each target among unseen items (pessimistic: ties rank ahead of the target)."""
    scores = np.array(scores, dtype=np.float32, copy=True)
    ranks = np.empty(len(targets), dtype=np.int64)
    for row, (history, target) in enumerate(zip(histories, targets)):
        line = scores[row]
        line[history.items] = -np.inf
        target_score = line[target]
        if not np.isfinite(target_score):  # target among the seen items: never recommendable, never a hit
            ranks[row] = NEVER
            continue
        ranks[row] = int(np.count_nonzero(line >= target_score) - 1)
    return ranks


def per_user_metrics(ranks: np.ndarray) -> dict[str, np.ndarray]:
    """Per-user hit, NDCG and reciprocal-rank values for one held-out item."""
    hit10 = (ranks < 10).astype(np.float64)
    return {
        "hr@10": hit10,
        "ndcg@10": hit10 / np.log2(ranks + 2.0),
        "mrr@10": hit10 / (ranks + 1.0),
        "recall@20": (ranks < 20).astype(np.float64),
    }


def bootstrap_interval(values: np.ndarray, samples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean over users."""
    if len(values) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(values), size=(samples, len(values)))
    means = values[picks].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


@dataclass
class EvaluationResult:
    """Metrics of one model on one split side, with intervals, coverage and the cold-start slice."""

    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    coverage_at_10: float
    users: int
    cold: dict[str, float] = field(default_factory=dict)
    cold_users: int = 0
    hr_curve: list[float] = field(default_factory=list)

    def flat(self, prefix: str = "") -> dict[str, float]:
        """A flat dict for logging: metric, metric_low, metric_high, coverage and cold-start values."""
        out = {}
        for name, value in self.metrics.items():
            key = prefix + name.replace("@", "_at_")
            out[key] = value
            out[key + "_low"], out[key + "_high"] = self.intervals[name]
        out[prefix + "coverage_at_10"] = self.coverage_at_10
        for name, value in self.cold.items():
            out[prefix + "cold_" + name.replace("@", "_at_")] = value
        out[prefix + "cold_users"] = float(self.cold_users)
        return out


EVAL_CHUNK_USERS = 1024
"""Users scored at once by :func:`evaluate_in_chunks`: bounds evaluation memory to this many rows × items."""


def evaluate_scores(
    scores: np.ndarray,
    histories: list[History],
    targets: np.ndarray,
    *,
    train_counts: np.ndarray | None = None,
    bootstrap_samples: int = 1000,
    seed: int = 0,
    curve_max_k: int = 50,
) -> EvaluationResult:
    """All protocol metrics for a score matrix (rows aligned with histories and targets)."""
    ranks, covered = target_ranks(scores, histories, targets), top10_items(scores, histories)
    return _summarise(ranks, covered, scores.shape[1], targets, train_counts, bootstrap_samples, seed, curve_max_k)


def evaluate_in_chunks(
    scorer,
    histories: list[History],
    targets: np.ndarray,
    *,
    chunk_users: int = EVAL_CHUNK_USERS,
    train_counts: np.ndarray | None = None,
    bootstrap_samples: int = 1000,
    seed: int = 0,
    curve_max_k: int = 50,
) -> EvaluationResult:
    """:func:`evaluate_scores` with ``scorer(histories[a:b])`` called per chunk of users, so the score
    matrix never holds more than ``chunk_users`` rows: the same numbers in bounded memory."""
    ranks, covered, n_items = [np.empty(0, dtype=np.int64)], set(), 0
    for start in range(0, len(histories), chunk_users):
        part = histories[start : start + chunk_users]
        scores = scorer(part)
        ranks.append(target_ranks(scores, part, targets[start : start + chunk_users]))
        covered |= top10_items(scores, part)
        n_items = scores.shape[1]
    ranks = np.concatenate(ranks)
    return _summarise(ranks, covered, n_items, targets, train_counts, bootstrap_samples, seed, curve_max_k)


def _summarise(ranks, covered: set, n_items: int, targets, train_counts, bootstrap_samples, seed, curve_max_k):
    values = per_user_metrics(ranks)
    metrics = {name: float(v.mean()) if len(v) else float("nan") for name, v in values.items()}
    intervals = {name: bootstrap_interval(v, bootstrap_samples, seed) for name, v in values.items()}
    coverage = len(covered) / n_items if len(ranks) and n_items else 0.0
    cold, cold_users = {}, 0
    if train_counts is not None:
        mask = train_counts[targets] <= COLD_START_MAX_TRAIN
        cold_users = int(mask.sum())
        cold = {name: float(v[mask].mean()) if cold_users else 0.0 for name, v in values.items()}
    curve = [float((ranks < k).mean()) if len(ranks) else 0.0 for k in range(1, curve_max_k + 1)]
    return EvaluationResult(metrics, intervals, coverage, len(targets), cold, cold_users, curve)


def top10_items(scores: np.ndarray, histories: list[History]) -> set[int]:
    """The items in at least one user's top 10 (seen items excluded)."""
    if len(histories) == 0:
        return set()
    masked = np.array(scores, dtype=np.float32, copy=True)
    for row, history in enumerate(histories):
        masked[row, history.items] = -np.inf
    indexes, values = top_k(masked, 10)
    return set(np.unique(indexes[np.isfinite(values)]).tolist())


def top10_coverage(scores: np.ndarray, histories: list[History]) -> float:
    """Share of the catalogue that appears in at least one user's top 10."""
    if len(histories) == 0:
        return 0.0
    return float(len(top10_items(scores, histories)) / scores.shape[1])


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best k columns per row, ties broken by the lower index; returns (indexes, scores)."""
    n = scores.shape[1]
    k = min(k, n)
    indexes = np.empty((len(scores), k), dtype=np.int64)
    if k == 0:
        return indexes, np.empty((len(scores), 0), dtype=scores.dtype)
    kth = np.partition(scores, n - k, axis=1)[:, n - k] if k < n else scores.min(axis=1)
    for row, (line, cut) in enumerate(zip(scores, kth)):
        above = np.flatnonzero(line > cut)
        tied = np.flatnonzero(line == cut)[: k - len(above)]  # lower indexes win the tie at the cut
        chosen = np.concatenate([above, tied])
        indexes[row] = chosen[np.lexsort((chosen, -line[chosen]))]
    return indexes, np.take_along_axis(scores, indexes, axis=1)
