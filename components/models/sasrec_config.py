"""Settings of SASRec and LM-SASRec (architecture, optimiser, early stopping, text input)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class SASRecConfig(BaseModel):
    """Architecture, optimiser and early-stopping settings of SASRec."""

    hidden: int = Field(64, ge=1)
    """Width of item embeddings and of the transformer."""
    blocks: int = Field(2, ge=1)
    """Number of causal self-attention blocks."""
    heads: int = Field(1, ge=1)
    """Attention heads per block (must divide ``hidden``)."""
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    """Dropout on embeddings, attention and the feed-forward layers."""
    max_len: int = Field(50, ge=1)
    """Only the newest this many items of a history are read."""
    batch_size: int = Field(32, ge=1)
    """Sequences per optimiser step."""
    lr: float = Field(2e-3, gt=0)
    """Adam learning rate."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    max_epochs: int = Field(200, ge=1)
    """Upper bound on training epochs when early stopping."""
    patience: int = Field(10, ge=1)
    """Stop after this many epochs without a better validation NDCG@10."""
    loss_positions: int | None = Field(None, ge=1)
    """Only each sequence's newest this many positions are training targets (None: all). Full
    softmax costs positions × catalogue × hidden per epoch; fewer positions trade data for speed."""
    sampled_softmax_above: int | None = Field(200_000, ge=0)
    """Above this many catalogue items, train with sampled softmax instead of the full softmax: each
    batch scores its targets against ``negatives`` items drawn by popularity, with the logQ correction
    (the log of each item's sampling probability is subtracted), and accidental hits masked. None:
    always the full softmax; 0: always sampled. docs/models.md has its quality cost at 1×."""
    negatives: int = Field(1024, ge=1)
    """Items sampled per batch for the sampled softmax."""
    bfloat16: bool = False
    """Run the forward pass under bfloat16 autocast (faster on CPUs with AVX-512 BF16 and on GPUs)."""
    random_windows: bool = True
    """Each epoch, a history longer than ``max_len`` contributes a random window of it rather than
    always its newest ``max_len`` items (the newest window is still what is scored)."""
    weight_average: float = Field(0.0, ge=0.0, lt=1.0)
    """Decay of an exponential moving average of the weights, updated after every epoch (0: off).
    With it on, validation scores the averaged weights, early stopping keeps the best average, and a
    fit without early stopping ends on the average. 0.8 averages over about the last five epochs."""
    mask_seen: bool = False
    """Leave the items a sequence already holds (up to each position) out of that position's training
    softmax, as ranking leaves seen items out of a served list; a target that repeats an earlier item is
    kept. Off: seen items are negatives like any other."""
    epochs: int | None = Field(None, ge=1)
    """Train exactly this many epochs on every interaction, with no hold-out and no early stopping."""
    serve_epochs: int = Field(2, ge=0)
    """Epochs the served model trains on every interaction, continuing from the evaluation fit
    (which early-stopped on each user's validation item and never trained on the newest two
    interactions); 0 serves the evaluation fit unchanged. See docs/models.md, "One fit"."""
    warm_patience: int = Field(3, ge=1)
    """Patience of a fit that starts from an earlier model's weights (see ``warm_start``)."""
    min_history_to_validate: int = Field(2, ge=2)
    """Users with at least this many interactions give their last one to early stopping."""
    seed: int = 42
    """Seeds parameter initialisation, dropout and batch order."""
    device: str | None = None
    """torch device; None picks CUDA when available, else CPU."""
    threads: int | None = Field(None, ge=1)
    """CPU threads for torch; None leaves torch's default."""
    progress: bool = True
    """Show a progress bar over epochs."""


class LMSASRecConfig(SASRecConfig):
    """SASRec settings plus how the frozen text vectors enter the item representation."""

    batch_size: int = Field(64, ge=1)
    """Sequences per optimiser step (64 with lr 1e-3 validated best for LM-SASRec)."""
    lr: float = Field(1e-3, gt=0)
    """Adam learning rate."""

    text_dim: int | None = Field(64, ge=1)
    """PCA-whiten the text vectors onto this many components; None uses the raw vectors."""
    normalise_text: bool = True
    """Scale each (whitened) text vector to unit length before the projection. Whitened
    components have unit variance, so unnormalised vectors are ~sqrt(text_dim) long and swamp the
    ID embeddings; raw encoder vectors are unit length already."""
    use_id_embeddings: bool = True
    """Add a learned ID embedding to the projected text vector (False: text only)."""
    dual_view: bool = False
    """Opt-in LLM-ESR-style dual view: the ID embeddings and the projected text vectors run
    through two separate transformer streams whose outputs (and item representations) are
    concatenated, instead of being summed into one stream. It costs more per epoch (two streams), and
    on ml-latest-small it scored below the single stream (docs/benchmarks/quality.md)."""
