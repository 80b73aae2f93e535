"""Fixtures for the Airflow integration tests: the reduced config, a reference run, PostgreSQL and Redis."""

from __future__ import annotations

import json

import pytest

from tests.integration._helpers import (  # noqa: F401
    BOOTSTRAP_SAMPLES,
    DAGS_FOLDER,
    PIPELINE,
    PRECISION,
    PROJECT_ROOT,
    REDIS_CLAIM_KEY,
    REDIS_DBS,
    REDUCED_USERS,
    WATCH,
    copy_source,
    describe_run,
    metric_numbers,
    reduced_env,
    reduced_settings,
    seed_embedding_cache,
)


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, movielens_dir) -> dict:
    """The reduced pipeline run in this process with no Airflow: the result every stack must match.

    Its embedding cache also seeds the stacks' data roots, so the tests encode the catalogue once.
    """
    from components.pipeline import run_pipeline

    data_root = tmp_path_factory.mktemp("reference-data")
    settings = reduced_settings(data_root, movielens_dir)
    decision = run_pipeline(settings, "reference")
    report = json.loads((settings.runs_dir / "reference" / "report.json").read_text())
    return {
        "data_root": data_root,
        "decision": decision,
        "report": report,
        "cache": next((data_root / "embeddings" / "cache").iterdir()),
    }


@pytest.fixture
def airflow_postgres_url(postgres_url):
    """A fresh PostgreSQL database for Airflow's metadata, in SQLAlchemy's psycopg2 form."""
    return postgres_url.replace("postgresql://", "postgresql+psycopg2://", 1)


@pytest.fixture
def celery_broker_url():
    """A Redis database claimed for this test alone as the Celery broker, empty before and flushed after."""
    import uuid

    redis = pytest.importorskip("redis")
    token = uuid.uuid4().hex
    client = None
    for db in REDIS_DBS:
        candidate = redis.Redis(host="127.0.0.1", port=6379, db=db, socket_timeout=5)
        try:
            claimed = candidate.set(REDIS_CLAIM_KEY, token, nx=True, ex=3600)
        except redis.RedisError as exc:
            pytest.skip(f"Redis at 127.0.0.1:6379 is not reachable: {exc}")
        if claimed:
            client = candidate
            break
        candidate.close()
    if client is None:
        pytest.fail(f"every Redis database in {REDIS_DBS} is claimed by another test run ({REDIS_CLAIM_KEY})")
    for key in client.scan_iter():  # what an earlier, killed run left (not the claim)
        if key.decode() != REDIS_CLAIM_KEY:
            client.delete(key)
    try:
        yield f"redis://127.0.0.1:6379/{client.connection_pool.connection_kwargs['db']}"
    finally:
        client.flushdb()  # the claim goes with it
        client.close()
