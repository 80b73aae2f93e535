"""Shared test set-up: telemetry off and offline, before any test module imports a library."""

import os
import tempfile
import uuid
from pathlib import Path

from components.settings import LOCAL_MOVIELENS, disable_telemetry

disable_telemetry()
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# BentoML's in-process metrics need prometheus_client in multiprocess mode, which it reads once, on its first
# import; a serving module imported while collecting an earlier test file imports it, so set it here first
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="lmrecsys-prom-"))

import pytest  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def movielens_dir() -> Path:
    """The shared ml-latest-small copy; tests that need it skip loudly when it is absent."""
    path = Path(os.environ.get("LMRECSYS_TEST_MOVIELENS", LOCAL_MOVIELENS))
    if not (path / "ratings.csv").exists():
        pytest.skip(f"MovieLens ml-latest-small not found at {path}")
    return path


@pytest.fixture
def postgres_url():
    """A freshly created PostgreSQL database (trust auth on 127.0.0.1:5432), dropped afterwards."""
    psycopg2 = pytest.importorskip("psycopg2")
    admin_url = os.environ.get("LM_RECSYS_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        admin = psycopg2.connect(admin_url, connect_timeout=3)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {admin_url}: {exc}")
    admin.autocommit = True
    name = f"lmrecsys_test_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def private_postgres(tmp_path):
    """A private PostgreSQL in ``tmp_path`` (skipped, with the reason, where one cannot start)."""
    from tests.faults.postgres import PrivatePostgres, unavailable

    if reason := unavailable():
        pytest.skip(reason)
    server = PrivatePostgres(tmp_path / "pg").start()
    try:
        yield server
    finally:
        server.close()
