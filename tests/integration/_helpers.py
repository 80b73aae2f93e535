"""Helpers shared by the integration tests: the reduced config, reference-run comparisons, stack diagnostics."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[2]


DAGS_FOLDER = PROJECT_ROOT / "dags"


PIPELINE = "lm_recsys_pipeline"


WATCH = "lm_recsys_feedback_watch"


REDUCED_USERS = 40


BOOTSTRAP_SAMPLES = 100


REDIS_DBS = (5, *range(7, 16))
"""The Redis databases a test may claim as its Celery broker (database 6 is the Celery benchmark's)."""
REDIS_CLAIM_KEY = "lmrecsys:test-broker-claim"
"""Set (NX, with an expiry) in the database a test has claimed, so two test runs on one Redis server
never share a broker queue, nor flush each other's."""


PRECISION = "fp32"
"""The stacks' results are compared with the in-process reference bit for bit, and some stacks
encode texts in other batches than the reference (the Celery test leaves texts out of the seeded
cache, so its shards encode them). On AMX CPUs a bf16 vector moves slightly with its batch
(docs/embeddings.md, "Precision"), and the models trained on those vectors then differ, so these
comparisons run at fp32. bf16 itself is covered by tests/unit/test_embed_precision.py."""


def reduced_env(data_root: Path, source: Path, **extra: str) -> dict[str, str]:
    """``LMRECSYS_*`` variables for the reduced pipeline (first 40 users, 100 bootstrap samples)."""
    return {
        "LMRECSYS_DATA_ROOT": str(data_root),
        "LMRECSYS_INGEST__SOURCE": str(source),
        "LMRECSYS_INGEST__MAX_USERS": str(REDUCED_USERS),
        "LMRECSYS_TRAIN__BOOTSTRAP_SAMPLES": str(BOOTSTRAP_SAMPLES),
        "LMRECSYS_AIRFLOW__PIPELINE_CRON": "0 0 1 1 *",  # never due during a test: only our triggers start runs
        "LMRECSYS_AIRFLOW__EMBED_SHARDS": "2",
        "LMRECSYS_EMBED__PRECISION": PRECISION,
        **extra,
    }


def reduced_settings(data_root: Path, source: Path, **train):
    """The settings of :func:`reduced_env` (``train`` adds train options, e.g. ``candidates``)."""
    from components.settings import load_settings

    return load_settings(
        data_root=data_root,
        ingest={"source": str(source), "max_users": REDUCED_USERS},
        train={"bootstrap_samples": BOOTSTRAP_SAMPLES, **train},
        embed={"precision": PRECISION},
    )


def metric_numbers(report: dict) -> dict:
    """The evaluation numbers of a report.json, without the timings (which differ run to run)."""
    out = {}
    for name, result in report["candidates"].items():
        for side in ("val", "test"):
            out.update(
                {f"{name}.{side}.{key}": value for key, value in result[side].items() if not key.endswith("seconds")}
            )
            out[f"{name}.{side}_curve"] = result[side + "_curve"]
    return out


def seed_embedding_cache(reference_cache: Path, data_root: Path, *, leave_out_every: int = 0) -> int:
    """Copy the reference's embedding cache into a data root; returns how many texts were left out.

    ``leave_out_every=k`` drops two of every k texts in the sorted order the shards use (index
    ``i % k`` in {0, 1}), so each of two mapped shards has texts of its own to encode.
    """
    table: dict[str, np.ndarray] = {}
    for segment in sorted(reference_cache.glob("segment-*.npz")):
        with np.load(segment) as data:
            table.update(zip(data["keys"].tolist(), data["vectors"]))
    keys = sorted(table)
    kept = [key for i, key in enumerate(keys) if not leave_out_every or i % leave_out_every not in (0, 1)]
    target = data_root / "embeddings" / "cache" / reference_cache.name
    target.mkdir(parents=True, exist_ok=True)
    np.savez(
        target / "segment-0-seed.npz",
        keys=np.array(kept, dtype="U32"),
        vectors=np.stack([table[k] for k in kept]).astype(np.float32),
    )
    return len(keys) - len(kept)


def train_reference(reference_run: dict, data_root: Path, settings) -> dict:
    """The train and evaluate stages in this process, with ``settings``, on the reference's snapshot.

    For a stack test whose candidates differ from the reference's: ingest, validation and
    embedding do not depend on the train settings, so the reference's snapshot and item vectors
    are copied into ``data_root`` (which ``settings`` must point at) instead of being made again.
    Returns the run's report.json.
    """
    import json

    from components.pipeline import stage_evaluate, stage_train

    snapshot_id = reference_run["report"]["snapshot_id"]
    source_root = reference_run["data_root"]
    shutil.copytree(source_root / "snapshots" / snapshot_id, settings.snapshots_dir / snapshot_id)
    vectors = next((source_root / "embeddings" / snapshot_id).iterdir())
    embeddings_dir = settings.embeddings_dir / snapshot_id / vectors.name
    shutil.copytree(vectors, embeddings_dir)
    run_dir = stage_train(settings, snapshot_id, str(embeddings_dir), "reference")
    return json.loads(Path(stage_evaluate(settings, run_dir)).read_text())


def copy_source(movielens_dir: Path, target: Path) -> Path:
    """A private copy of the MovieLens CSV files, so a test can corrupt and restore them."""
    target.mkdir(parents=True, exist_ok=True)
    for path in movielens_dir.glob("*.csv"):
        shutil.copy2(path, target / path.name)
    return target


def describe_run(stack, run_id: str, dag_id: str = PIPELINE) -> str:
    """Task states and the servers' log tails, for assertion messages."""
    try:
        states = {
            f"{ti['task_id']}[{ti['map_index']}]": (ti["state"], ti["try_number"])
            for ti in stack.task_instances(dag_id, run_id)
        }
    except Exception as exc:
        states = {"error": str(exc)}
    logs = "\n".join(f"--- {proc.name}\n{proc.tail(30)}" for proc in stack.procs)
    run_logs = stack.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
    tails = {path: path.read_text(errors="replace")[-4000:] for path in sorted(run_logs.glob("task_id=*/**/*.log"))}
    failed = [(path, tail) for path, tail in tails.items() if '"level":"error"' in tail.replace(" ", "")]
    tasks = "\n".join(f"--- task log {path.parent.name}/{path.name}\n{tail}" for path, tail in failed[-2:])
    return f"task states: {states}\n{tasks}\n{logs}"
