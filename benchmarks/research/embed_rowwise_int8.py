"""Which int8 scheme keeps the encoder's neighbours, and does int8 pay off on this CPU at all.

Concluded: per-token int8 keeps 93.5% overlap; int8 is no faster than fp32 on Zen 1, see docs/benchmarks/embeddings.md

Part 1, accuracy. Every linear layer of the encoder (torch, fp32) is replaced by its simulated
int8 version ("fake quantisation": quantise, dequantise, multiply in fp32). Weights are always
int8, symmetric, one scale per output channel. Activations are quantised one of three ways:

  tensor   one asymmetric 8-bit range per tensor, as ONNX Runtime's dynamic quantisation does
  row      one asymmetric 8-bit range per token (row)
  rowsym   one symmetric 8-bit scale per token

All ml-latest-small item texts are encoded with each scheme and compared with fp32: mean and
minimum cosine, top-10 neighbour overlap. A simulation isolates the rounding error from any
kernel; it says which scheme can meet the agreement target, not how fast it runs.

Part 2, speed ceiling, on the encoder's own shapes (1,150 token rows, the size of a 64-text batch):

  torch-fp32      the fp32 product in torch, which sentence-transformers runs on
  fp32            the same in ONNX Runtime
  int8-kernel     the bare integer kernel (MatMulInteger, u8 activations, s8 weights): the most
                  int8 can gain on this CPU
  dynamic-int8    ONNX Runtime's dynamic int8 linear (one range per tensor), which the project's
                  ffn-int8 export uses
  rowsym-linear   a whole per-row symmetric int8 linear: quantise each row, integer product,
                  rescale. This is what the "rowsym" scheme costs in a graph. ONNX Runtime's
                  integer products take one activation zero point per tensor, so the asymmetric
                  per-row scheme would also need a correction term.

    .venv/bin/python -m benchmarks.research.embed_rowwise_int8 [--schemes tensor:all,row:all,...] [--threads 2]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from benchmarks.common import (
    EMBED_MOVIELENS_ENV,
    agreement,
    movielens_dir,
    movielens_texts,
    onnx_session,
    onnx_session_options,
    quiet_environment,
    top_k_neighbours,
)

# Kinds take turns in one process; threads that spin after their work would slow the next kind.
quiet_environment(TOKENIZERS_PARALLELISM="false", OMP_WAIT_POLICY="PASSIVE")

import numpy as np  # noqa: E402

DEFAULT_SCHEMES = "tensor:all,row:all,rowsym:all,row:ffn"
LAYER_SETS = {"all": {"qkv", "attn-out", "ffn1", "ffn2"}, "ffn": {"ffn1", "ffn2"}}
SHAPES = [(1150, 384, 1536), (1150, 1536, 384), (1150, 384, 384)]
"""(token rows, in, out): feed-forward up, feed-forward down, an attention projection."""


def layer_kind(name: str) -> str:
    if any(part in name for part in ("query", "key", "value")):
        return "qkv"
    if "attention.output" in name:
        return "attn-out"
    return "ffn1" if "intermediate" in name else "ffn2"


def quantise_weight(weight):
    scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
    return (weight / scale).round().clamp(-127, 127) * scale


def quantise_activation(x, mode: str):
    import torch

    if mode == "rowsym":
        scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / 127
        return (x / scale).round().clamp(-127, 127) * scale
    if mode == "tensor":
        low, high = torch.clamp(x.min(), max=0), torch.clamp(x.max(), min=0)
    elif mode == "row":
        low, high = x.amin(dim=-1, keepdim=True).clamp(max=0), x.amax(dim=-1, keepdim=True).clamp(min=0)
    else:
        raise ValueError(f"unknown activation mode {mode!r}; use tensor, row or rowsym")
    scale = ((high - low) / 255).clamp(min=1e-12)
    zero = (-low / scale).round()
    return ((x / scale).round() + zero).clamp(0, 255).sub(zero) * scale


def accuracy(schemes: list[tuple[str, str]], threads: int) -> list[dict]:
    import torch

    from components.embed import TextEncoder

    torch.set_num_threads(threads)
    texts = movielens_texts(movielens_dir(EMBED_MOVIELENS_ENV))
    encoder = TextEncoder(None)
    started = time.perf_counter()
    reference = encoder.encode(texts)
    print(f"fp32 reference: {len(texts)} texts in {time.perf_counter() - started:.0f}s", flush=True)
    neighbours = top_k_neighbours(reference)
    linears = {name: m for name, m in encoder.model.named_modules() if isinstance(m, torch.nn.Linear)}
    plain = {name: m.forward for name, m in linears.items()}
    results = []
    for mode, layers in schemes:
        wanted = LAYER_SETS[layers]
        for name, module in linears.items():
            if layer_kind(name) in wanted:
                weight, bias = quantise_weight(module.weight.data), module.bias
                module.forward = lambda x, w=weight, b=bias, m=mode: torch.nn.functional.linear(
                    quantise_activation(x, m), w, b
                )
            else:
                module.forward = plain[name]
        vectors = encoder.encode(texts)
        row = {"activations": mode, "layers": layers, **agreement(vectors, reference, neighbours)}
        print(json.dumps(row), flush=True)
        results.append(row)
    for name, module in linears.items():
        module.forward = plain[name]
    return results


def _linear_graph(kind: str, weight: np.ndarray) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    k, n = weight.shape
    scale = (np.abs(weight).max(axis=0) / 127).astype(np.float32)
    quantised = np.round(weight / scale).astype(np.int8)
    consts = {
        "W": weight,
        "Wq": quantised,
        "ws": scale,
        "axis": np.array([-1], np.int64),
        "inv127": np.float32(1 / 127),
        "one": np.float32(1),
        "tiny": np.float32(1e-12),
        "z128": np.uint8(128),
        "z0": np.zeros(n, np.int8),
    }
    if kind == "fp32":
        x_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
        nodes = [helper.make_node("MatMul", ["X", "W"], ["Y"])]
    elif kind == "int8-kernel":
        x_type, y_type = TensorProto.UINT8, TensorProto.INT32
        nodes = [helper.make_node("MatMulInteger", ["X", "Wq", "z128"], ["Y"])]
    elif kind == "dynamic-int8":
        x_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
        nodes = [helper.make_node("DynamicQuantizeMatMul", ["X", "Wq", "ws", "z0"], ["Y"], domain="com.microsoft")]
    elif kind == "rowsym-linear":
        x_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
        nodes = [
            helper.make_node("Abs", ["X"], ["absolute"]),
            helper.make_node("ReduceMax", ["absolute", "axis"], ["peak"], keepdims=1),
            helper.make_node("Mul", ["peak", "inv127"], ["raw_scale"]),
            helper.make_node("Max", ["raw_scale", "tiny"], ["row_scale"]),
            helper.make_node("Div", ["X", "row_scale"], ["scaled"]),
            helper.make_node("QuantizeLinear", ["scaled", "one", "z128"], ["Xq"]),
            helper.make_node(
                "MatMulIntegerToFloat", ["Xq", "Wq", "one", "ws", "z128"], ["partial"], domain="com.microsoft"
            ),
            helper.make_node("Mul", ["partial", "row_scale"], ["Y"]),
        ]
    else:
        raise ValueError(kind)
    used = {name for node in nodes for name in node.input}
    graph = helper.make_graph(
        nodes,
        kind,
        [helper.make_tensor_value_info("X", x_type, [None, k])],
        [helper.make_tensor_value_info("Y", y_type, [None, n])],
        [numpy_helper.from_array(np.asarray(v), name) for name, v in consts.items() if name in used],
    )
    opsets = [helper.make_opsetid("", 19), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def speed(threads: int, repeats: int = 10, rounds: int = 7) -> list[dict]:
    """Per shape, every kind in turn for each round, so a slow moment hits all kinds alike; the
    best round of each kind counts."""
    import torch

    torch.set_num_threads(threads)
    options = onnx_session_options(threads)  # every graph optimisation, ONNX Runtime's default too
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    rng = np.random.default_rng(0)
    results = []
    for rows, k, n in SHAPES:
        weight = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
        x = rng.standard_normal((rows, k)).astype(np.float32)
        integers = rng.integers(0, 256, (rows, k)).astype(np.uint8)
        feeds = {"fp32": x, "int8-kernel": integers, "dynamic-int8": x, "rowsym-linear": x}
        runners = {}
        for kind, feed in feeds.items():
            session = onnx_session(_linear_graph(kind, weight), threads, options)
            runners[kind] = lambda s=session, f=feed: s.run(None, {"X": f})
        tx, tw = torch.from_numpy(x), torch.from_numpy(weight)
        runners["torch-fp32"] = lambda a=tx, b=tw: torch.matmul(a, b)
        timing = dict.fromkeys(runners, float("inf"))
        with torch.inference_mode():
            for run in runners.values():
                for _ in range(3):
                    run()
            for _ in range(rounds):
                for kind, run in runners.items():
                    started = time.perf_counter()
                    for _ in range(repeats):
                        run()
                    timing[kind] = min(timing[kind], (time.perf_counter() - started) / repeats)
        row = {
            "shape": f"{rows}x{k} @ {k}x{n}",
            **{f"{kind}_ms": round(1000 * t, 2) for kind, t in timing.items()},
            "fp32_gflops": round(2 * rows * k * n / timing["fp32"] / 1e9, 1),
            "torch_fp32_gflops": round(2 * rows * k * n / timing["torch-fp32"] / 1e9, 1),
            "int8_kernel_speedup": round(timing["fp32"] / timing["int8-kernel"], 2),
            "dynamic_int8_speedup": round(timing["fp32"] / timing["dynamic-int8"], 2),
            "rowsym_linear_speedup": round(timing["fp32"] / timing["rowsym-linear"], 2),
        }
        print(json.dumps(row), flush=True)
        results.append(row)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--schemes", default=DEFAULT_SCHEMES, help="comma-separated activations:layers, e.g. row:all,tensor:ffn"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    schemes = []
    for item in args.schemes.split(","):
        mode, _, layers = item.partition(":")
        if mode not in ("tensor", "row", "rowsym") or layers not in LAYER_SETS:
            parser.error(f"bad scheme {item!r}: use tensor|row|rowsym : {'|'.join(LAYER_SETS)}")
        schemes.append((mode, layers))
    cpu_flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "avx512_vnni": "avx512_vnni" in cpu_flags,
            "avx_vnni": "avx_vnni" in cpu_flags,
            "processor": platform.processor(),
        },
        "threads": args.threads,
        "speed": speed(args.threads),
        "accuracy": [] if args.skip_accuracy else accuracy(schemes, args.threads),
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
