"""Which cheaper ONNX Runtime variants of the encoder keep agreement with fp32 (CPU).

Concluded: no variant kept ≥ 90% top-10 overlap and beat fp32 speed on AVX2, see docs/benchmarks/embeddings.md

The embedding target asks for 1.5x sentence-transformers' throughput with mean cosine >= 0.99 and
top-10 neighbour overlap >= 90% against fp32. On CPUs where fp32 matrix products already run near
peak, only lower precision can give that much. This script builds each variant from the
project's fused fp32 export, encodes all ml-latest-small item texts once with each (2 threads,
batch 64, one process, variants in turn), and reports items/s with cosine and top-10 overlap
against the fp32 export; then fp32 items/s by batch size.

    .venv/bin/python -m benchmarks.research.embed_quant_variants [--limit N] [--variants a,b] [--json out.json]

Variants:
  fp32            the project's optimised export (backend="onnx")
  ffn-int8        dynamic int8, per-channel weights, feed-forward MatMuls only (quantize="ffn-int8")
  all-int8        the same for every MatMul
  all-int8-u8w    every MatMul, unsigned 8-bit weights (the u8u8 kernels)
  smooth-int8     every MatMul after SmoothQuant scaling (alpha 0.5, 512 calibration texts)
  nbits8-b32      MatMulNBits, 8-bit weights in blocks of 32, int8 compute per block (needs onnx_ir)
  nbits4-b32      the same with 4-bit weights
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    EMBED_MOVIELENS_ENV,
    agreement,
    movielens_dir,
    movielens_texts,
    onnx_session,
    quiet_environment,
    top_k_neighbours,
)

quiet_environment(TOKENIZERS_PARALLELISM="false")

import numpy as np  # noqa: E402

VARIANTS = ["fp32", "ffn-int8", "all-int8", "all-int8-u8w", "smooth-int8", "nbits8-b32", "nbits4-b32"]


def matmul_names(path: str) -> tuple[list[str], list[str]]:
    """(every MatMul with a weight initializer, the feed-forward ones among them)."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    weighted = [n for n in graph.node if n.op_type == "MatMul" and len(shapes.get(n.input[1], ())) == 2]
    return [n.name for n in weighted], [n.name for n in weighted if shapes[n.input[1]][0] != shapes[n.input[1]][1]]


def smooth(fp32: str, names: set[str], texts: list[str], tokenizer, threads: int, out: str, alpha: float = 0.5) -> None:
    """SmoothQuant: per input channel s = max|x|^a / max|w|^(1-a); x/s by a Mul, w*s in the weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(fp32)
    targets = [n for n in model.graph.node if n.name in names]
    for node in targets:
        model.graph.output.append(helper.make_tensor_value_info(node.input[0], TensorProto.FLOAT, None))
    probe = str(Path(out).with_suffix(".calib.onnx"))
    onnx.save(model, probe)
    calibrate = onnx_session(probe, threads)
    sample = [texts[i] for i in np.random.default_rng(0).choice(len(texts), min(512, len(texts)), replace=False)]
    amax: dict[str, np.ndarray] = {}
    for start in range(0, len(sample), 64):
        batch = tokenizer(
            sample[start : start + 64], padding=True, truncation=True, max_length=128, return_tensors="np"
        )
        feeds = {i.name: batch[i.name].astype(np.int64) for i in calibrate.get_inputs()}
        mask = batch["attention_mask"].astype(bool)
        for node, value in zip(targets, calibrate.run([n.input[0] for n in targets], feeds)):
            peak = np.abs(value[mask] if value.ndim == 3 else value).max(axis=0)
            amax[node.input[0]] = np.maximum(amax.get(node.input[0], peak), peak)
    model = onnx.load(fp32)
    inits = {i.name: i for i in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        if node.name in names:
            weight = numpy_helper.to_array(inits[node.input[1]])
            activation_peak = np.maximum(amax[node.input[0]], 1e-5) ** alpha
            weight_peak = np.maximum(np.abs(weight).max(axis=1), 1e-5) ** (1 - alpha)
            scale = (activation_peak / weight_peak).astype(np.float32)
            scaled = numpy_helper.from_array((weight * scale[:, None]).astype(np.float32), node.input[1])
            inits[node.input[1]].CopyFrom(scaled)
            inverse = numpy_helper.from_array((1.0 / scale).astype(np.float32), node.name + "_smooth_inv")
            model.graph.initializer.append(inverse)
            smoothed = f"{node.input[0]}_{node.name}_smoothed"
            inputs = [node.input[0], node.name + "_smooth_inv"]
            nodes.append(helper.make_node("Mul", inputs, [smoothed], name=node.name + "_smooth"))
            node.input[0] = smoothed
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, out)


def build(variant: str, fp32: str, work: Path, texts, tokenizer, threads: int) -> str:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if variant == "fp32":
        return fp32
    out = str(work / f"{variant}.onnx")
    every, ffn = matmul_names(fp32)
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    if variant in ("ffn-int8", "all-int8", "all-int8-u8w"):
        weight = QuantType.QUInt8 if variant.endswith("u8w") else QuantType.QInt8
        nodes = ffn if variant == "ffn-int8" else every
        quantize_dynamic(fp32, out, per_channel=True, weight_type=weight, nodes_to_quantize=nodes, extra_options=extra)
    elif variant == "smooth-int8":
        smoothed = str(work / "smoothed.onnx")
        smooth(fp32, set(every), texts, tokenizer, threads, smoothed)
        quantize_dynamic(
            smoothed, out, per_channel=True, weight_type=QuantType.QInt8, nodes_to_quantize=every, extra_options=extra
        )
    elif variant.startswith("nbits"):
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer  # needs onnx_ir

        quantizer = MatMulNBitsQuantizer(
            onnx.load(fp32), bits=int(variant[5]), block_size=32, is_symmetric=True, accuracy_level=4
        )
        quantizer.process()
        quantizer.model.save_model_to_file(out, False)
    else:
        raise SystemExit(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    return out


def print_table(rows: list[dict]) -> None:
    print("\n| variant | items/s | vs fp32 | cosine mean / min | top-10 overlap |\n|---|---|---|---|---|")
    base = next((r["items_per_s"] for r in rows if r["variant"] == "fp32"), None)
    for r in rows:
        ratio = f"{r['items_per_s'] / base:.2f}x" if base else "-"
        print(
            f"| {r['variant']} | {r['items_per_s']:.0f} | {ratio} | {r['cosine_mean']:.4f} / {r['cosine_min']:.4f} "
            f"| {r['top10_overlap']:.1%} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="only the first N texts")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--batch-sizes", default="16,32,64,128", help="fp32 batch-size sweep ('' to skip)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from components.embed import TextEncoder

    texts = movielens_texts(movielens_dir(EMBED_MOVIELENS_ENV), args.limit)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        encoder = TextEncoder(None, backend="onnx", artifacts_dir=str(work / "artifacts"))
        fp32 = str(encoder.onnx_path)

        def encode(path: str, batch_size: int = 64) -> tuple[np.ndarray, float]:
            encoder.session = onnx_session(path, args.threads)
            encoder.encode(texts[:batch_size], batch_size=batch_size)  # warm-up
            started = time.perf_counter()
            vectors = encoder.encode(texts, batch_size=batch_size)
            return vectors, len(texts) / (time.perf_counter() - started)

        reference, _ = encode(fp32)
        neighbours = top_k_neighbours(reference)
        rows = []
        for variant in [v for v in args.variants.split(",") if v]:
            try:
                path = build(variant, fp32, work, texts, encoder.tokenizer, args.threads)
            except ImportError as exc:
                print(f"{variant}: skipped ({exc})", flush=True)
                continue
            vectors, rate = encode(path)
            rows.append({"variant": variant, "items_per_s": rate, **agreement(vectors, reference, neighbours)})
            print(json.dumps(rows[-1]), flush=True)
        sweep = []
        for size in [int(b) for b in args.batch_sizes.split(",") if b]:
            sweep.append({"batch_size": size, "items_per_s": encode(fp32, size)[1]})
            print(json.dumps(sweep[-1]), flush=True)
    print_table(rows)
    if args.json:
        report = {"texts": len(texts), "threads": args.threads, "variants": rows, "batch_sizes": sweep}
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
