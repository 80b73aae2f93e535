"""SASRec and LM-SASRec: causal transformers over a user's item sequence.

SASRec (Kang & McAuley 2018) reads the history oldest → newest with causal self-attention and
predicts the next item at every position. Training uses cross-entropy over the whole catalogue
(full softmax), not one sampled negative: Klenitskiy & Vasilev (2023) and gSASRec show sampled
binary losses underrate the model. Item input and output embeddings are tied.

LM-SASRec represents each item as its ID embedding plus a learned linear projection of its frozen
text vector, PCA-whitened to a few dimensions first (raw sentence embeddings are anisotropic:
they crowd into a narrow cone, which whitening spreads out). An item with no training
interactions has its ID embedding masked to zero, so it is represented by its text alone and can
still be recommended; an item with no text (a zero row from the embed stage) is represented by its
ID embedding alone.

Early stopping and honest evaluation. ``fit`` receives only histories, so it holds out each
user's last interaction itself: the network trains on everything before it and is scored
(NDCG@10, full ranking, seen items excluded) on the held-out items after every epoch; the best
epoch's weights are kept. Fitted on the evaluation split's test-side training data, the held-out
item is exactly each user's validation item, so early stopping never sees the test item; on the
validation side it is the item before the validation item. The held-out item is never a
training target, but at scoring time it is part of the history the model reads, as the protocol
allows. Setting ``epochs`` instead trains that many epochs on every interaction with no hold-out
(for example the epoch count an earlier early-stopped fit found).

Training is seeded and deterministic on CPU, shows a progress bar, and runs on CUDA when present.
"""

from __future__ import annotations

import copy
import logging
import time

import numpy as np

from components.data.dataset import History, InteractionData
from components.embed import has_text
from components.evaluation.metrics import per_user_metrics, target_ranks
from components.models.base import TEXT_DIM, DataSize, Recommender
from components.models.lm_content import fit_whitening, normalise_rows
from components.models.sasrec_config import LMSASRecConfig, SASRecConfig

log = logging.getLogger(__name__)


class SASRec(Recommender):
    """Causal self-attention over the item sequence, trained with full-softmax cross-entropy."""

    name = "sasrec"
    Config = SASRecConfig
    fits_once = True
    supports_warm_start = True
    whitening: tuple[np.ndarray, np.ndarray] | None = None
    network = None

    def _text_matrix(self, data: InteractionData, item_vectors: np.ndarray | None) -> np.ndarray | None:
        return None

    def memory_needs(self, size: DataSize) -> int:
        """Item rows with their gradients and Adam moments, the text vectors, and the full-softmax logits
        of one batch (forward, softmax and gradient)."""
        config, items = self.config, size.items
        positions = min(config.loss_positions or config.max_len, config.max_len)
        rows = 16 * items * config.hidden + (4 * TEXT_DIM * 2 * items if self.uses_text else 0)
        scored = config.negatives + 1 if self.samples_softmax(items) else items
        return super().memory_needs(size) + rows + 12 * config.batch_size * positions * scored

    def samples_softmax(self, n_items: int) -> bool:
        """Whether training at this catalogue size uses the sampled softmax (``sampled_softmax_above``)."""
        threshold = self.config.sampled_softmax_above
        return threshold is not None and n_items > threshold

    def fit(self, data: InteractionData, item_vectors: np.ndarray | None = None) -> SASRec:
        import torch

        from components.models.sasrec_network import build_network, deterministic

        config = self.config
        self.n_items = data.n_items
        self.popularity = data.item_counts().astype(np.float32)
        warm, self._warm = getattr(self, "_warm", None), None
        if warm is None:
            self.whitening = None  # a cold fit whitens this catalogue afresh
        text_matrix = self._text_matrix(data, item_vectors)
        device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if config.threads:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        rng = np.random.default_rng(config.seed)

        train_sequences, val_histories, val_targets = [], [], []
        for history in data.histories:
            items = history.items
            if config.epochs is None and len(items) >= config.min_history_to_validate:
                val_histories.append(history.head(-1))
                val_targets.append(int(items[-1]))
                items = items[:-1]
            if len(items) >= 2:
                train_sequences.append(items)
        # the ID embedding of an item never seen in training is masked out: text alone represents it
        id_mask = (self.popularity > 0).astype(np.float32)
        with deterministic(device.type == "cpu"):
            self.network = build_network(data.n_items, config, text_matrix, id_mask).to(device)
            self.device = device
            self.validation_curve: list[float] = []
            self.warm_start_score: float | None = None
            if warm is not None:
                self._load_warm(*warm)
            if not train_sequences:
                log.warning("%s: no history has two interactions; the model stays at its initialisation", self.name)
                self.best_epoch = 0
                return self
            early_stopping = config.epochs is None and len(val_targets) > 0
            self._train(
                train_sequences,
                val_histories,
                np.array(val_targets, dtype=np.int64),
                rng,
                total=config.epochs or config.max_epochs,
                early_stopping=early_stopping,
                patience=config.warm_patience if warm is not None else config.patience,
                score_start=warm is not None and early_stopping,
                average_from_start=warm is not None,
            )
        return self

    def warm_start(self, source: Recommender, item_map: np.ndarray) -> None:
        """Start the next fit from ``source``'s weights (an earlier fit of the same kind).

        Items ``source`` knew keep their learned ID rows; the others start from zero, so an
        LM-SASRec represents them by their text projection alone. Every other weight is copied.
        The text vectors are whitened with ``source``'s whitening, so its projection still fits.
        """
        from components.errors import WarmStartIncompatible

        if type(source) is not type(self):
            raise WarmStartIncompatible(f"the earlier model is {source.name}, not {self.name}")
        fields = (
            "hidden",
            "blocks",
            "heads",
            "max_len",
            "text_dim",
            "normalise_text",
            "use_id_embeddings",
            "dual_view",
        )
        for field in fields:
            mine, theirs = getattr(self.config, field, None), getattr(source.config, field, None)
            if mine != theirs:
                raise WarmStartIncompatible(f"{field} differs: {theirs!r} in the earlier model, {mine!r} now")
        if self.uses_text and getattr(source, "whitening", None) is None:
            raise WarmStartIncompatible("the earlier model does not record its text whitening")
        self.whitening = getattr(source, "whitening", None)
        self._warm = (source, np.asarray(item_map, dtype=np.int64))

    def _load_warm(self, source: SASRec, item_map: np.ndarray) -> None:
        import torch

        from components.errors import WarmStartIncompatible

        own = self.network.state_dict()
        for key, value in source.network.state_dict().items():
            if key in ("text", "id_mask"):  # derived from this run's catalogue and training data
                continue
            if key not in own:
                raise WarmStartIncompatible(f"the earlier model has a weight {key!r} this one lacks")
            if key == "item_embedding.weight":
                rows = own[key].clone()
                if self.network.text is not None:
                    rows.zero_()  # new items: the text projection alone
                known = torch.as_tensor(np.flatnonzero(item_map >= 0))
                rows[known + 1] = value.to(rows.device)[torch.as_tensor(item_map[item_map >= 0]) + 1]
                rows[0] = 0
                own[key] = rows
            elif own[key].shape != value.shape:
                raise WarmStartIncompatible(f"{key} has shape {tuple(value.shape)}, expected {tuple(own[key].shape)}")
            else:
                own[key] = value.clone()
        self.network.load_state_dict(own)
        log.info(
            "%s: warm start, %d of %d items known to the earlier model",
            self.name,
            int((item_map >= 0).sum()),
            len(item_map),
        )

    def continue_training(self, data: InteractionData) -> SASRec:
        """The serving fit: ``serve_epochs`` more epochs on every interaction, no hold-out.

        The evaluation fit never trained on each user's two newest interactions; these epochs add
        them, which matters most for a next-item model. The popularity fallback and the ID mask
        follow the full data.
        """
        import torch

        from components.models.sasrec_network import deterministic

        config = self.config
        if config.serve_epochs == 0 or self.network is None:
            return self
        self.popularity = data.item_counts().astype(np.float32)
        sequences = [h.items for h in data.histories if len(h.items) >= 2]
        if not sequences:
            return self
        torch.manual_seed(config.seed + 1)
        with torch.no_grad():
            self.network.id_mask.copy_(torch.as_tensor((self.popularity > 0).astype(np.float32)))
        with deterministic(self.device.type == "cpu"):
            best_epoch, curve, start = self.best_epoch, list(self.validation_curve), self.warm_start_score
            self._train(
                sequences,
                [],
                np.zeros(0, np.int64),
                np.random.default_rng(config.seed + 1),
                total=config.serve_epochs,
                early_stopping=False,
                patience=1,
                score_start=False,
                average_from_start=True,
            )
            self.best_epoch, self.validation_curve, self.warm_start_score = best_epoch, curve, start
        self.serve_epochs_done = config.serve_epochs
        return self

    def fit_summary(self) -> dict:
        return {
            "best_epoch": int(self.best_epoch),
            "epochs_run": int(getattr(self, "epochs_run", 0)),
            "seconds_per_epoch": round(float(getattr(self, "train_seconds_per_epoch", 0.0)), 3),
            "warm_start_score": self.warm_start_score,
            "validation_curve": [round(v, 5) for v in self.validation_curve],
        }

    def _epoch(self, inputs, targets, optimiser, rng: np.random.Generator, epoch: int) -> float:
        """One pass over the sequences in random order; returns the mean training loss."""
        import math

        import torch

        from components.errors import TrainingDiverged
        from components.models.sasrec_network import mask_seen_logits

        config, network, device = self.config, self.network, self.device
        sampler = getattr(self, "_sampler", None)
        network.train()
        order = rng.permutation(len(inputs))
        losses = []
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            batch_inputs, batch_targets = inputs[batch].to(device), targets[batch].to(device)
            # drop leading all-padding columns: shorter batches run faster
            used = int((batch_inputs > 0).any(dim=0).to(torch.int8).argmax())
            batch_inputs, batch_targets = batch_inputs[:, used:], batch_targets[:, used:]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bfloat16):
                table = network.item_table()
                states = network(batch_inputs, table)
                keep = batch_targets > 0
                if sampler is None:
                    logits = states[keep] @ table.T
            if sampler is None:
                if config.mask_seen:
                    logits = mask_seen_logits(logits, batch_inputs, batch_targets, keep)
                loss = torch.nn.functional.cross_entropy(logits.float(), batch_targets[keep] - 1)
            else:
                loss = sampler.loss(states[keep].float(), table.float(), batch_targets[keep] - 1)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"{self.name}: the training loss became {value} in epoch {epoch}; lower lr or check the data"
                )
            optimiser.step()
            losses.append(value)
        return float(np.mean(losses))

    def _train(
        self,
        sequences: list[np.ndarray],
        val_histories: list[History],
        val_targets: np.ndarray,
        rng: np.random.Generator,
        *,
        total: int,
        early_stopping: bool,
        patience: int,
        score_start: bool,
        average_from_start: bool = False,
    ) -> None:
        """Epochs of full-softmax (or sampled-softmax) training; with early stopping the best epoch's weights are kept
        (epoch 0, the starting weights, competes when ``score_start``: a warm start)."""
        import torch
        from tqdm.auto import tqdm

        from components.models.sasrec_network import SampledSoftmax, fold_into_average, training_windows

        config, network = self.config, self.network
        self._sampler = None
        if self.samples_softmax(self.n_items):
            self._sampler = SampledSoftmax(self.popularity, config.negatives, config.seed, self.device)
        inputs, targets = training_windows(sequences, config, rng)
        optimiser = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        best_score, best_state, best_epoch, stale = -1.0, None, 0, 0
        # a fit that starts from trained weights (a warm start, the serving epochs) continues their average
        average = copy.deepcopy(network.state_dict()) if config.weight_average and average_from_start else None
        if score_start:
            best_score = self.warm_start_score = self._validation_ndcg(val_histories, val_targets)
            best_state = copy.deepcopy(network.state_dict())
        bar = tqdm(
            range(1, total + 1), desc=f"training {self.name}", unit="epoch", disable=not config.progress, leave=False
        )
        started = time.perf_counter()
        for epoch in bar:
            if config.random_windows and epoch > 1:
                inputs, targets = training_windows(sequences, config, rng)
            postfix = {"loss": f"{self._epoch(inputs, targets, optimiser, rng, epoch):.3f}"}
            if config.weight_average:
                current, average = fold_into_average(network, average, config.weight_average)
            if early_stopping:
                score = self._validation_ndcg(val_histories, val_targets)
                self.validation_curve.append(score)
                postfix["val_ndcg@10"] = f"{score:.4f}"
                if score > best_score:
                    best_score, best_epoch, stale = score, epoch, 0
                    best_state = copy.deepcopy(network.state_dict())
                else:
                    stale += 1
            bar.set_postfix(postfix)
            if config.weight_average and (early_stopping or epoch < total):
                network.load_state_dict(current)  # training goes on from its own weights, not the average
            if early_stopping and stale >= patience:
                break
        bar.close()
        if early_stopping and best_state is not None:
            network.load_state_dict(best_state)
        self.best_epoch = best_epoch if early_stopping else total
        self.epochs_run = epoch
        self.train_seconds_per_epoch = (time.perf_counter() - started) / max(epoch, 1)
        if early_stopping:
            log.info(
                "%s: best epoch %d of %d (validation NDCG@10 %.4f), %.2fs per epoch",
                self.name,
                self.best_epoch,
                epoch,
                best_score,
                self.train_seconds_per_epoch,
            )
        else:
            log.info(
                "%s: %d epochs on every interaction, %.2fs per epoch", self.name, epoch, self.train_seconds_per_epoch
            )

    def _validation_ndcg(self, histories: list[History], targets: np.ndarray) -> float:
        ranks = target_ranks(self.score(histories), histories, targets)
        return float(per_user_metrics(ranks)["ndcg@10"].mean())

    def score(self, histories: list[History], *, batch_size: int = 256) -> np.ndarray:
        import torch

        from components.models.sasrec_network import left_pad

        scores = np.empty((len(histories), self.n_items), dtype=np.float32)
        network = self.network.eval()
        with torch.inference_mode():
            table = self._scoring_table(network)
            for start in range(0, len(histories), batch_size):
                chunk = histories[start : start + batch_size]
                lengths = [min(len(h), self.config.max_len) for h in chunk]
                width = max(max(lengths), 1)
                tokens = torch.as_tensor(left_pad([h.items for h in chunk], width), device=self.device)
                last = network(tokens, table)[:, -1]
                block = (last @ table.T).float().cpu().numpy()
                for row, length in enumerate(lengths):
                    if length == 0:  # nothing to attend to: fall back to training popularity
                        block[row] = self.popularity
                scores[start : start + len(chunk)] = block
        return scores

    def _scoring_table(self, network):
        """The item table for scoring, computed once per set of weights.

        Projecting every item's text vector costs more than scoring a small batch of histories,
        and the weights only change while training. The cache is keyed by each parameter's and
        buffer's in-place version counter, which every optimiser step and ``load_state_dict``
        bumps, so a changed weight always recomputes it.
        """
        key = tuple((id(t), t._version) for t in (*network.parameters(), *network.buffers()))
        cached = getattr(self, "_table_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        table = network.item_table()
        self._table_cache = (key, table)  # one assignment: a reader on another thread sees old or new
        return table

    def state(self) -> dict[str, np.ndarray]:
        arrays = {"net." + key: value.detach().cpu().numpy() for key, value in self.network.state_dict().items()}
        arrays["popularity"] = self.popularity
        arrays["best_epoch"] = np.array(self.best_epoch, dtype=np.int64)
        arrays["validation_curve"] = np.array(self.validation_curve, dtype=np.float64)
        if getattr(self, "whitening", None) is not None:
            arrays["whiten_mean"], arrays["whiten_projection"] = self.whitening
        return arrays

    def set_state(self, arrays: dict[str, np.ndarray]) -> None:
        import torch

        from components.models.sasrec_network import build_network

        self.popularity = arrays["popularity"]
        self.best_epoch = int(arrays["best_epoch"])
        self.validation_curve = arrays["validation_curve"].tolist()
        self.warm_start_score = None
        self.whitening = (arrays["whiten_mean"], arrays["whiten_projection"]) if "whiten_mean" in arrays else None
        text = arrays.get("net.text")
        self.device = torch.device(self.config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.network = build_network(self.n_items, self.config, text, arrays["net.id_mask"]).to(self.device)
        self.network.load_state_dict(
            {key[4:]: torch.as_tensor(value) for key, value in arrays.items() if key.startswith("net.")}
        )


class LMSASRec(SASRec):
    """SASRec whose items are an ID embedding plus a projection of whitened frozen text vectors."""

    name = "lm_sasrec"
    Config = LMSASRecConfig
    uses_text = True

    def _text_matrix(self, data: InteractionData, item_vectors: np.ndarray | None) -> np.ndarray:
        if item_vectors is None or len(item_vectors) != data.n_items:
            raise ValueError("lm_sasrec needs item text vectors aligned with the catalogue")
        if not np.isfinite(item_vectors).all():
            bad = int((~np.isfinite(item_vectors).all(axis=1)).sum())
            raise ValueError(f"lm_sasrec: {bad} item text vector(s) are not finite; re-run the embed stage")
        with_text = has_text(item_vectors)
        if getattr(self, "whitening", None) is None:  # a warm start brings the earlier model's
            self.whitening = fit_whitening(item_vectors[with_text], self.config.text_dim)
        text = ((item_vectors - self.whitening[0]) @ self.whitening[1]).astype(np.float32)
        text = normalise_rows(text) if self.config.normalise_text else text
        text[~with_text] = 0.0  # an item with no text: its ID embedding alone represents it
        return text
