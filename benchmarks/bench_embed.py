"""Benchmark the embed stage on CPU: our encoder paths against sentence-transformers' ``encode``.

Every path encodes the same texts (all ml-latest-small item texts, ordered by item id) with the
same thread count. Each path runs in its own child process, so its peak RSS is its own; the
children take turns for several rounds so load from other processes hits every path alike, and
the best round counts. Agreement (cosine, top-10 neighbours) is against our fp32 torch path.
The torch paths also report batch invariance: the first texts encoded one at a time against the
same texts in the full pass (share of bit-identical vectors, largest difference).
Finally the incremental re-run: embed_items on the full catalogue, then again after 10 edited
titles, through the real cache.

Paths: ``torch-fp32``, ``torch-auto`` (``embed.precision: auto``: bf16 autocast on a CPU with
bf16 instructions, else fp32), ``sentence-transformers`` (when installed), ``onnx-fp32``,
``onnx-ffn-int8``, and on a CPU with AMX ``torch-bf16-no-amx`` (bf16 with oneDNN held to its
AVX-512-BF16 kernels, as on CPUs without AMX).

    .venv/bin/python -m benchmarks.bench_embed [--rounds 3] [--threads N] [--limit N] [--paths a,b] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    EMBED_MOVIELENS_ENV,
    agreement,
    movielens_dir,
    movielens_texts,
    onnx_session,
    own_peak_rss_mb,
    quiet_environment,
    top_k_neighbours,
)

quiet_environment(TOKENIZERS_PARALLELISM="false")

import numpy as np  # noqa: E402

from components.embed import cpu_flags  # noqa: E402  (light: torch is imported only in the children)

PATHS = {
    "torch-fp32": {"backend": "torch", "precision": "fp32"},
    "torch-auto": {"backend": "torch", "precision": "auto"},
    "sentence-transformers": {},
    "onnx-fp32": {"backend": "onnx"},
    "onnx-ffn-int8": {"backend": "onnx", "quantize": "ffn-int8"},
    "torch-bf16-no-amx": {"backend": "torch", "precision": "bf16"},
}
PATH_ENV = {"torch-bf16-no-amx": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}}
"""Environment of a path's child process (oneDNN reads its ISA limit once, at start)."""
BATCH_SIZE = 64
INVARIANCE_TEXTS = 300
"""How many texts the torch paths also encode one at a time, to check batch invariance."""


def default_paths() -> list[str]:
    """Every path this machine can run: sentence-transformers if installed, the no-AMX path on AMX CPUs."""
    import importlib.util

    names = list(PATHS)
    if importlib.util.find_spec("sentence_transformers") is None:
        names.remove("sentence-transformers")
    if "amx_bf16" not in cpu_flags():
        names.remove("torch-bf16-no-amx")
    return names


def load_path(name: str, threads: int, artifacts: str):
    """(encode function, our TextEncoder or None for sentence-transformers) for one path."""
    import torch

    if name == "sentence-transformers":
        from sentence_transformers import SentenceTransformer

        from components.embed import default_encoder_path

        model = SentenceTransformer(str(default_encoder_path()), device="cpu", local_files_only=True)
        torch.set_num_threads(threads)

        def encode(batch: list[str]) -> np.ndarray:
            return model.encode(
                batch, batch_size=BATCH_SIZE, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
            )

        return encode, None
    from components.embed import TextEncoder

    encoder = TextEncoder(None, artifacts_dir=artifacts, **PATHS[name])
    torch.set_num_threads(threads)  # TextEncoder sets it from the machine; the benchmark pins it
    if encoder.session is not None:
        encoder.session = onnx_session(str(encoder.onnx_path), threads)

    def encode(batch: list[str]) -> np.ndarray:
        return encoder.encode(batch, batch_size=BATCH_SIZE)

    return encode, encoder


def run_worker(name: str, threads: int, limit: int | None, artifacts: str, out: str) -> None:
    """Child process: load one path, warm it up, time one full pass, save vectors, print JSON."""
    import torch  # noqa: F401  (imported before the timed load, as the paths' own imports are not)

    texts = movielens_texts(movielens_dir(EMBED_MOVIELENS_ENV), limit)
    load_started = time.perf_counter()
    encode, encoder = load_path(name, threads, artifacts)
    load_seconds = time.perf_counter() - load_started
    encode(texts[:BATCH_SIZE])  # warm-up: first-call allocations and kernel choices
    started = time.perf_counter()
    vectors = encode(texts)
    seconds = time.perf_counter() - started
    np.save(out, np.asarray(vectors, dtype=np.float32))
    peak_mb = own_peak_rss_mb()
    result = {
        "path": name,
        "items": len(texts),
        "seconds": seconds,
        "items_per_s": len(texts) / seconds,
        "load_s": load_seconds,
        "peak_rss_mb": peak_mb,
    }
    if encoder is not None:
        result["encoder_id"] = encoder.encoder_id
        result["precision"] = encoder.precision
        if encoder.session is None:
            alone = np.stack([encoder.encode([text])[0] for text in texts[:INVARIANCE_TEXTS]])
            diff = np.abs(alone - vectors[:INVARIANCE_TEXTS]).max(axis=1)
            result["batch_invariance"] = {
                "texts": len(alone),
                "bit_identical_share": float((diff == 0).mean()),
                "max_abs_diff": float(diff.max()),
            }
    print(json.dumps(result))


def incremental_rerun(artifacts: str, backend: dict) -> dict:
    """embed_items over the full catalogue, then after 10 edited titles; seconds of each."""
    from components.data.atomic import atomic_write_text
    from components.data.snapshots import write_snapshot
    from components.data.sources import read_movielens
    from components.embed import embed_items, encoder_from_settings
    from components.settings import load_settings

    data = read_movielens(movielens_dir(EMBED_MOVIELENS_ENV))
    with tempfile.TemporaryDirectory() as root:
        settings = load_settings(data_root=Path(root))
        # An unvalidated copy lets the benchmark choose, whatever EmbedSettings carries.
        embed = settings.embed.model_copy()
        object.__setattr__(embed, "backend", backend.get("backend", "torch"))
        object.__setattr__(embed, "quantize", backend.get("quantize"))
        object.__setattr__(embed, "precision", backend.get("precision", "auto"))
        settings = settings.model_copy(update={"embed": embed})
        encoder_from_settings(settings)  # load (and export) outside the timed runs

        def accepted(items):
            snapshot = write_snapshot(
                settings.snapshots_dir,
                items,
                data.interactions,
                id_type="int",
                feedback_watermark=0,
                parent=None,
                sources={},
            )
            atomic_write_text(snapshot.path / "validation.json", json.dumps({"success": True}))
            return snapshot

        first = accepted(data.items)
        started = time.perf_counter()
        full_manifest = json.loads((embed_items(settings, first) / "manifest.json").read_text())
        full_s = time.perf_counter() - started
        edited = data.items.copy()
        edited.loc[edited.index[:10], "title"] = edited["title"].iloc[:10] + " (director's cut)"
        second = accepted(edited)
        started = time.perf_counter()
        rerun_manifest = json.loads((embed_items(settings, second) / "manifest.json").read_text())
        rerun_s = time.perf_counter() - started
    return {
        "encoder_id": full_manifest["encoder"]["encoder_id"],
        "full_s": full_s,
        "full_encoded": full_manifest["encoded_now"],
        "rerun_s": rerun_s,
        "rerun_encoded": rerun_manifest["encoded_now"],
        "rerun_share_of_full": rerun_s / full_s,
    }


def parse_args() -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="passes per path, taken in turns; the best counts")
    parser.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)), help="intra-op threads for every path"
    )
    parser.add_argument("--limit", type=int, default=None, help="only the first N texts (a quick check)")
    parser.add_argument(
        "--paths", default=",".join(default_paths()), help="comma-separated subset of " + ", ".join(PATHS)
    )
    parser.add_argument("--artifacts", default=None, help="where ONNX exports are cached (default: a temporary folder)")
    parser.add_argument("--skip-incremental", action="store_true")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    return parser, parser.parse_args()


def export_onnx(names: list[str], artifacts: str) -> dict[str, float]:
    """First-use ONNX exports, timed apart from encoding: seconds per ONNX path."""
    from components.embed import TextEncoder

    export_seconds = {}
    for name in names:
        if PATHS[name].get("backend") == "onnx":
            started = time.perf_counter()
            TextEncoder(None, artifacts_dir=artifacts, **PATHS[name])
            export_seconds[name] = time.perf_counter() - started
    return export_seconds


def run_rounds(names: list[str], args: argparse.Namespace, artifacts: str, scratch: str) -> dict[str, list[dict]]:
    """Every path in its own child process, in turns, for ``args.rounds`` rounds."""
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for round_index in range(args.rounds):
        for name in names:
            out = str(Path(scratch) / f"{name}-{round_index}.npy")
            command = [sys.executable, "-m", "benchmarks.bench_embed", "--worker", name, "--threads", str(args.threads)]
            command += ["--artifacts", artifacts, "--out", out]
            if args.limit:
                command += ["--limit", str(args.limit)]
            env = {**os.environ, **PATH_ENV.get(name, {})}
            done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            result["vectors"] = out
            runs[name].append(result)
            print(
                f"round {round_index + 1} {name}: {result['items_per_s']:.0f} items/s, "
                f"peak RSS {result['peak_rss_mb']:.0f} MB",
                file=sys.stderr,
            )
    return runs


def summarise(
    runs: dict[str, list[dict]], export_seconds: dict[str, float], args: argparse.Namespace, load: dict
) -> dict:
    """Per path: best and median speed, peak RSS, agreement with the first fp32 torch pass."""
    reference = np.load(runs["torch-fp32"][0]["vectors"])
    reference_neighbours = top_k_neighbours(reference)
    st_runs = runs.get("sentence-transformers")
    st_best = max(r["items_per_s"] for r in st_runs) if st_runs is not None else None
    report = {"threads": args.threads, "items": len(reference), "batch_size": BATCH_SIZE, "rounds": args.rounds, **load}
    report["paths"] = {}
    for name, path_runs in runs.items():
        best = max(path_runs, key=lambda r: r["items_per_s"])
        entry = {
            "items_per_s_best": best["items_per_s"],
            "items_per_s_median": float(np.median([r["items_per_s"] for r in path_runs])),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in path_runs),
            "load_s": best["load_s"],
            **agreement(np.load(best["vectors"]), reference, reference_neighbours),
            **{key: best[key] for key in ("precision", "encoder_id", "batch_invariance") if key in best},
        }
        if st_best:
            entry["ratio_vs_sentence_transformers"] = best["items_per_s"] / st_best
        if name in export_seconds:
            entry["first_use_export_s"] = export_seconds[name]
        report["paths"][name] = entry
    return report


def main() -> None:
    parser, args = parse_args()
    if args.worker:
        run_worker(args.worker, args.threads, args.limit, args.artifacts, args.out)
        return

    names = [n for n in args.paths.split(",") if n]
    unknown = sorted(set(names) - set(PATHS))
    if unknown:
        parser.error(f"unknown paths {unknown}; choose from {', '.join(PATHS)}")
    if "torch-fp32" not in names:
        names.insert(0, "torch-fp32")  # the agreement reference
    with tempfile.TemporaryDirectory() as scratch:
        artifacts = args.artifacts or str(Path(scratch) / "onnx")
        export_seconds = export_onnx(names, artifacts)
        load = {"loadavg_before": os.getloadavg()}
        runs = run_rounds(names, args, artifacts, scratch)
        load["loadavg_after"] = os.getloadavg()
        report = summarise(runs, export_seconds, args, load)
        if not args.skip_incremental:
            # The fastest of our paths that runs in this process as it is (no environment of its own).
            ours = [n for n in names if n != "sentence-transformers" and n not in PATH_ENV]
            fastest = max(ours, key=lambda n: report["paths"][n]["items_per_s_best"])
            report["incremental"] = {"path": fastest, **incremental_rerun(artifacts, PATHS[fastest])}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
