"""The end-to-end demo behind ``make demo``: the whole loop on one machine, with progress.

It starts Airflow (SQLite, LocalExecutor), an MLflow UI and the BentoML service; runs the
pipeline through Airflow; shows recommendations for a known user, a free-text query and a new
item; posts feedback; then watches the next run start by itself and the new version get served.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd
import typer

from components.settings import PROJECT_ROOT, load_settings
from devtools.stack import (
    TELEMETRY_OFF,
    VENV_BIN,
    AirflowStack,
    BentoServer,
    ManagedProcess,
    free_port,
    http_ok,
    wait_for,
)

QUERY = "a funny space adventure for kids"


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _show(title: str, body: dict) -> None:
    _say(f"{title} (model {body.get('model')} v{body.get('model_version')}, source {body.get('source', '-')}):")
    for item in body["items"]:
        why = f"  — {item['explanation']}" if item.get("explanation") else ""
        print(f"     {item['rank']:>2}. {item['title']}{why}", flush=True)


def _port(preferred: int) -> int:
    import socket

    if not preferred:
        return free_port()
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return free_port()


def _follow_run(stack: AirflowStack, run_id: str, timeout: float) -> str:
    """Wait for a pipeline run, printing each task as it finishes."""
    reported: set[str] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ti in stack.task_instances("lm_recsys_pipeline", run_id):
            key = f"{ti['task_id']}[{ti.get('map_index', -1)}]"
            if ti["state"] in ("success", "failed", "skipped", "upstream_failed") and key not in reported:
                reported.add(key)
                shard = f" shard {ti['map_index']}" if ti.get("map_index", -1) >= 0 else ""
                _say(f"  task {ti['task_id']}{shard}: {ti['state']}")
        state = stack.run_state("lm_recsys_pipeline", run_id)
        if state in ("success", "failed"):
            return state
        time.sleep(2)
    raise TimeoutError(f"pipeline run {run_id} did not finish within {timeout}s")


def run_demo(
    data_root: Path,
    *,
    source: str | None = None,
    max_users: int | None = None,
    feedback_events: int = 20,
    keep_running: bool = True,
    airflow_port: int = 8080,
    mlflow_port: int = 5000,
    bento_port: int = 3000,
) -> dict:
    """Run the demo; return what it showed (for tests). With keep_running, wait for Ctrl-C at the end."""
    data_root = Path(data_root).resolve()
    data_root.mkdir(parents=True, exist_ok=True)
    env = {
        "LMRECSYS_DATA_ROOT": str(data_root),
        "LMRECSYS_FEEDBACK__TRIGGER_MIN_EVENTS": str(feedback_events),
        "LMRECSYS_AIRFLOW__WATCH_INTERVAL_S": "10",
        "LMRECSYS_SERVING__POLL_INTERVAL_S": "3",
        "LMRECSYS_AIRFLOW__PIPELINE_CRON": os.environ.get("LMRECSYS_AIRFLOW__PIPELINE_CRON", "@daily"),
    }
    if source:
        env["LMRECSYS_INGEST__SOURCE"] = source
    if max_users:
        env["LMRECSYS_INGEST__MAX_USERS"] = str(max_users)
    for key, value in os.environ.items():  # pass the person's own LMRECSYS_* settings through
        if key.startswith("LMRECSYS_") and key not in env:
            env[key] = value
    os.environ.update(env)
    settings = load_settings()
    shown: dict = {"data_root": str(data_root)}
    processes: list[ManagedProcess] = []
    stack = AirflowStack(data_root / "airflow", PROJECT_ROOT / "dags", env)
    stack.port = _port(airflow_port)
    stack.base = f"http://127.0.0.1:{stack.port}"
    stack.env.update(
        {"AIRFLOW__API__PORT": str(stack.port), "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{stack.base}/execution/"}
    )
    try:
        _say(f"data root: {data_root}; source: {settings.resolved_source()}")
        _say("starting Airflow (api-server, scheduler, dag-processor) on SQLite with LocalExecutor …")
        stack.start()
        stack.wait_dag("lm_recsys_pipeline")
        stack.wait_dag("lm_recsys_feedback_watch")
        mlflow_port = _port(mlflow_port)
        mlflow_ui = ManagedProcess(
            "mlflow-ui",
            [
                str(VENV_BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                settings.tracking_uri,
                "--host",
                "127.0.0.1",
                "--port",
                str(mlflow_port),
                "--workers",
                "1",
            ],
            {**os.environ, **TELEMETRY_OFF, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            data_root / "logs",
        )
        processes.append(mlflow_ui)
        _say(f"Airflow UI: {stack.base}  (user admin, password admin)")

        _say("triggering lm_recsys_pipeline through the Airflow REST API …")
        first = stack.trigger("lm_recsys_pipeline")
        if _follow_run(stack, first, 1800) != "success":
            raise RuntimeError(f"the first pipeline run failed; see the Airflow UI at {stack.base}")
        decision = stack.xcom("lm_recsys_pipeline", first, "promote")
        _say(f"version {decision['version']} ({decision['model_kind']}): {decision['decision']} — {decision['reason']}")
        shown.update(
            first_run_id=first,
            first_version=decision["version"],
            first_decision=decision["decision"],
            first_snapshot_id=decision["snapshot_id"],
        )

        _say("starting the BentoML service …")
        server = BentoServer(env, data_root / "logs", PROJECT_ROOT, port=_port(bento_port))
        processes.append(server)
        server.wait_ready(timeout=300)
        wait_for(
            lambda: http_ok(f"http://127.0.0.1:{mlflow_port}/health"), 120, what="the MLflow UI", procs=[mlflow_ui]
        )
        _say(f"MLflow UI: http://127.0.0.1:{mlflow_port}   BentoML: {server.base} (API docs at /docs, web page at /ui)")

        snapshot = settings.snapshots_dir / decision["snapshot_id"]
        interactions = pd.read_parquet(snapshot / "interactions.parquet")
        items = pd.read_parquet(snapshot / "items.parquet")
        user = (
            int(interactions["user_id"].iloc[0])
            if pd.api.types.is_integer_dtype(interactions["user_id"])
            else str(interactions["user_id"].iloc[0])
        )
        body = server.post("/recommend", {"user_id": user, "k": 5}).json()
        _show(f"recommendations for known user {user}", body)
        shown["known_user"] = body
        body = server.post("/search", {"query": QUERY, "k": 5}).json()
        _show(f"free-text search {QUERY!r}", body)
        shown["search"] = body
        unrated = items[~items["item_id"].isin(interactions["item_id"])]
        new_item = unrated.iloc[-1] if len(unrated) else items.iloc[-1]
        why_new = "which nobody has rated yet" if len(unrated) else "the newest item in the catalogue"
        body = server.post(
            "/similar_items",
            {
                "item_id": new_item["item_id"].item() if hasattr(new_item["item_id"], "item") else new_item["item_id"],
                "k": 5,
            },
        ).json()
        _show(f"items like {new_item['title']!r}, {why_new} (served from its text)", body)
        shown["new_item"] = body

        runs_before = {run["dag_run_id"] for run in stack.runs("lm_recsys_pipeline")}
        liked = [
            i["item_id"]
            for i in server.post("/search", {"query": "animated family adventure", "k": feedback_events * 2}).json()[
                "items"
            ]
        ]
        seen = set(interactions.loc[interactions["user_id"] == user, "item_id"])
        liked = [i for i in liked if i not in seen][:feedback_events]
        payload = [
            {"user_id": user, "item_id": item, "event": "like", "event_id": f"demo-{user}-{item}-{int(time.time())}"}
            for item in liked
        ]
        written = server.post("/feedback_batch", {"events": payload}).json()
        shown.update(user=user, feedback_event_ids=[event["event_id"] for event in payload], feedback_written=written)
        _say(
            f"posted {written['accepted']} likes from user {user} to /feedback_batch; "
            f"the watcher checks every 10 s for ≥ {feedback_events} new events …"
        )
        body = server.post("/recommend", {"user_id": user, "k": 5}).json()
        _show(f"recommendations for user {user} right away (request-time feedback, no retraining)", body)
        shown["after_feedback"] = body

        def next_run():
            fresh = [run for run in stack.runs("lm_recsys_pipeline") if run["dag_run_id"] not in runs_before]
            return fresh[0] if fresh else None

        second = wait_for(next_run, 300, interval=2, what="the feedback-triggered run", procs=stack.procs)
        _say(f"a new run started by itself: {second['dag_run_id']} ({second['run_type']})")
        shown["second_run"] = second
        if _follow_run(stack, second["dag_run_id"], 1800) != "success":
            raise RuntimeError(f"the feedback-triggered run failed; see {stack.base}")
        decision = stack.xcom("lm_recsys_pipeline", second["dag_run_id"], "promote")
        _say(f"version {decision['version']}: {decision['decision']} — {decision['reason']}")
        shown.update(
            second_version=decision["version"],
            second_decision=decision["decision"],
            second_snapshot_id=decision["snapshot_id"],
        )
        if decision["decision"] == "promoted":
            wait_for(
                lambda: (
                    server.post("/recommend", {"user_id": user, "k": 5}).json()["model_version"]
                    == str(decision["version"])
                ),
                120,
                what="the service to swap",
                procs=[server],
            )
        body = server.post("/recommend", {"user_id": user, "k": 5}).json()
        _show(f"recommendations for user {user} from the served model", body)
        shown["final"] = body
        _say(
            "done. "
            + (
                f"Airflow {stack.base} · MLflow http://127.0.0.1:{mlflow_port} · BentoML {server.base}/ui"
                " — press Ctrl-C to stop."
                if keep_running
                else "stopping."
            )
        )
        if keep_running:
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        return shown
    finally:
        for process in reversed(processes):
            process.stop()
        stack.stop()


def demo(
    data_root: Path = typer.Option(
        Path(".lmrecsys/demo"), envvar="LMRECSYS_DATA_ROOT", help="Data root of the demo's stores."
    ),
    max_users: int | None = typer.Option(None, help="Use only the first N users (faster)."),
    no_wait: bool = typer.Option(False, "--no-wait", help="Stop everything at the end instead of waiting for Ctrl-C."),
) -> None:
    """Run the lm-recsys demo end to end on this machine."""
    for name, value in TELEMETRY_OFF.items():
        os.environ.setdefault(name, value)
    shown = run_demo(data_root, max_users=max_users, keep_running=not no_wait)
    print(json.dumps({k: v for k, v in shown.items() if k.endswith("version") or k.endswith("decision")}))


def main() -> None:
    typer.run(demo)


if __name__ == "__main__":
    main()
