"""The seen-item mask of the training softmax (``mask_seen``)."""

from __future__ import annotations

import math

import torch

from components.models.sasrec_network import mask_seen_logits


def test_each_position_masks_exactly_the_items_held_so_far_except_its_target():
    # two left-padded sequences over a catalogue of 6 items (ids 1..6, columns 0..5)
    inputs = torch.tensor([[0, 3, 5, 2], [4, 1, 4, 6]])
    targets = torch.tensor([[0, 5, 2, 6], [1, 4, 6, 3]])
    keep = targets > 0
    logits = torch.zeros(int(keep.sum()), 6)
    masked = mask_seen_logits(logits, inputs, targets, keep)
    rows = [(b, t) for b in range(2) for t in range(4) if keep[b, t]]
    for row, (b, t) in enumerate(rows):
        held = {int(i) for i in inputs[b, : t + 1] if i > 0} - {int(targets[b, t])}
        masked_items = {c + 1 for c in range(6) if math.isinf(masked[row, c])}
        assert masked_items == held, (b, t)
    # sequence 1 repeats item 4 as the target at t=1: its own target stays scoreable
    assert not math.isinf(masked[rows.index((1, 1)), 3])
    assert torch.equal(logits, torch.zeros_like(logits)), "the input logits are left as they were"


def test_the_masked_loss_is_finite_and_below_the_unmasked_one():
    torch.manual_seed(0)
    inputs = torch.tensor([[1, 2, 3, 4, 5]])
    targets = torch.tensor([[2, 3, 4, 5, 6]])
    keep = targets > 0
    logits = torch.randn(5, 8)
    plain = torch.nn.functional.cross_entropy(logits, targets[keep] - 1)
    masked = torch.nn.functional.cross_entropy(mask_seen_logits(logits, inputs, targets, keep), targets[keep] - 1)
    assert math.isfinite(float(masked)) and float(masked) < float(plain)
