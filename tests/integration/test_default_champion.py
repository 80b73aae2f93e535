"""Under the default candidate set, the champion on real MovieLens data uses the language model."""

from __future__ import annotations

import pytest

from components.models import MODEL_REGISTRY
from components.settings import load_settings

pytestmark = [pytest.mark.integration]


def test_the_default_candidates_crown_a_language_model_champion(reference_run):
    """The reduced reference run (first 40 users of ml-latest-small, default candidates)."""
    report, decision = reference_run["report"], reference_run["decision"]
    assert list(report["candidates"]) == load_settings().train.candidates
    assert decision["decision"] == "promoted" and decision["model_kind"] == report["best"]
    assert MODEL_REGISTRY[decision["model_kind"]].uses_text, f"champion {decision['model_kind']} uses no language model"
    best = report["candidates"][report["best"]]["val"]["ndcg_at_10"]
    assert best > report["candidates"]["ease"]["val"]["ndcg_at_10"]
    assert best > report["candidates"]["popularity"]["val"]["ndcg_at_10"]
