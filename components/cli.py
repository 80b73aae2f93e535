"""The ``lmrecsys`` command line: run the pipeline, inspect snapshots and models, serve, replay feedback.

Output is human-readable by default and JSON with ``--json``. Exit codes: 0 success, 1 a handled
error (the message says what to do), 2 bad usage, 3 a snapshot failed validation, 4 the gate
rejected the challenger.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

app = typer.Typer(
    help="lm-recsys: a language-model recommender and its whole life cycle.", no_args_is_help=True, add_completion=False
)
pipeline_app = typer.Typer(
    help="Run the ingest → validate → embed → train → evaluate → register → promote pipeline.", no_args_is_help=True
)
snapshots_app = typer.Typer(
    help="List and inspect immutable data snapshots; accept a rejected one.", no_args_is_help=True
)
models_app = typer.Typer(
    help="Registered model versions: list, champion history, promote, roll back.", no_args_is_help=True
)
feedback_app = typer.Typer(
    help="Feedback events: replay a file into the store, hold events back, list what is held.", no_args_is_help=True
)
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(snapshots_app, name="snapshots")
app.add_typer(models_app, name="models")
app.add_typer(feedback_app, name="feedback")

EXIT_ERROR, EXIT_VALIDATION, EXIT_REJECTED = 1, 3, 4
JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON instead of text.")


def _quiet_env() -> None:
    from components.settings import disable_telemetry

    disable_telemetry()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _settings():
    from components.settings import load_settings

    return load_settings()


def _emit(data, as_json: bool, text: str | None = None) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
    else:
        typer.echo(text if text is not None else json.dumps(data, indent=2, default=str))


def _fail(message: str, code: int = EXIT_ERROR):
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def _table(rows: list[dict], columns: list[str]) -> str:
    """Rows as a plain-text table (rich, no colour, never wrapped or cut)."""
    if not rows:
        return "(none)"
    from rich.box import SIMPLE_HEAD
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns, box=SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for row in rows:
        table.add_row(*(str(row.get(c, "")) for c in columns))
    console = Console(width=10_000, no_color=True, highlight=False, markup=False)
    with console.capture() as captured:
        console.print(table, overflow="ignore", crop=False)
    return "\n".join(line.rstrip() for line in captured.get().splitlines() if line.strip())


# ------------------------------------------------------------------ pipeline
@pipeline_app.command("run")
def pipeline_run(
    through_airflow: bool = typer.Option(
        False,
        "--through-airflow",
        help="Trigger the lm_recsys_pipeline DAG through the Airflow REST API instead of running in-process.",
    ),
    airflow_url: str | None = typer.Option(
        None, help="Airflow api-server base URL (with --through-airflow; default: the airflow.url setting)."
    ),
    snapshot_id: str | None = typer.Option(
        None, help="Retrain on this accepted snapshot instead of ingesting (with --through-airflow)."
    ),
    as_json: bool = JsonOption,
):
    """Run the whole pipeline once and report the gate's decision."""
    _quiet_env()
    from components.errors import LmRecsysError, ValidationFailed

    if through_airflow:
        import requests

        airflow = _settings().airflow
        airflow_url = airflow_url or airflow.url
        user, password = airflow.username, airflow.password.get_secret_value()
        try:
            token = requests.post(
                f"{airflow_url}/auth/token", json={"username": user, "password": password}, timeout=10
            ).json()["access_token"]
            run = requests.post(
                f"{airflow_url}/api/v2/dags/lm_recsys_pipeline/dagRuns",
                headers={"Authorization": f"Bearer {token}"},
                json={"logical_date": None, "conf": {"snapshot_id": snapshot_id} if snapshot_id else {}},
                timeout=10,
            )
            run.raise_for_status()
        except (requests.RequestException, KeyError, ValueError) as exc:
            _fail(f"could not trigger the DAG through {airflow_url}: {exc}")
        _emit(
            run.json(), as_json, f"triggered {run.json()['dag_run_id']}; follow it in the Airflow UI at {airflow_url}"
        )
        return
    from components.pipeline import run_pipeline

    try:
        decision = run_pipeline(_settings())
    except ValidationFailed as exc:
        _fail(str(exc), EXIT_VALIDATION)
    except LmRecsysError as exc:
        _fail(str(exc))
    except OSError as exc:  # a full disk, a read-only data root: every write is atomic, so nothing is half-written
        _fail(f"{exc}; nothing was half-written and the champion is unchanged: fix the cause and run again")
    _emit(
        decision,
        as_json,
        f"version {decision['version']} ({decision['model_kind']}) {decision['decision']}: {decision['reason']}",
    )
    if decision["decision"] not in ("promoted", "online"):  # online: an online experiment decides
        raise typer.Exit(EXIT_REJECTED)


# ------------------------------------------------------------------ snapshots
@snapshots_app.command("list")
def snapshots_list(
    as_json: bool = JsonOption,
    quarantined: bool = typer.Option(False, "--quarantined", help="List quarantined snapshots instead."),
):
    """Every snapshot, oldest first, with its validation state."""
    from components.data.snapshots import list_snapshots

    settings = _settings()
    folder = settings.quarantine_dir if quarantined else settings.snapshots_dir
    rows = []
    for snap in list_snapshots(folder):
        manifest = snap.manifest
        rows.append(
            {
                "snapshot_id": snap.snapshot_id,
                "state": "accepted" if snap.accepted else ("rejected" if snap.validation else "unvalidated"),
                "interactions": manifest["row_counts"]["interactions"],
                "items": manifest["row_counts"]["items"],
                "users": manifest["row_counts"]["users"],
                "feedback_watermark": manifest["feedback_watermark"],
                "parent": manifest["parent"] or "-",
            }
        )
    _emit(
        rows,
        as_json,
        _table(rows, ["snapshot_id", "state", "interactions", "items", "users", "feedback_watermark", "parent"]),
    )


@snapshots_app.command("show")
def snapshots_show(snapshot_id: str, as_json: bool = JsonOption):
    """A snapshot's manifest and validation summary."""
    from components.data.snapshots import open_snapshot
    from components.errors import LmRecsysError

    settings = _settings()
    try:
        snap = open_snapshot(settings.snapshots_dir, snapshot_id)
    except LmRecsysError:
        try:
            snap = open_snapshot(settings.quarantine_dir, snapshot_id)
        except LmRecsysError as exc:
            _fail(str(exc))
    validation = snap.validation or {}
    data = {
        "manifest": snap.manifest,
        "validation": {k: validation.get(k) for k in ("success", "checks", "failed", "validated_at")},
        "path": str(snap.path),
    }
    _emit(data, as_json)


# ------------------------------------------------------------------ models
@models_app.command("list")
def models_list(as_json: bool = JsonOption):
    """Every registered version with its aliases, gate decision and metric."""
    _quiet_env()
    from components.registry import list_versions

    rows = list_versions(_settings())
    _emit(
        rows,
        as_json,
        _table(
            rows,
            [
                c
                for c in ("version", "aliases", "model_kind", "snapshot_id", "decision", "reason")
                if rows and c in rows[0]
            ],
        ),
    )


@models_app.command("history")
def models_history(as_json: bool = JsonOption):
    """Which version was champion when, and why."""
    _quiet_env()
    from components.registry import champion_history

    rows = champion_history(_settings())
    _emit(
        rows,
        as_json,
        _table(
            rows,
            [c for c in ("at", "version", "previous", "by", "action", "reason", "retired") if rows and c in rows[0]],
        ),
    )


@models_app.command("promote")
def models_promote(
    version: str = typer.Option(..., "--version", help="The version to make champion."),
    force: bool = typer.Option(False, "--force", help="Required: a human promotion bypasses the gate."),
    reason: str = typer.Option(..., "--reason", help="Why; recorded on the version."),
    as_json: bool = JsonOption,
):
    """Make a version champion by hand (recorded as forced by a human)."""
    _quiet_env()
    from components.errors import LmRecsysError
    from components.registry import force_promote

    if not force:
        _fail("promoting by hand bypasses the gate; pass --force to confirm", 2)
    try:
        result = force_promote(_settings(), version, reason)
    except LmRecsysError as exc:
        _fail(str(exc))
    _emit(result, as_json, f"version {version} is champion (forced): {reason}")


@models_app.command("rollback")
def models_rollback(
    reason: str = typer.Option(..., "--reason", help="Why; recorded on the version."), as_json: bool = JsonOption
):
    """Move champion back to the previous champion."""
    _quiet_env()
    from components.errors import LmRecsysError
    from components.registry import rollback

    try:
        result = rollback(_settings(), reason)
    except LmRecsysError as exc:
        _fail(str(exc))
    _emit(result, as_json, f"champion rolled back to version {result.get('version')}: {reason}")


# ------------------------------------------------------------------ serve, feedback, status
@app.command()
def serve(
    port: int = typer.Option(3000, help="Port to listen on."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
):
    """Serve the champion with BentoML (``bentoml serve serving.service:RecommenderService``)."""
    _quiet_env()
    from components.settings import PROJECT_ROOT

    bentoml = Path(sys.executable).parent / "bentoml"
    os.chdir(PROJECT_ROOT)
    os.execv(
        str(bentoml), [str(bentoml), "serve", "serving.service:RecommenderService", "--host", host, "--port", str(port)]
    )


@feedback_app.command("replay")
def feedback_replay(
    path: Path = typer.Argument(
        ...,
        exists=True,
        dir_okay=False,
        help="CSV or JSON-lines file of events: user_id, item_id, event[, value, timestamp, event_id].",
    ),
    as_json: bool = JsonOption,
):
    """Write a file of feedback events to the store (idempotent by event_id)."""
    import pandas as pd

    from components.feedback.store import FeedbackError, FeedbackEvent, FeedbackStore

    try:
        frame = pd.read_json(path, lines=True) if path.suffix in (".jsonl", ".json") else pd.read_csv(path)
    except ValueError as exc:
        _fail(f"{path} could not be read: {exc}")
    missing = {"user_id", "item_id", "event"} - set(frame.columns)
    if missing:
        _fail(f"{path} lacks column(s) {sorted(missing)}")
    events = [
        FeedbackEvent(
            str(row["user_id"]),
            str(row["item_id"]),
            str(row["event"]),
            None if pd.isna(row.get("value")) else float(row["value"]),
            None if pd.isna(row.get("timestamp")) else float(row["timestamp"]),
            None if pd.isna(row.get("event_id")) else str(row["event_id"]),
        )
        for row in frame.to_dict("records")
    ]
    store = FeedbackStore(_settings().feedback_url)
    try:
        written = store.append(events)
    except FeedbackError as exc:
        _fail(f"nothing was written: {exc}")
    new = sum(fresh for _, fresh in written)
    _emit(
        {"events": len(written), "new": new, "duplicates": len(written) - new},
        as_json,
        f"{len(written)} events: {new} new, {len(written) - new} already present",
    )


@app.command()
def status(as_json: bool = JsonOption):
    """The champion, the newest snapshots, and the feedback backlog."""
    _quiet_env()
    from components.data.snapshots import list_snapshots
    from components.feedback.trigger import feedback_backlog
    from components.registry import CHAMPION, configure, get_alias_version

    settings = _settings()
    client = configure(settings)
    champion = get_alias_version(client, settings.registry.model_name, CHAMPION)
    runs = client.search_runs(
        [client.get_experiment_by_name(settings.registry.experiment_name).experiment_id],
        max_results=5,
        order_by=["attributes.start_time DESC"],
    )
    snaps = list_snapshots(settings.snapshots_dir)
    backlog = feedback_backlog(settings)
    data = {
        "champion": None
        if champion is None
        else {
            "version": str(champion.version),
            "model_kind": champion.tags.get("model_kind"),
            "snapshot_id": champion.tags.get("snapshot_id"),
        },
        "last_runs": [
            {
                "run_id": r.info.run_id,
                "name": r.info.run_name,
                "status": r.info.status,
                "snapshot_id": r.data.tags.get("snapshot_id"),
            }
            for r in runs
        ],
        "snapshots": len(snaps),
        "newest_snapshot": snaps[-1].snapshot_id if snaps else None,
        "feedback_backlog": backlog.as_dict(),
    }
    text = "\n".join(
        [
            f"champion: {_describe_champion(data['champion'])}",
            f"snapshots: {data['snapshots']} (newest {data['newest_snapshot']})",
            f"feedback: {backlog.untrained_events} events not yet trained on; "
            f"next run due: {'yes' if backlog.due else 'no'} ({backlog.reason})",
            "last runs:",
            _table(data["last_runs"], ["name", "status", "snapshot_id"]),
        ]
    )
    _emit(data, as_json, text)


def _describe_champion(champion: dict | None) -> str:
    if champion is None:
        return "none"
    return f"version {champion['version']} ({champion['model_kind']}, snapshot {champion['snapshot_id']})"


from components import cli_experiments, cli_operator, cli_privacy  # noqa: E402, F401  (the command groups)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
