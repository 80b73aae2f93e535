"""The train stage: one fit per candidate (warm-started from the champion when it can be), each
written to its own folder of the run, read back by evaluate and register through small handles."""

from components.training.stage import (
    aligned_vectors,
    candidate_fits,
    candidate_model,
    check_candidates,
    load_data,
    stage_plan_training,
    stage_train,
    stage_train_candidate,
)

__all__ = [
    "aligned_vectors",
    "candidate_fits",
    "candidate_model",
    "check_candidates",
    "load_data",
    "stage_plan_training",
    "stage_train",
    "stage_train_candidate",
]
