"""The SASRec torch network and its deterministic-training switch.

This module imports torch at the top; ``components.models.sasrec`` imports it only inside the
methods that train or score, so importing the model registry does not import torch.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from components.models.sasrec_config import SASRecConfig


@contextlib.contextmanager
def deterministic(enabled: bool):
    """Deterministic torch kernels while training on CPU; the previous setting is restored."""
    previous, previous_warn = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)


class SASRecNetwork(nn.Module):
    """Embeddings, causal transformer blocks and the tied output layer.

    Index 0 is padding; catalogue item ``i`` is token ``i + 1``.
    """

    def __init__(self, n_items: int, config: SASRecConfig, text_matrix: np.ndarray | None, id_mask: np.ndarray | None):
        super().__init__()
        self.config = config
        hidden = config.hidden
        self.item_embedding = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        self.position_embedding = nn.Embedding(config.max_len, hidden)
        self.embedding_dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(
            hidden, config.heads, dim_feedforward=hidden, dropout=config.dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, config.blocks, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(hidden)
        if text_matrix is not None:
            self.register_buffer("text", torch.as_tensor(text_matrix, dtype=torch.float32))
            self.text_projection = nn.Linear(text_matrix.shape[1], hidden)
        else:
            self.text = None
        # opt-in dual view (LLM-ESR style): the ID and text parts run through separate streams
        self.dual = bool(getattr(config, "dual_view", False)) and text_matrix is not None
        if self.dual:
            self.text_position_embedding = nn.Embedding(config.max_len, hidden)
            self.text_encoder = nn.TransformerEncoder(layer, config.blocks, enable_nested_tensor=False)
            self.text_final_norm = nn.LayerNorm(hidden)
        self.register_buffer(
            "id_mask", torch.as_tensor(id_mask if id_mask is not None else np.ones(n_items), dtype=torch.float32)
        )
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_normal_(parameter)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def item_table(self) -> torch.Tensor:
        """Item representations, shape (n_items, hidden): ID part (masked) plus text part."""
        table = self.item_embedding.weight[1:]
        if not getattr(self.config, "use_id_embeddings", True):
            table = torch.zeros_like(table)
        table = table * self.id_mask[:, None]
        if self.dual:  # (n_items, 2 * hidden): the ID stream's half, then the text stream's
            return torch.cat([table, self.text_projection(self.text)], dim=1)
        if self.text is not None:
            table = table + self.text_projection(self.text)
        return table

    def forward(self, tokens: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (batch, length, hidden) of left-padded token sequences."""
        table = self.item_table() if table is None else table
        padded = torch.cat([torch.zeros_like(table[:1]), table], dim=0)
        real = tokens > 0
        length = tokens.shape[1]
        # a query may attend to earlier real items and to itself (a padding position attends
        # only to itself, so no row is fully masked)
        causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
        allowed = causal[None] & (real[:, None, :] | torch.eye(length, dtype=torch.bool, device=tokens.device)[None])
        mask = (~allowed).repeat_interleave(self.config.heads, dim=0)
        if self.dual:
            hidden = self.config.hidden
            streams = (
                (padded[:, :hidden], self.position_embedding, self.encoder, self.final_norm),
                (padded[:, hidden:], self.text_position_embedding, self.text_encoder, self.text_final_norm),
            )
            return torch.cat([self._stream(part[tokens], real, length, mask, *rest) for part, *rest in streams], dim=-1)
        return self._stream(padded[tokens], real, length, mask, self.position_embedding, self.encoder, self.final_norm)

    def _stream(self, states, real, length, mask, positions, encoder, norm) -> torch.Tensor:
        states = states * (self.config.hidden**0.5)
        states = states + positions.weight[self.config.max_len - length :][None]
        states = self.embedding_dropout(states) * real[..., None]
        states = encoder(states, mask=mask)
        return norm(states) * real[..., None]


def build_network(
    n_items: int, config: SASRecConfig, text_matrix: np.ndarray | None, id_mask: np.ndarray | None
) -> SASRecNetwork:
    """The network for ``n_items`` catalogue items (token 0 is padding)."""
    return SASRecNetwork(n_items, config, text_matrix, id_mask)


def left_pad(sequences: list[np.ndarray], length: int) -> np.ndarray:
    """Token matrix (len(sequences), length): the newest ``length`` items, shifted by one, left-padded."""
    out = np.zeros((len(sequences), length), dtype=np.int64)
    for row, items in enumerate(sequences):
        tail = items[-length:] if length else items[:0]
        if len(tail):
            out[row, length - len(tail) :] = tail + 1
    return out


def mask_seen_logits(
    logits: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor
) -> torch.Tensor:
    """``logits`` (one row per kept position, in ``keep``'s row-major order, one column per item) with
    every item the sequence holds up to that position set to -inf, except the position's own target.

    ``inputs``/``targets`` are (batch, length) item ids, 0 for padding; ids are 1-based, columns 0-based.
    The index pairs number about batch × length² / 2, so the mask costs little next to the logits."""
    length = inputs.shape[1]
    row_of = torch.full(keep.shape, -1, dtype=torch.long, device=logits.device)
    row_of[keep] = torch.arange(int(keep.sum()), device=logits.device)
    earlier = torch.tril(torch.ones(length, length, dtype=torch.bool, device=logits.device))  # [t, t'] = t' <= t
    items = inputs[:, None, :].expand(-1, length, -1)  # (batch, t, t') = inputs[b, t']
    chosen = earlier[None] & keep[:, :, None] & (items > 0) & (items != targets[:, :, None])
    b, t, t_earlier = chosen.nonzero(as_tuple=True)
    masked = logits.clone()
    masked[row_of[b, t], inputs[b, t_earlier] - 1] = float("-inf")
    return masked


class SampledSoftmax:
    """Sampled softmax with the logQ correction, for catalogues too big for the full softmax.

    Each call draws ``negatives`` items (shared by the batch) with probability proportional to
    ``(count + 1) ** alpha``, scores the targets against them, subtracts from every logit the log of
    its item's expected count among the draws (the correction that makes the sampled loss an unbiased
    stand-in for the full softmax), and masks a negative that is the row's own target.
    """

    def __init__(self, counts: np.ndarray, negatives: int, seed: int, device: torch.device, alpha: float = 0.75):
        weights = (np.asarray(counts, dtype=np.float64) + 1.0) ** alpha
        self.probs = torch.as_tensor(weights / weights.sum(), dtype=torch.float32, device=device)
        self.log_q = torch.log(self.probs * negatives)
        self.negatives = negatives
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def loss(self, states: torch.Tensor, table: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean sampled cross-entropy of ``states`` (rows) against item rows ``table``; ``targets`` 0-based."""
        drawn = torch.multinomial(self.probs, self.negatives, replacement=True, generator=self.generator)
        positive = (states * table[targets]).sum(-1) - self.log_q[targets]
        negative = states @ table[drawn].T - self.log_q[drawn]
        negative = negative.masked_fill(drawn[None, :] == targets[:, None], float("-inf"))
        logits = torch.cat([positive[:, None], negative], dim=1)
        return nn.functional.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long, device=states.device))


def training_windows(sequences: list[np.ndarray], config: SASRecConfig, rng: np.random.Generator):
    """Inputs and next-item targets (inputs are items[:-1], targets items[1:]), the newest
    ``max_len`` of each sequence, or a random stretch of a long one if ``random_windows``."""
    chosen = list(sequences)
    if config.random_windows:
        for i, sequence in enumerate(sequences):
            if len(sequence) > config.max_len + 1:
                start = int(rng.integers(0, len(sequence) - config.max_len))
                chosen[i] = sequence[start : start + config.max_len + 1]
    inputs = torch.as_tensor(left_pad([s[:-1] for s in chosen], config.max_len))
    targets = torch.as_tensor(left_pad([s[1:] for s in chosen], config.max_len))
    if config.loss_positions is not None and config.loss_positions < config.max_len:
        targets[:, : config.max_len - config.loss_positions] = 0
    return inputs, targets


def fold_into_average(network: nn.Module, average: dict | None, decay: float) -> tuple[dict, dict]:
    """Fold ``network``'s weights into the moving ``average`` (``weight_average``) and load the average
    into the network; returns (the training weights, the new average)."""
    current = {key: value.detach().clone() for key, value in network.state_dict().items()}
    if average is None:
        average = {key: value.clone() for key, value in current.items()}
    else:
        for key, value in current.items():
            if value.is_floating_point():
                average[key].mul_(decay).add_(value, alpha=1.0 - decay)
            else:
                average[key].copy_(value)
    network.load_state_dict(average)
    return current, average
