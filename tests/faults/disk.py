"""A full disk, simulated with ``RLIMIT_FSIZE``: a process may not write past a byte offset in any file.

Writing beyond the limit fails with ``EFBIG`` ("File too large"), the same way a full disk fails a
write with ``ENOSPC``: Python ignores ``SIGXFSZ``, so the write raises instead of killing the
process. The limit is set in a child before it runs (``preexec_fn``), or on a running process tree
with ``prlimit`` (psutil), and lifted again the same way: the disk is freed.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import psutil

from components.settings import PROJECT_ROOT
from tests.harness import TELEMETRY_OFF, VENV_BIN, restored_mlflow_state

INGEST_LIMIT = 128 * 1024
"""Room for the store's files and the snapshot's manifest and items, not for its interactions."""
TRAIN_LIMIT = 256 * 1024
"""Room for the popularity candidate (bytes), not for the LM content model (about 640 kB)."""


def champion_version(settings) -> str:
    from components.registry import CHAMPION
    from components.registry.tracking import aliased_version

    with restored_mlflow_state():
        from mlflow.tracking import MlflowClient

        return aliased_version(MlflowClient(settings.tracking_uri), settings.registry.model_name, CHAMPION)


def limited(max_bytes: int):
    """A ``preexec_fn``: a session of its own and no file written past ``max_bytes``."""

    def preexec() -> None:
        os.setsid()
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return preexec


def run_limited(
    args: list[str], env: dict[str, str], max_bytes: int, timeout: float = 300
) -> subprocess.CompletedProcess:
    """``args`` in a child that cannot write past ``max_bytes`` in any file."""
    return subprocess.run(
        args,
        env={**os.environ, **TELEMETRY_OFF, **env},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limited(max_bytes),
    )


def cli_pipeline_run(env: dict[str, str], max_bytes: int) -> subprocess.CompletedProcess:
    """``lmrecsys pipeline run --json`` under the limit."""
    return run_limited([str(VENV_BIN / "lmrecsys"), "pipeline", "run", "--json"], env, max_bytes)


TRAIN_STAGE = """
import json, sys
from components.pipeline import stage_train
from components.settings import load_settings
snapshot_id, embeddings, run_key = sys.argv[1:4]
print(json.dumps({"run_dir": stage_train(load_settings(), snapshot_id, embeddings, run_key)}))
"""


def train_stage(env: dict[str, str], snapshot_id: str, embeddings_dir: str, run_key: str, max_bytes: int):
    """The train stage (``components.pipeline.stage_train``, what the DAG's tasks call) under the limit."""
    return run_limited([sys.executable, "-c", TRAIN_STAGE, snapshot_id, embeddings_dir, run_key], env, max_bytes)


def set_tree_limit(pids: list[int], max_bytes: int | None) -> list[int]:
    """Fill the disk for running processes (``max_bytes``), or free it again (None); returns the pids
    whose limit changed. Only the soft limit moves, which needs no privilege either way."""
    changed = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            _, hard = process.rlimit(psutil.RLIMIT_FSIZE)
            process.rlimit(psutil.RLIMIT_FSIZE, (hard if max_bytes is None else max_bytes, hard))
            changed.append(pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass  # gone, or a helper process that is not ours to limit
    return changed


def visible_entries(folder: Path) -> set[str]:
    """What a reader of ``folder`` sees: temporary names start with a dot."""
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")} if folder.exists() else set()


def hidden_entries(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.name.startswith(".")} if folder.exists() else set()


def candidate_folders_complete(run_dir: Path) -> dict[str, str]:
    """Each visible candidate folder of a run and what its ``fit.json`` says (``missing`` when absent)."""
    found = {}
    for folder in sorted(p for p in run_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        fit = folder / "fit.json"
        found[folder.name] = json.loads(fit.read_text()).get("status", "?") if fit.exists() else "missing"
    return found


def says_disk_full(text: str) -> bool:
    """Whether an error output names the failed write (EFBIG here, ENOSPC on a real full disk),
    however the terminal wrapped its lines."""
    flat = " ".join(text.split())
    return "File too large" in flat or "No space left on device" in flat
