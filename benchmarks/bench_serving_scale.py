"""What a serving replica must hold as the users grow: start-up time, peak RSS and bundle size at 1× and 10×.

    python -m benchmarks.bench_serving_scale --workload-1x DIR1 --workload-10x DIR10 [--repeats 3] [--out FILE]

``DIR1`` and ``DIR10`` are folders of ``python -m benchmarks.workload --scale 1|10`` (generic contract).
Three datasets, side by side in one run:

* ``1x``: the 1× workload (ml-latest-small's users, items and interactions);
* ``10x users``: the 1× catalogue, every user copied ten times under new ids (the user dimension alone);
* ``10x workload``: the 10× workload (10× users, items and interactions).

For each, one bundle of the default champion kind (LM-SASRec) is written with ``write_bundle``. Its
weights come from one epoch on 256 users' histories over the whole catalogue, and the text vectors are
random unit vectors: neither changes what a replica loads or how long it takes, only the quality of
the answers, which this benchmark does not look at. Each bundle is then loaded in fresh processes:

* ``lazy``: this code, on the bundle as written (the ``histories/`` index, memory-mapped);
* ``legacy``: this code, on the same bundle with ``histories.parquet`` in place of the index (how a
  bundle written before the index is read: compact columns in memory);
* ``materialised``: the same ``histories.parquet`` read the way the engine read it before the index
  (a dict of one ``History`` per user built at load).

A process imports the engine, loads the bundle and warms it up as the service does
(``ServingEngine(folder)`` + ``warm_up()``), answers one request for a known user, and reports the
load time, the whole process's time to that answer, its peak RSS (VmHWM) and its RSS split into
anonymous and file-backed pages. Times are medians over ``--repeats`` processes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODES = ("lazy", "legacy", "materialised")
FIT_USERS = 256
TEXT_DIM = 384


def _rss_parts() -> dict:
    parts = {}
    with open("/proc/self/status") as status:
        for line in status:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                parts[key] = int(line.split()[1]) / 1024
    return parts


# --------------------------------------------------------------------------- the child: one fresh process
def child(mode: str, folder: Path, user) -> dict:
    started = time.perf_counter()
    from components.engine import ServingEngine
    from components.engine.engine import MAX_HISTORY

    if mode == "materialised":
        ServingEngine._load_histories = _materialised_histories  # the engine's load before the index
    imported = time.perf_counter()
    before = _rss_parts()
    engine = ServingEngine(folder)
    engine.warm_up()
    loaded = time.perf_counter()
    history = engine.history_for(user)
    assert history is not None and 0 < len(history) <= MAX_HISTORY, (user, history)
    answer = engine.recommend_user(user, history, 10)
    assert len(answer) == 10
    answered = time.perf_counter()
    after = _rss_parts()
    return {
        "import_s": imported - started,
        "load_s": loaded - imported,
        "request_ms": (answered - loaded) * 1000,
        "to_first_answer_s": answered - started,
        "rss_after_import_mb": before["VmRSS"],
        "peak_rss_mb": after["VmHWM"],
        "rss_anon_mb": after.get("RssAnon"),
        "rss_file_mb": after.get("RssFile"),
        "users_held": len(engine.histories),
    }


class _Materialised(dict):
    """The dict the engine held before the index, with the index's ``get(user, newest=...)``."""

    def get(self, user, default=None, *, newest=None):
        history = super().get(user, default)
        return history.tail(newest) if history is not None and newest is not None else history

    def drop(self, users):
        for user in users:
            self.pop(user, None)


def _materialised_histories(self):
    """``read_histories`` as it was before the index: every user's History built at load."""
    import pandas as pd

    from components.data.dataset import History

    frame = pd.read_parquet(self.folder / "histories.parquet")
    histories = _Materialised()
    users = frame["user_id"].to_numpy()
    if len(users) == 0:
        return histories
    boundaries = np.flatnonzero(np.r_[True, users[1:] != users[:-1], True])
    items, events = frame["item_index"].to_numpy(), frame["event"].to_numpy(dtype=object)
    values, stamps = frame["value"].to_numpy(), frame["timestamp"].to_numpy()
    for start, stop in zip(boundaries[:-1], boundaries[1:]):
        histories[self.normalise_id(users[start])] = History(
            items[start:stop], events[start:stop].tolist(), values[start:stop], stamps[start:stop]
        )
    return histories


# --------------------------------------------------------------------------- building the bundles
def read_workload(folder: Path):
    from components.data.dataset import InteractionData
    from components.data.sources import read_generic

    source = read_generic(folder / "items.csv", folder / "events.csv")
    return InteractionData.from_frames(source.items, source.interactions), source.id_type


def users_times(data, copies: int):
    """The same catalogue, every user copied ``copies`` times under new ids (``<id>~<copy>``)."""
    from components.data.dataset import InteractionData

    ids = [f"{u}~{c}" for c in range(copies) for u in data.user_ids.tolist()]
    return InteractionData(data.catalogue, np.asarray(ids, dtype=object), list(data.histories) * copies)


def build_bundle(folder: Path, data, id_type: str, seed: int = 0) -> dict:
    from components.data.dataset import InteractionData
    from components.engine import write_bundle
    from components.models import LMSASRec

    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((data.n_items, TEXT_DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    pick = rng.choice(len(data.user_ids), size=min(FIT_USERS, len(data.user_ids)), replace=False)
    few = InteractionData(data.catalogue, data.user_ids[pick], [data.histories[i] for i in pick])
    started = time.perf_counter()
    model = LMSASRec({"max_epochs": 1, "patience": 1}).fit(few, vectors)
    fitted = time.perf_counter()
    meta = {"model_name": model.name, "id_type": id_type, "snapshot_id": "bench", "feedback_watermark": 0}
    write_bundle(folder, model, data, vectors, meta, validation_model=model)
    written = time.perf_counter()
    legacy = folder.parent / f"{folder.name}-legacy"
    shutil.rmtree(legacy, ignore_errors=True)
    shutil.copytree(folder, legacy, ignore=shutil.ignore_patterns("histories"))
    _write_legacy_histories(legacy, data)
    return {
        "users": len(data.user_ids),
        "items": data.n_items,
        "interactions": int(sum(len(h) for h in data.histories)),
        "fit_s": fitted - started,
        "write_s": written - fitted,
        "bundle_mb": _size_mb(folder),
        "histories_index_mb": _size_mb(folder / "histories"),
        "legacy_bundle_mb": _size_mb(legacy),
        "legacy_histories_parquet_mb": _size_mb(legacy / "histories.parquet"),
        "probe_user": _probe_user(data, id_type),
    }


def _write_legacy_histories(folder: Path, data) -> None:
    """``histories.parquet`` as bundles wrote it before the index (one row per interaction)."""
    import pandas as pd

    lengths = np.array([len(h) for h in data.histories])
    frame = pd.DataFrame(
        {
            "user_id": np.repeat(np.asarray(data.user_ids, dtype=object), lengths),
            "item_index": np.concatenate([h.items for h in data.histories]).astype(np.int64),
            "event": np.concatenate([np.asarray(h.events, dtype=object) for h in data.histories]),
            "value": np.concatenate([h.values for h in data.histories]).astype(np.float64),
            "timestamp": np.concatenate([h.timestamps for h in data.histories]).astype(np.int64),
        }
    )
    frame.to_parquet(folder / "histories.parquet", index=False)


def _probe_user(data, id_type: str):
    """A user in the middle of the id order with a history of median length."""
    lengths = np.array([len(h) for h in data.histories])
    median = int(np.median(lengths))
    candidates = [u for u, n in zip(data.user_ids.tolist(), lengths) if n == median]
    user = sorted(candidates, key=str)[len(candidates) // 2]
    return int(user) if id_type == "int" else str(user)


def _size_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


# --------------------------------------------------------------------------- the run
def run_child(mode: str, folder: Path, user) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_serving_scale", "--child", mode, str(folder), json.dumps(user)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")},
    )
    if out.returncode != 0:
        raise RuntimeError(f"{mode} on {folder} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict]) -> dict:
    keys = [k for k in runs[0] if isinstance(runs[0][k], int | float)]
    return {k: round(statistics.median(r[k] for r in runs), 3) for k in keys}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_serving_scale", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--workload-1x", type=Path, help="a `benchmarks.workload --scale 1` folder")
    parser.add_argument("--workload-10x", type=Path, help="a `benchmarks.workload --scale 10` folder")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per bundle and mode (median)")
    parser.add_argument("--work", type=Path, default=None, help="where the bundles go (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here too")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "BUNDLE", "USER_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from benchmarks.common import machine_facts, quiet_environment

    quiet_environment()
    if args.child:
        mode, folder, user = args.child
        print(json.dumps(child(mode, Path(folder), json.loads(user))))
        return 0
    for name in ("workload_1x", "workload_10x"):
        folder = getattr(args, name)
        if folder is None or not (folder / "events.csv").exists():
            flag = "--" + name.replace("_", "-")
            parser.error(f"{flag} must be a folder written by benchmarks.workload (no events.csv in {folder})")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    work = args.work or Path(tempfile.mkdtemp(prefix="serving-scale-"))
    one, id_type = read_workload(args.workload_1x)
    ten, id_type_10 = read_workload(args.workload_10x)
    datasets = {"1x": (one, id_type), "10x users": (users_times(one, 10), "str"), "10x workload": (ten, id_type_10)}
    results = {
        "machine": machine_facts(),
        "command": " ".join(["python -m benchmarks.bench_serving_scale", *(argv or sys.argv[1:])]),
        "datasets": {},
    }
    for name, (data, kind) in datasets.items():
        folder = work / name.replace(" ", "-") / "bundle"
        built = build_bundle(folder, data, kind)
        print(f"{name}: {json.dumps(built)}", file=sys.stderr, flush=True)
        results["datasets"][name] = {"bundle": built, "modes": {}}
    del one, ten, datasets
    for _ in range(args.repeats):  # interleaved, so a slow moment of the machine falls on every cell alike
        for name, entry in results["datasets"].items():
            folder = work / name.replace(" ", "-") / "bundle"
            for mode in MODES:
                target = folder if mode == "lazy" else folder.parent / "bundle-legacy"
                entry["modes"].setdefault(mode, []).append(run_child(mode, target, entry["bundle"]["probe_user"]))
    for entry in results["datasets"].values():
        entry["modes"] = {mode: summarise(runs) for mode, runs in entry["modes"].items()}
    base = results["datasets"]["1x"]["modes"]
    for entry in results["datasets"].values():
        entry["ratio_to_1x"] = {
            mode: {
                k: round(entry["modes"][mode][k] / base[mode][k], 2)
                for k in ("load_s", "to_first_answer_s", "peak_rss_mb")
            }
            for mode in MODES
        }
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
