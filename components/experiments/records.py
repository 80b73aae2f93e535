"""Starting, stopping, listing and showing online experiments (what the CLI and the admin routes call).

A start checks everything before anything is written: the share, mode, metric and duration; that the
model has a champion; that the challenger version exists, is not the champion, has an intact bundle
and passes the load-and-predict smoke test in a fresh process; and that no experiment already runs on
the model (checked again inside the insert's transaction, so two racing starts leave one). A bad input
raises :class:`ExperimentError` naming the problem, and nothing changes.
"""

from __future__ import annotations

import getpass
import math
import uuid

from mlflow.exceptions import MlflowException

from components.errors import LmRecsysError
from components.feedback.impressions import ExperimentConflict
from components.feedback.store import FeedbackStore
from components.registry.history import servable
from components.registry.tracking import CHAMPION, aliased_version, configure, utc_now
from components.settings import METRICS, Settings

MODES = ("split", "interleave")


class ExperimentError(LmRecsysError):
    """An experiment cannot be started, stopped or found; the message says why. Nothing was changed."""


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def check_inputs(share: float, mode: str, metric: str, max_days: float) -> None:
    if not isinstance(share, int | float) or not math.isfinite(share) or not 0 < share < 1:
        raise ExperimentError(f"--share must lie strictly between 0 and 1 (got {share}); nothing was started")
    if mode not in MODES:
        raise ExperimentError(f"--mode must be one of {', '.join(MODES)} (got {mode!r}); nothing was started")
    if metric not in METRICS:
        raise ExperimentError(f"--metric must be one of {', '.join(METRICS)} (got {metric!r}); nothing was started")
    if not isinstance(max_days, int | float) or not math.isfinite(max_days) or max_days <= 0:
        raise ExperimentError(f"--max-days must be a positive number (got {max_days}); nothing was started")


def tag_versions(client, name: str, experiment: dict, values: dict) -> None:
    """``experiment.*`` tags on both versions of an experiment."""
    for role in ("champion", "challenger"):
        version = experiment[f"{role}_version"]
        tags = {"id": experiment["experiment_id"], "role": role, **values}
        for key, value in tags.items():
            client.set_model_version_tag(name, version, f"experiment.{key}", str(value)[:5000])


def start_experiment(
    settings: Settings,
    challenger: str | int,
    *,
    share: float | None = None,
    mode: str | None = None,
    metric: str = "like_rate",
    max_days: float | None = None,
    created_by: str | None = None,
    smoke: bool = True,
) -> dict:
    """Start an experiment of ``challenger`` against the current champion; returns its record."""
    config = settings.experiments
    share = config.default_share if share is None else share
    mode = config.default_mode if mode is None else mode
    max_days = config.default_max_days if max_days is None else max_days
    check_inputs(share, mode, metric, max_days)
    client = configure(settings)
    name, challenger = settings.registry.model_name, str(challenger).strip()
    champion = aliased_version(client, name, CHAMPION)
    if champion is None:
        raise ExperimentError(f"{name!r} has no champion to compare a challenger with; nothing was started")
    try:
        client.get_model_version(name, challenger)
    except MlflowException as exc:
        raise ExperimentError(f"{name!r} has no version {challenger!r}; nothing was started") from exc
    if challenger == champion:
        raise ExperimentError(f"version {challenger} is the champion already; nothing was started")
    store = FeedbackStore(settings.feedback_url)
    try:
        running = store.experiments(state="running", model_name=name)
        if running:
            raise ExperimentConflict(
                f"experiment {running[0]['experiment_id']} is already running on model {name!r}; "
                "stop it first (lmrecsys experiments stop ID --reason ...); nothing was started"
            )
        if smoke:
            ok, message = servable(settings, client, challenger)
            if not ok:
                raise ExperimentError(f"version {challenger} fails its smoke test: {message}; nothing was started")
        record = store.create_experiment(
            {
                "experiment_id": f"exp-{uuid.uuid4().hex[:10]}",
                "model_name": name,
                "champion_version": champion,
                "challenger_version": challenger,
                "share": float(share),
                "mode": mode,
                "metric": metric,
                "max_days": float(max_days),
                "created_by": created_by or _user(),
            }
        )
    finally:
        store.close()
    tag_versions(client, name, record, {"state": "running", "started_at": utc_now(), "mode": mode, "share": share})
    return record


def get_experiment(settings: Settings, experiment_id: str | None = None) -> dict:
    """One experiment (the newest when ``experiment_id`` is None); ExperimentError when there is none."""
    store = FeedbackStore(settings.feedback_url)
    try:
        found = store.experiments(model_name=settings.registry.model_name)
    finally:
        store.close()
    if experiment_id is not None:
        found = [e for e in found if e["experiment_id"] == str(experiment_id)]
    if not found:
        what = f"experiment {experiment_id!r}" if experiment_id else "an experiment"
        raise ExperimentError(f"there is no {what} on model {settings.registry.model_name!r}")
    return found[0]


def list_experiments(settings: Settings) -> list[dict]:
    store = FeedbackStore(settings.feedback_url)
    try:
        return store.experiments(model_name=settings.registry.model_name)
    finally:
        store.close()
