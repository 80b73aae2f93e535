"""Candidates declare their memory needs as a function of the data's size; the train stage skips one
that would not fit in the budget, with the reason in the run's report and in MLflow, and the others go on."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient
from pydantic import ValidationError

from components.data.snapshots import list_snapshots
from components.models import build_model
from components.models.base import DataSize
from components.pipeline import run_pipeline
from components.settings import load_settings
from components.training.stage import load_data, memory_verdict

GIB = 2**30
ONE_X = DataSize(users=610, items=9_742, interactions=100_836)  # ml-latest-small
DEFAULTS = ("popularity", "lm_content", "ease", "lm_sasrec")


def scaled(size: DataSize, factor: int) -> DataSize:
    return DataSize(size.users * factor, size.items * factor, size.interactions * factor)


def needs(name: str, size: DataSize, **config) -> int:
    return build_model(name, config).memory_needs(size)


def test_every_default_candidate_fits_at_one_x_and_the_estimates_grow_with_the_data():
    for name in DEFAULTS:
        one, ten = needs(name, ONE_X), needs(name, scaled(ONE_X, 10))
        assert 0 < one < 2 * GIB, (name, one)
        assert ten > 5 * one, (name, one, ten)
    # EASE's dense matrices are what cannot grow: most of a 24 GiB machine at 10×, far beyond it at 100×
    assert needs("ease", scaled(ONE_X, 10)) > 16 * GIB and needs("ease", scaled(ONE_X, 100)) > 1000 * GIB
    # evaluation in chunks of users keeps the light candidates within a 24 GiB machine even at 100×
    hundred = scaled(ONE_X, 100)
    assert needs("popularity", hundred) < 20 * GIB and needs("lm_content", hundred) < 20 * GIB
    # the full softmax's logits over a 974,200-item catalogue would not fit; the sampled softmax, its default there,
    # does
    assert needs("lm_sasrec", hundred, sampled_softmax_above=None) > 24 * GIB > needs("lm_sasrec", hundred)
    # the sequential model's full-softmax logits grow with the catalogue and the batch
    assert needs("lm_sasrec", ONE_X, batch_size=128) > needs("lm_sasrec", ONE_X, batch_size=64)
    assert needs("lm_sasrec", ONE_X, loss_positions=5) < needs("lm_sasrec", ONE_X)


def test_ease_declares_the_dual_form_when_users_are_fewer_than_items():
    few_users, few_items = DataSize(100, 10_000, 5_000), DataSize(10_000, 100, 5_000)
    assert needs("ease", few_users) < 2 * 10_000 * 10_000 * 8  # no items × items system
    assert needs("ease", few_items) < 2 * 10_000 * 10_000 * 8  # no users × users system


def test_memory_budget_must_be_positive():
    with pytest.raises(ValidationError, match="memory_budget_gb"):
        load_settings(train={"memory_budget_gb": 0})


def test_a_candidate_over_the_budget_is_skipped_with_its_reason_and_the_others_go_on(make_settings):
    probe = make_settings(train={"candidates": ["popularity", "ease"], "bootstrap_samples": 20})
    run_pipeline(probe, "probe")  # a first run: the snapshot whose size the budget is set against
    data = load_data(probe, list_snapshots(probe.snapshots_dir)[-1].snapshot_id)
    size = DataSize.of(data)
    assert size.interactions == sum(len(h.items) for h in data.histories) > 0
    small, large = needs("popularity", size), needs("ease", size)
    assert small < large
    budget = (small + large) / 2 / GIB
    settings = make_settings(
        train={"candidates": ["popularity", "ease"], "bootstrap_samples": 20, "memory_budget_gb": budget}
    )
    assert memory_verdict(settings, "popularity", data) is None
    assert memory_verdict(settings, "ease", data).startswith("skipped: needs about")

    decision = run_pipeline(settings, "budget")

    report = json.loads((settings.runs_dir / "budget" / "report.json").read_text())
    assert list(report["candidates"]) == ["popularity"]
    reason = report["dropped"]["ease"]
    assert reason.startswith("skipped: needs about") and "train.memory_budget_gb" in reason
    assert f"{size.items:,} items" in reason
    assert json.loads((settings.runs_dir / "budget" / "ease" / "fit.json").read_text())["status"] == "skipped"
    assert not (settings.runs_dir / "budget" / "ease" / "val").exists()  # nothing was trained
    tags = MlflowClient(settings.tracking_uri).get_run(decision["run_id"]).data.tags
    assert tags["candidate.ease.dropped"].startswith("skipped: needs about")
    assert decision["model_kind"] == "popularity"
