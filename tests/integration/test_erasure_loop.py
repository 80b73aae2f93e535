"""Forgetting a user, end to end on real components (issue: erasure through every store).

Real Airflow (scheduler, dag-processor, api-server; SQLite metadata, LocalExecutor), MLflow on
SQLite with a local artifact folder, ``bentoml serve`` in a subprocess, and PostgreSQL as the
feedback store. The story:

1. a user with ratings in the source and feedback in the store is in the first champion;
2. ``lmrecsys users audit --service-url`` finds them in the store, snapshots, files and the
   service's memory (exit 1);
3. ``lmrecsys users forget``: the store forgets at once, and the served answers change within the
   service's refresh (``/recommend`` as for a new user, ``/history`` empty);
4. the erasure request starts a pipeline run by itself; it trains cold and is promoted for the erasure;
5. the purge retires the old version and rewrites the old snapshot;
6. ``users audit`` finds 0 places, ``users forgotten`` says done, and an independent scan of every
   Parquet file, JSON file and database under the data root (which holds the MLflow store) and of
   the PostgreSQL feedback database finds no row with the user's id. Another user is untouched.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import requests
from mlflow.tracking import MlflowClient

from components.feedback.store import FeedbackEvent, FeedbackStore
from components.settings import load_settings
from devtools.stack import VENV_BIN, AirflowStack, BentoServer, wait_for
from tests.integration._helpers import (
    DAGS_FOLDER,
    PIPELINE,
    describe_run,
    reduced_env,
    seed_embedding_cache,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ADMIN_TOKEN = "erasure-test-admin-token-0123456789abcdef"
FEEDBACK_EVENTS = 4


def lmrecsys(env: dict, *args: str) -> subprocess.CompletedProcess:
    """The real ``lmrecsys`` command in a child process, with the stack's settings."""
    return subprocess.run(
        [str(VENV_BIN / "lmrecsys"), *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=300
    )


def _is_user_column(name: str) -> bool:
    return "user" in str(name).lower()


def scan_for_user(root: Path, pg_url: str, user: str) -> list[str]:
    """Every place under ``root`` (Parquet, JSON, SQLite) and in the PostgreSQL database ``pg_url``
    with a row or value whose user column equals ``user``; written apart from ``users audit``."""
    found: list[str] = []
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
            for column in filter(_is_user_column, frame.columns):
                rows = int((frame[column].astype(str) == user).sum())
                if rows:
                    found.append(f"{path} [{column}]: {rows} row(s)")
        elif path.suffix == ".json":
            try:
                body = json.loads(path.read_text())
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            found += [f"{path}: {hit}" for hit in _json_hits(body, user)]
        elif path.suffix == ".db" or path.name.endswith((".sqlite", ".sqlite3")):
            found += [f"{path}: {hit}" for hit in _sqlite_hits(path, user)]
    found += [f"postgresql: {hit}" for hit in _postgres_hits(pg_url, user)]
    return found


def _json_hits(body, user: str, trail: str = "$") -> list[str]:
    hits = []
    if isinstance(body, dict):
        for key, value in body.items():
            if _is_user_column(key) and not isinstance(value, (dict, list)) and str(value) == user:
                hits.append(f"{trail}.{key}")
            hits += _json_hits(value, user, f"{trail}.{key}")
    elif isinstance(body, list):
        for i, value in enumerate(body):
            hits += _json_hits(value, user, f"{trail}[{i}]")
    return hits


def _sqlite_hits(path: Path, user: str) -> list[str]:
    hits = []
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            columns = [row[1] for row in connection.execute(f'PRAGMA table_info("{table}")')]
            for column in filter(_is_user_column, columns):
                (rows,) = connection.execute(
                    f'SELECT COUNT(*) FROM "{table}" WHERE CAST("{column}" AS TEXT) = ?', (user,)
                ).fetchone()
                if rows:
                    hits.append(f"{table}.{column}: {rows} row(s)")
    finally:
        connection.close()
    return hits


def _postgres_hits(url: str, user: str) -> list[str]:
    import psycopg2

    hits = []
    connection = psycopg2.connect(url)
    try:
        with connection.cursor() as cur:
            cur.execute("SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'")
            for table, column in cur.fetchall():
                if not _is_user_column(column):
                    continue
                cur.execute(f'SELECT COUNT(*) FROM "{table}" WHERE CAST("{column}" AS TEXT) = %s', (user,))
                (rows,) = cur.fetchone()
                if rows:
                    hits.append(f"{table}.{column}: {rows} row(s)")
    finally:
        connection.close()
    return hits


def test_forget_a_user_everywhere(tmp_path, movielens_dir, postgres_url, reference_run):
    data_root = tmp_path / "data"
    env = reduced_env(
        data_root,
        movielens_dir,
        LMRECSYS_FEEDBACK__URL=postgres_url,
        LMRECSYS_FEEDBACK__TRIGGER_MIN_EVENTS="1000",  # only the erasure request starts the second run
        LMRECSYS_AIRFLOW__WATCH_INTERVAL_S="5",
        LMRECSYS_SERVING__POLL_INTERVAL_S="2",
        LMRECSYS_SERVING__ADMIN_TOKEN=ADMIN_TOKEN,
        LMRECSYS_PRIVACY__ERASURE_KEY="erasure-test-key",
        LMRECSYS_TRAIN__MODEL_CONFIGS=json.dumps({"lm_sasrec": {"max_epochs": 6}}),  # CI time; cold either way
    )
    seed_embedding_cache(reference_run["cache"], data_root)
    settings = load_settings(
        data_root=data_root,
        feedback={"url": postgres_url},
        serving={"admin_token": ADMIN_TOKEN},
        privacy={"erasure_key": "erasure-test-key"},
    )
    ratings = pd.read_csv(movielens_dir / "ratings.csv")
    reference = pd.read_parquet(
        next((reference_run["data_root"] / "snapshots").glob("*/interactions.parquet")), columns=["user_id", "item_id"]
    )
    counts = reference["user_id"].value_counts()
    user, other = str(counts.index[0]), str(counts.index[1])  # the two users with most interactions
    seen = set(ratings.loc[ratings["userId"] == int(user), "movieId"])
    unseen = [str(i) for i in reference["item_id"].drop_duplicates() if i not in seen]

    store = FeedbackStore(postgres_url)  # feedback the service logged before the first run
    try:
        store.append(
            [FeedbackEvent(user, item, "like", event_id=f"early-{user}-{item}") for item in unseen[:FEEDBACK_EVENTS]]
            + [FeedbackEvent(other, unseen[-1], "like", event_id="early-other")]
        )
    finally:
        store.close()

    stack = AirflowStack(tmp_path / "airflow", DAGS_FOLDER, env)
    server = None
    try:
        stack.start()
        stack.wait_dag(PIPELINE)
        stack.wait_dag("lm_recsys_feedback_watch")
        first = stack.trigger(PIPELINE)
        assert stack.wait_run(PIPELINE, first, timeout=900) == "success", describe_run(stack, first)
        decision = stack.xcom(PIPELINE, first, "promote")
        assert decision["decision"] == "promoted" and str(decision["version"]) == "1"
        first_snapshot = decision["snapshot_id"]
        held = pd.read_parquet(settings.snapshots_dir / first_snapshot / "interactions.parquet")
        mine = held[held["user_id"].astype(str) == user]
        assert len(mine) > FEEDBACK_EVENTS and {f"early-{user}-{i}" for i in unseen[:FEEDBACK_EVENTS]} <= set(
            mine["event_id"]
        ), "the first snapshot holds the user's source ratings and stored feedback"

        server = BentoServer(env, tmp_path / "logs", DAGS_FOLDER.parent).wait_ready(timeout=300)
        posted = server.post("/feedback", {"user_id": user, "item_id": unseen[FEEDBACK_EVENTS], "event": "like"})
        assert posted.status_code == 200, posted.text
        before = server.post("/recommend", {"user_id": user, "k": 5}).json()
        assert before["source"] == "history" and before["model_version"] == "1", before
        assert server.post("/history", {"user_id": user}).json()["items"]

        audit = lmrecsys(env, "users", "audit", user, "--json", "--service-url", server.base)
        assert audit.returncode == 1, audit.stdout + audit.stderr
        places = {place["place"] for place in json.loads(audit.stdout)["places"]}
        assert {"feedback store", "snapshot", "file", "service memory"} <= places, places

        # 3. forget: at once in the store, within the refresh in the service
        runs_before = {run["dag_run_id"] for run in stack.runs(PIPELINE)}
        forgot = lmrecsys(env, "users", "forget", user, "--reason", "erasure test request", "--json")
        assert forgot.returncode == 0, forgot.stdout + forgot.stderr
        assert json.loads(forgot.stdout)["events_deleted"] == FEEDBACK_EVENTS + 1
        store = FeedbackStore(postgres_url)
        try:
            assert store.user_event_count(user) == 0 and store.user_event_count(other) == 1
        finally:
            store.close()

        def served_as_new():
            body = server.post("/recommend", {"user_id": user, "k": 5}).json()
            return body if body["source"] != "history" else None

        started = time.monotonic()
        after = wait_for(served_as_new, 10, interval=0.2, what="the service to forget the user", procs=[server])
        assert time.monotonic() - started < 5
        assert after["source"] == "popularity (unknown user)" and after["recent_events_used"] == 0
        own_titles = set(pd.read_csv(movielens_dir / "movies.csv").set_index("movieId").loc[list(seen)]["title"])
        assert not any(title in (item.get("explanation") or "") for item in after["items"] for title in own_titles), (
            "no explanation cites the forgotten user's items"
        )
        assert server.post("/history", {"user_id": user}).json()["items"] == []
        assert server.post("/recommend", {"user_id": other, "k": 5}).json()["source"] == "history"

        # 4. the erasure request triggers the next run by itself; it trains cold and is promoted
        def erasure_run():
            fresh = [run for run in stack.runs(PIPELINE) if run["dag_run_id"] not in runs_before]
            return fresh[0] if fresh else None

        second = wait_for(erasure_run, 120, interval=2, what="the erasure-triggered run", procs=stack.procs)
        assert second["run_type"] == "asset_triggered"
        assert stack.wait_run(PIPELINE, second["dag_run_id"], timeout=900) == "success", describe_run(
            stack, second["dag_run_id"]
        )
        decision = stack.xcom(PIPELINE, second["dag_run_id"], "promote")
        assert decision["decision"] == "promoted" and decision["reason"].startswith("erasure"), decision
        client = MlflowClient(settings.tracking_uri)
        version = client.get_model_version(settings.registry.model_name, str(decision["version"]))
        assert version.tags["gate.decision"] == "promoted" and "erasure" in version.tags["gate.reason"]
        assert version.tags.get("warm_start", "cold") in ("cold", "none", "false"), version.tags

        # 5. the purge: the old version retired, the old snapshot rewritten without the user
        old = client.get_model_version(settings.registry.model_name, "1")
        assert old.tags.get("retired") == "erasure", old.tags
        assert not (settings.snapshots_dir / first_snapshot).exists()
        rewritten = [
            json.loads(path.read_text())
            for path in settings.snapshots_dir.glob("*/manifest.json")
            if "rewritten" in json.loads(path.read_text())
        ]
        assert [record["from"] for m in rewritten for record in m["rewritten"]] == [first_snapshot], rewritten
        assert rewritten[0]["rewritten"][0]["rows_removed"] == len(mine)
        listing = lmrecsys(env, "models", "list", "--json")
        assert listing.returncode == 0, listing.stderr
        retired = {str(row["version"]): row.get("retired") for row in json.loads(listing.stdout)}
        assert retired["1"] and not retired[str(decision["version"])], retired

        wait_for(
            lambda: (
                server.post("/recommend", {"user_id": other, "k": 5}).json()["model_version"]
                == str(decision["version"])
            ),
            60,
            what="the service to serve the erasure's champion",
            procs=[server],
        )

        # 6. proof: the audit, the request's state, and an independent scan
        audit = lmrecsys(env, "users", "audit", user, "--json", "--service-url", server.base)
        assert audit.returncode == 0, audit.stdout + audit.stderr
        assert json.loads(audit.stdout) == {"user_id": user, "found": 0, "places": []}
        forgotten = json.loads(lmrecsys(env, "users", "forgotten", "--json").stdout)
        assert [row["state"] for row in forgotten] == ["done"], forgotten
        assert all(value != user for row in forgotten for value in row.values()) and "user_id" not in forgotten[0]
        leftovers = scan_for_user(data_root, postgres_url, user)
        assert leftovers == [], leftovers
        assert scan_for_user(data_root, postgres_url, other), "the scan finds a user who was not forgotten"
        answered = requests.post(f"{server.base}/recommend", json={"user_id": user, "k": 5}, timeout=30).json()
        assert answered["source"] == "popularity (unknown user)"
    finally:
        if server is not None:
            server.stop()
        stack.stop()
