"""Sampled softmax for big catalogues: chosen by catalogue size, it still learns a sequence, it changes the
declared memory needs, and its loss masks accidental hits and applies the logQ correction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from components.data.dataset import History
from components.models import SASRec, build_model
from components.models.base import DataSize
from components.models.sasrec_network import SampledSoftmax
from tests.unit.test_models_ease_sasrec import FAST, cyclic_data

CYCLE = {**FAST, "hidden": 16, "max_epochs": 40, "patience": 40, "lr": 1e-2, "dropout": 0.0}


def test_the_catalogue_size_decides_and_the_default_keeps_the_full_softmax_at_movielens_size():
    model = build_model("lm_sasrec")
    assert not model.samples_softmax(9_742) and not model.samples_softmax(200_000)
    assert model.samples_softmax(200_001)
    assert build_model("sasrec", {"sampled_softmax_above": 0}).samples_softmax(1)
    assert not build_model("sasrec", {"sampled_softmax_above": None}).samples_softmax(10**9)
    big = DataSize(users=61_000, items=974_200, interactions=10_083_600)
    full = build_model("lm_sasrec", {"sampled_softmax_above": None}).memory_needs(big)
    sampled = build_model("lm_sasrec").memory_needs(big)
    assert sampled < full / 2  # the logits hold negatives + 1 columns, not the catalogue


def test_sampled_softmax_still_learns_the_next_item_of_a_cycle():
    data = cyclic_data()  # 6 items; 3 negatives a batch, so each step sees only part of the catalogue
    model = SASRec({**CYCLE, "sampled_softmax_above": 0, "negatives": 3}).fit(data)
    assert model._sampler is not None
    n = data.n_items
    hits = sum(
        model.recommend([History(np.array([(s + i) % n for i in range(3)]))], 1)[0][0, 0] == (s + 3) % n
        for s in range(n)
    )
    assert hits >= n - 1, hits  # chance would be 1 in 6
    assert SASRec(CYCLE).fit(data)._sampler is None  # below the threshold: the full softmax


def test_the_loss_masks_accidental_hits_and_corrects_for_the_sampling_probability():
    counts = np.array([100.0, 0.0, 30.0, 0.0])
    sampler = SampledSoftmax(counts, negatives=8, seed=1, device=torch.device("cpu"))
    assert math.isclose(float(sampler.probs.sum()), 1.0, rel_tol=1e-6)
    assert float(sampler.probs[0]) > 2 * float(sampler.probs[2]) > 4 * float(sampler.probs[1])  # by popularity
    drawn = torch.multinomial(sampler.probs, 8, replacement=True, generator=torch.Generator().manual_seed(1))
    target = 0
    assert (drawn == target).any() and (drawn != target).any()  # both the mask and the negatives are exercised
    table = torch.randn(4, 3, generator=torch.Generator().manual_seed(2))
    state = torch.randn(3, generator=torch.Generator().manual_seed(3))
    log_q = torch.log(sampler.probs * 8)  # each item's expected count among the 8 draws
    positive = state @ table[target] - log_q[target]
    negatives = [state @ table[j] - log_q[j] for j in drawn.tolist() if j != target]
    expected = -positive + torch.logsumexp(torch.stack([positive, *negatives]), dim=0)
    loss = sampler.loss(state[None, :], table, torch.tensor([target]))
    assert math.isclose(float(loss), float(expected), rel_tol=1e-5), (float(loss), float(expected))


def test_negatives_must_be_positive():
    with pytest.raises(ValueError, match="negatives"):
        build_model("sasrec", {"negatives": 0})
