"""Helpers the benchmark scripts share: environment, data, neighbours, ONNX sessions, memory, machine.

Only the standard library is imported here at module level, and the project and numpy inside the
functions that need them: ``bench_ingest`` times its own imports in a child process, and importing
this module must not import anything for it.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import time
from pathlib import Path

EMBED_MOVIELENS_ENV = "LMRECSYS_BENCH_MOVIELENS"
"""The embedding benchmarks' override of the MovieLens folder (the model benchmarks read
``LMRECSYS_MOVIELENS``)."""


def quiet_environment(**extra: str) -> None:
    """Third-party telemetry off (``components.settings.disable_telemetry``), plus ``extra``
    defaults; explicit values are kept. Call it before importing the libraries it concerns."""
    from components.settings import disable_telemetry

    disable_telemetry()
    for name, value in extra.items():
        os.environ.setdefault(name, value)


def movielens_dir(env: str = "LMRECSYS_MOVIELENS", *, require: bool = False) -> Path:
    """The ml-latest-small folder: ``$env``, else the local copy beside the project
    (``components.settings.LOCAL_MOVIELENS``). ``require``: exit unless it holds ratings.csv."""
    from components.settings import LOCAL_MOVIELENS

    folder = Path(os.environ.get(env, LOCAL_MOVIELENS))
    if require and not (folder / "ratings.csv").exists():
        raise SystemExit(f"no MovieLens data at {folder}; set {env} to an ml-latest-small folder")
    return folder


def movielens_texts(folder: Path, limit: int | None = None) -> list[str]:
    """The item texts of a MovieLens folder, ordered by item id (the embed stage's own template)."""
    from components.data.sources import read_movielens
    from components.embed import item_texts

    texts = item_texts(read_movielens(folder).items.sort_values("item_id"))
    return texts[:limit] if limit else texts


def top_k_neighbours(vectors, k: int = 10):
    """Each row's ``k`` nearest other rows by dot product (unordered)."""
    import numpy as np

    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    return np.argpartition(-similarity, k, axis=1)[:, :k]


def neighbour_overlap(neighbours, reference_neighbours) -> float:
    """Mean share of each row's neighbours that the reference's neighbours of that row share."""
    import numpy as np

    pairs = zip(neighbours, reference_neighbours)
    return float(np.mean([len(set(a) & set(b)) / neighbours.shape[1] for a, b in pairs]))


def agreement(vectors, reference, reference_neighbours) -> dict:
    """Cosine (mean, min) of unit vectors with their reference, and top-10 neighbour overlap."""
    cosines = (vectors * reference).sum(axis=1)
    overlap = neighbour_overlap(top_k_neighbours(vectors), reference_neighbours)
    return {"cosine_mean": float(cosines.mean()), "cosine_min": float(cosines.min()), "top10_overlap": overlap}


def onnx_session_options(threads: int):
    """ONNX Runtime options: ``threads`` intra-op threads, one inter-op thread, every graph optimisation."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def onnx_session(model: str | bytes | Path, threads: int, options=None):
    """A CPU session on ``model`` (a path or a serialised model), by default with ``onnx_session_options``."""
    import onnxruntime as ort

    model = str(model) if isinstance(model, Path) else model
    options = onnx_session_options(threads) if options is None else options
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (``ru_maxrss``), in MiB (Linux reports KiB).
    After exec, Linux carries it over from the forking parent; see ``own_peak_rss_mb``."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def own_peak_rss_mb() -> float:
    """This process's peak resident memory in MiB. VmHWM, not ru_maxrss: Linux carries ru_maxrss over
    exec from the forking parent, which would charge the parent's memory to every child."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return peak_rss_mb()  # pragma: no cover - not Linux


def machine_summary() -> str:
    """``"<cores> CPUs, <architecture>"``."""
    return f"{os.cpu_count()} CPUs, {platform.machine()}"


def vm_summary() -> str:
    """``"<cores>-core CPU VM, Python <version> · date: <local date>"``, for a report's Command line."""
    return f"{os.cpu_count()}-core CPU VM, Python {platform.python_version()} · date: {time.strftime('%Y-%m-%d')}"


def utc_minute() -> str:
    """Now, as ``YYYY-MM-DD HH:MM UTC``."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def cpu_model() -> str:
    """The CPU's model name from ``lscpu``, else ``platform.processor()``."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        names = (line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
        return next(names, platform.processor())
    except (OSError, subprocess.SubprocessError):
        return platform.processor()


def machine_facts() -> dict:
    """CPU model, cores, Python version and the date (UTC, to the minute)."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(), "date": utc_minute()}
