"""Second views on the fixed protocol: a shuffled-order control and a global-time split.

* **Shuffled order.** Each user's training history is put in a random (seeded) order while the
  validation and test items stay last. A sequential model trained and scored on shuffled
  histories can only use *which* items a user consumed, not their order; the gap to the same
  model on the real order shows how much order matters on the data.
* **Global time split.** One cut-off time for everybody (Meng et al. 2020 warn that
  leave-last-out lets a model train on interactions that happen after another user's test
  item). Training data is everything before the cut-off; each user with history before it and
  at least one interaction after it is scored on their first interaction after it. The validation
  side uses an earlier cut-off in the same way.

Both return the ordinary :class:`~components.data.dataset.Split`, so every model and
:func:`components.evaluation.metrics.evaluate_scores` work on them unchanged.
"""

from __future__ import annotations

import numpy as np

from components.data.dataset import History, InteractionData, Split, leave_last_out
from components.evaluation.metrics import EvaluationResult, evaluate_scores


def _permuted(history: History, order: np.ndarray) -> History:
    # timestamps keep their sorted order: only which item sits at which step changes
    return History(
        history.items[order], [history.events[i] for i in order], history.values[order], history.timestamps.copy()
    )


def shuffle_histories(data: InteractionData, *, keep_last: int = 2, seed: int = 0) -> InteractionData:
    """Each history with all but its newest ``keep_last`` interactions in a seeded random order."""
    rng = np.random.default_rng(seed)
    shuffled = []
    for history in data.histories:
        head = max(len(history) - keep_last, 0)
        order = np.concatenate([rng.permutation(head), np.arange(head, len(history))]).astype(np.int64)
        shuffled.append(_permuted(history, order))
    return InteractionData(data.catalogue, data.user_ids, shuffled)


def shuffled_split(data: InteractionData, *, seed: int = 0) -> Split:
    """The fixed leave-last-out split over histories whose training part is shuffled.

    The validation and test items are the same as in ``leave_last_out(data)``; only the order of
    what comes before them changes.
    """
    return leave_last_out(shuffle_histories(data, keep_last=2, seed=seed))


def _cut(
    data: InteractionData, cutoff: int, until: int | None
) -> tuple[InteractionData, list[History], list[int], list]:
    """Histories before ``cutoff``; users scored on their first interaction in [cutoff, until)."""
    before, histories, targets, users = [], [], [], []
    for user, history in zip(data.user_ids, data.histories):
        early = int(np.searchsorted(history.timestamps, cutoff, side="left"))
        past = history.head(early)
        before.append(past)
        if 0 < early < len(history) and (until is None or history.timestamps[early] < until):
            histories.append(past)
            targets.append(int(history.items[early]))
            users.append(user)
    return InteractionData(data.catalogue, data.user_ids, before), histories, targets, users


def time_cutoffs(data: InteractionData, test_quantile: float = 0.9, val_quantile: float = 0.8) -> tuple[int, int]:
    """Validation and test cut-off times at quantiles of all interaction timestamps."""
    if not 0 < val_quantile < test_quantile < 1:
        raise ValueError(f"need 0 < val_quantile < test_quantile < 1, got {val_quantile} and {test_quantile}")
    stamps = np.concatenate([h.timestamps for h in data.histories]) if data.histories else np.zeros(0, np.int64)
    if len(stamps) == 0:
        raise ValueError("no interactions to split by time")
    return int(np.quantile(stamps, val_quantile, method="higher")), int(
        np.quantile(stamps, test_quantile, method="higher")
    )


def global_time_split(data: InteractionData, *, test_quantile: float = 0.9, val_quantile: float = 0.8) -> Split:
    """A split at one global cut-off: train before it, score each user's first interaction after it.

    ``test_quantile`` and ``val_quantile`` place the test and validation cut-offs at quantiles of
    all timestamps. The validation side trains before its cut-off and scores the first interaction
    in [validation cut-off, test cut-off). ``eval_users`` lists the test-side users.
    """
    val_cutoff, test_cutoff = time_cutoffs(data, test_quantile, val_quantile)
    val_train, val_histories, val_targets, _ = _cut(data, val_cutoff, test_cutoff)
    test_train, test_histories, test_targets, test_users = _cut(data, test_cutoff, None)
    return Split(
        data=data,
        eval_users=np.array(test_users, dtype=data.user_ids.dtype),
        val_train=val_train,
        val_histories=val_histories,
        val_targets=np.array(val_targets, dtype=np.int64),
        test_train=test_train,
        test_histories=test_histories,
        test_targets=np.array(test_targets, dtype=np.int64),
    )


def evaluate_on_split(
    model, split: Split, side: str = "test", *, bootstrap_samples: int = 1000, seed: int = 0
) -> EvaluationResult:
    """Protocol metrics of a model fitted on ``split.<side>_train``, on that side's targets."""
    if side not in ("val", "test"):
        raise ValueError(f"side must be 'val' or 'test', got {side!r}")
    histories, targets = getattr(split, f"{side}_histories"), getattr(split, f"{side}_targets")
    train = getattr(split, f"{side}_train")
    scores = model.score(histories) if histories else np.zeros((0, train.n_items), np.float32)
    return evaluate_scores(
        scores, histories, targets, train_counts=train.item_counts(), bootstrap_samples=bootstrap_samples, seed=seed
    )
