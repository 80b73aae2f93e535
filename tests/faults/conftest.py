"""Fixtures of the fault tier: a small champion, a private PostgreSQL, ``bentoml serve`` on them."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.settings import PROJECT_ROOT
from tests.faults.catalogue import build_small_champion
from tests.harness import BentoServer, restored_mlflow_state


@pytest.fixture(scope="session")
def small_champion(tmp_path_factory) -> tuple[Path, Path]:
    """(data root, source folder) of a promoted champion on the small catalogue, shared read-only."""
    with restored_mlflow_state():
        root = tmp_path_factory.mktemp("faults-champion") / "data"
        source, _ = build_small_champion(root)
    return root, source


@pytest.fixture
def own_champion(tmp_path) -> tuple[Path, Path]:
    """(data root, source folder) of a champion of the test's own, for tests that run the pipeline."""
    with restored_mlflow_state():
        source, _ = build_small_champion(tmp_path / "data")
    return tmp_path / "data", source


def serve(data_root: Path, workdir: Path, feedback_url: str, **env: str) -> BentoServer:
    """``bentoml serve`` on ``data_root``'s champion, writing feedback to ``feedback_url``."""
    env = {
        "LMRECSYS_DATA_ROOT": str(data_root),
        "LMRECSYS_FEEDBACK__URL": feedback_url,
        "LMRECSYS_SERVING__POLL_INTERVAL_S": "3600",
        **env,
    }
    return BentoServer(env, workdir, PROJECT_ROOT).wait_ready(timeout=180)
