"""Online experiments: champion against challenger on live traffic, with an automatic decision.

``assignment`` (the stable hash split), ``interleave`` (team-draft interleaving and its click credit),
``stats`` (per-arm figures, the mSPRT always-valid test, the guardrails), ``records`` (start, list,
show; the records live in the feedback store, ``components.feedback.impressions``) and ``decision``
(decide, then promote through the registry or stop). See docs/experiments.md.
"""

from components.experiments.assignment import CHALLENGER, CHAMPION, INTERLEAVED, assign
from components.experiments.decision import act, current_stats, decide, evaluate, stop_experiment
from components.experiments.interleave import credit, team_draft
from components.experiments.records import (
    MODES,
    ExperimentError,
    check_inputs,
    get_experiment,
    list_experiments,
    start_experiment,
)
from components.experiments.stats import experiment_stats, guardrail_breach, mixture_test

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "INTERLEAVED",
    "MODES",
    "ExperimentError",
    "act",
    "assign",
    "check_inputs",
    "credit",
    "current_stats",
    "decide",
    "evaluate",
    "experiment_stats",
    "get_experiment",
    "guardrail_breach",
    "list_experiments",
    "mixture_test",
    "start_experiment",
    "stop_experiment",
    "team_draft",
]
