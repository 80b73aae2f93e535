"""Measure GPU encoding throughput of the embed stage's encoder at fp32, fp16 and bf16.

Synthesises 100,000 item texts from the ml-latest-small catalogue (each real item text, varied
with a suffix so lengths and tokens differ), encodes them with :class:`components.embed.TextEncoder`
on CUDA at each precision, and prints JSON: items/s per precision and agreement with fp32
(mean and minimum cosine, top-10 neighbour overlap on a 10,000-item sample).

    .venv/bin/python -m benchmarks.gpu_embed [--items 100000] [--batch-size 256] [--movielens DIR]

The MovieLens folder defaults to ../shared/data/movielens/ml-latest-small beside the project,
or LMRECSYS_BENCH_MOVIELENS. Needs nothing beyond the project's virtual environment.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.common import (
    EMBED_MOVIELENS_ENV,
    movielens_dir,
    movielens_texts,
    neighbour_overlap,
    quiet_environment,
    top_k_neighbours,
)

quiet_environment(TOKENIZERS_PARALLELISM="true")

import numpy as np  # noqa: E402

VARIATIONS = [
    "",
    " A film fans keep returning to.",
    " Watched again on a rainy evening.",
    " Recommended by a friend who loves this kind of story.",
    " Remastered edition with director's commentary.",
    " Often compared with the classics of its genre.",
    " Dubbed and subtitled in several languages.",
    " A quiet, slow-burning take on a familiar theme.",
    " 東京国際映画祭で上映された作品。",
    " Фильм, который стоит посмотреть.",
    " Shown at a summer open-air festival.",
]


def synthetic_texts(folder: Path, n: int) -> list[str]:
    """n texts: every MovieLens item text, then the same with varied suffixes, round-robin."""
    base = movielens_texts(folder)
    return [base[i % len(base)] + VARIATIONS[(i // len(base)) % len(VARIATIONS)] for i in range(n)]


def main() -> None:
    import torch

    from components.embed import TextEncoder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--movielens", default=str(movielens_dir(EMBED_MOVIELENS_ENV)))
    parser.add_argument("--dtypes", default="float32,float16,bfloat16")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"error": "CUDA is not available; this benchmark needs a GPU"}))
        sys.exit(2)

    texts = synthetic_texts(Path(args.movielens), args.items)
    report: dict = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "items": len(texts),
        "batch_size": args.batch_size,
        "results": {},
    }
    sample = np.random.default_rng(0).choice(len(texts), size=min(10_000, len(texts)), replace=False)
    reference = reference_neighbours = None
    dtypes = [d for d in args.dtypes.split(",") if d]
    dtypes = ["float32"] + [d for d in dtypes if d != "float32"]  # fp32 first: the agreement reference
    for dtype in dtypes:
        encoder = TextEncoder(None, device="cuda", dtype=dtype)
        encoder.encode(texts[: args.batch_size * 2], batch_size=args.batch_size)  # warm-up: kernels, allocator
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        vectors = encoder.encode(texts, batch_size=args.batch_size)  # returns host arrays: synchronised
        seconds = time.perf_counter() - started
        entry = {
            "seconds": round(seconds, 3),
            "items_per_s": round(len(texts) / seconds, 1),
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
        }
        if reference is None:
            reference, reference_neighbours = vectors, top_k_neighbours(vectors[sample])
        else:
            cosines = (vectors * reference).sum(axis=1)
            overlap = neighbour_overlap(top_k_neighbours(vectors[sample]), reference_neighbours)
            entry.update(cosine_mean=float(cosines.mean()), cosine_min=float(cosines.min()), top10_overlap=overlap)
        report["results"][dtype] = entry
        print(f"{dtype}: {entry['items_per_s']:.0f} items/s", file=sys.stderr)
        del encoder
        torch.cuda.empty_cache()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
