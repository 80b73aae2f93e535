"""Epoch time of SASRec and LM-SASRec on CUDA against CPU, printed as JSON.

Run from the project root::

    python -m benchmarks.gpu_sasrec                   # CUDA (if present) and a 2-thread CPU
    python -m benchmarks.gpu_sasrec --epochs 5 --cpu-threads 2 --vectors item_vectors.npy

The data comes from ``$LMRECSYS_MOVIELENS`` or ``../shared/data/movielens/ml-latest-small``.
LM-SASRec needs item text vectors: ``--vectors`` loads a saved (items × dim) ``.npy`` aligned
with the catalogue (sorted by movie id); without it the items are encoded with the project's
encoder (components.embed) first, which is not timed.

Each model trains a fixed number of epochs on the test-side training data of the fixed split
(no early stopping, so every device does the same work); the first epoch is reported apart,
since it includes CUDA start-up and kernel selection.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from benchmarks.common import movielens_dir, quiet_environment

quiet_environment()

import numpy as np  # noqa: E402

from components.data.dataset import InteractionData, leave_last_out  # noqa: E402
from components.data.sources import read_movielens  # noqa: E402


def item_vectors(data_dir: Path, vectors_path: str | None) -> np.ndarray:
    """Saved text vectors, or the catalogue encoded now with the project's encoder."""
    if vectors_path:
        return np.load(vectors_path)
    from components.data.columns import ITEM_COL
    from components.embed import item_texts, load_encoder

    items = read_movielens(data_dir).items.sort_values(ITEM_COL, kind="stable")
    return load_encoder(None).encode(item_texts(items), batch_size=256)


def time_epochs(
    name: str, data: InteractionData, vectors: np.ndarray, device: str, epochs: int, threads: int | None, config: dict
) -> dict:
    """Train ``epochs`` epochs on ``device``; returns per-epoch seconds."""
    import torch

    from components.models import build_model

    if device == "cpu" and threads:
        torch.set_num_threads(threads)
    model = build_model(name, {**config, "device": device, "epochs": 1, "progress": False})
    started = time.perf_counter()
    model.fit(data, vectors)  # one epoch: start-up, allocation and kernel selection
    if device == "cuda":
        torch.cuda.synchronize()
    first = time.perf_counter() - started
    model = build_model(name, {**config, "device": device, "epochs": epochs, "progress": False})
    started = time.perf_counter()
    model.fit(data, vectors)
    if device == "cuda":
        torch.cuda.synchronize()
    steady = (time.perf_counter() - started) / epochs
    return {
        "model": name,
        "device": device,
        "threads": torch.get_num_threads() if device == "cpu" else None,
        "first_epoch_s": round(first, 3),
        "epoch_s": round(steady, 3),
        "epochs": epochs,
    }


def main(argv: list[str] | None = None) -> dict:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per model and device")
    parser.add_argument("--cpu-threads", type=int, default=2, help="torch threads for the CPU runs (0: skip the CPU)")
    parser.add_argument("--vectors", default=None, help="saved item text vectors (.npy), aligned with the catalogue")
    parser.add_argument("--config", default="{}", help="JSON overrides for both models' configs")
    args = parser.parse_args(argv)

    data_dir = movielens_dir(require=True)
    source = read_movielens(data_dir)
    data = leave_last_out(InteractionData.from_frames(source.items, source.interactions)).test_train
    vectors = item_vectors(data_dir, args.vectors)
    if len(vectors) != data.n_items:
        raise SystemExit(f"{len(vectors)} item vectors for a catalogue of {data.n_items} items")
    config = json.loads(args.config)
    devices = (["cuda"] if torch.cuda.is_available() else []) + (["cpu"] if args.cpu_threads > 0 else [])
    runs = [
        time_epochs(name, data, vectors, device, args.epochs, args.cpu_threads, config)
        for name in ("sasrec", "lm_sasrec")
        for device in devices
    ]
    result = {
        "benchmark": "sasrec epoch time",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "users": len(data.histories),
        "items": data.n_items,
        "interactions": int(sum(len(h) for h in data.histories)),
        "config": config,
        "runs": runs,
    }
    for name in ("sasrec", "lm_sasrec"):
        by_device = {run["device"]: run["epoch_s"] for run in runs if run["model"] == name}
        if "cuda" in by_device and "cpu" in by_device:
            result[f"{name}_cpu_over_cuda"] = round(by_device["cpu"] / max(by_device["cuda"], 1e-9), 1)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
