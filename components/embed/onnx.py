"""The ONNX backend: export the encoder (with its pooling) once, fuse it, optionally quantise it,
and open ONNX Runtime sessions on it.

onnxruntime, onnx and torch are imported where they are used: the torch backend needs none of them.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

from components.data.atomic import atomic_file, atomic_write_text
from components.embed.encoder import _load_torch_model, mean_pool
from components.errors import EncoderError

log = logging.getLogger(__name__)

ONNX_EXPORT_VERSION = 1
"""Bumped when the exported graph changes, so stale exports in a cache are rebuilt."""


def _onnx_session(onnx_path: Path, threads: int):
    """An ONNX Runtime CPU session on ``onnx_path`` with ``threads`` intra-op threads and every graph optimisation."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def ensure_onnx_export(path: Path, identity: dict, root: Path, *, quantize: str | None = None) -> Path:
    """The ONNX file for an encoder (and quantize mode), exported and optimised on first use.

    Lives at ``root/<encoder id>/<variant>.onnx`` beside a JSON note of how it was made; a file
    made by another export version or ONNX Runtime is rebuilt. Built in a scratch folder and
    written atomically (``atomic_file``), so concurrent workers never read a half-written export;
    a rebuild replaces the file, and the note is written only once the file is in place.
    """
    try:
        import onnxruntime
    except ImportError as exc:
        raise EncoderError("backend='onnx' needs onnxruntime and onnx: pip install onnxruntime onnx") from exc
    folder = Path(root) / identity["encoder_id"]
    variant = "model" + (f"-{quantize}" if quantize else "")
    target = folder / f"{variant}.onnx"
    note_path = folder / f"{variant}.json"
    note = {
        "export_version": ONNX_EXPORT_VERSION,
        "onnxruntime": onnxruntime.__version__,
        "weights_sha256": identity["weights_sha256"],
        "quantize": quantize,
    }
    if target.exists() and note_path.exists():
        try:
            if json.loads(note_path.read_text()) == note:
                return target
        except ValueError:
            pass  # an unreadable note: rebuild
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(dir=folder, prefix=".export-", ignore_cleanup_errors=True) as scratch,
        atomic_file(target, suffix=".onnx") as tmp,
    ):
        work = Path(scratch)
        if quantize == "ffn-int8":
            built = work / "quantized.onnx"
            _quantize_ffn(ensure_onnx_export(path, identity, root), built)  # from the (cached) fp32 export
        else:
            built = _export_optimised_onnx(path, work)
        os.replace(built, tmp)
    atomic_write_text(note_path, json.dumps(note, indent=2))
    log.info("exported %s to ONNX (%s) in %.1fs", identity["encoder_id"], variant, time.perf_counter() - started)
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
            return mean_pool(self.encoder(**named).last_hidden_state, named["attention_mask"])

    raw = work / "raw.onnx"
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
            str(raw),
            model_type="bert",
            num_heads=int(config.num_attention_heads),
            hidden_size=int(config.hidden_size),
            opt_level=1,
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

    def is_ffn(node) -> bool:
        if node.op_type != "MatMul":
            return False
        shape = shapes.get(node.input[1], ())
        return len(shape) == 2 and shape[0] != shape[1]

    ffn_nodes = [node.name for node in graph.node if is_ffn(node)]
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
