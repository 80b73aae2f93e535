"""The life cycle as stage functions over small handles, plus an in-process runner.

Each stage takes settings and handles (snapshot id, folder paths) and returns a handle, so an
Airflow task body is one call and only short strings cross XCom. Outputs are written under a
temporary name and renamed into place: a killed task leaves nothing half-written, and a retry
starts clean.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np

from components.data.atomic import atomic_write_text
from components.data.dataset import InteractionData, leave_last_out
from components.data.handles import inside
from components.data.snapshots import open_snapshot
from components.embed import embed_items, embed_shard, plan_shards
from components.engine import write_bundle
from components.errors import ChampionUnreadable, LmRecsysError
from components.evaluation.metrics import evaluate_in_chunks
from components.evaluation.report import fit_tags, git_commit, package_versions, report_markdown, run_summary
from components.ingest import ingest
from components.settings import Settings
from components.training import (  # noqa: F401 - the train stages are part of the pipeline's API
    aligned_vectors,
    candidate_fits,
    candidate_model,
    check_candidates,
    load_data,
    stage_plan_training,
    stage_train,
    stage_train_candidate,
)
from components.validation.runner import validate_snapshot

log = logging.getLogger(__name__)


def stage_ingest(settings: Settings) -> str:
    """Build the next snapshot; returns its id."""
    return ingest(settings).snapshot_id


def stage_validate(settings: Settings, snapshot_id: str) -> str:
    """Accept the snapshot or quarantine it (raising ValidationFailed); returns its id."""
    return validate_snapshot(settings, open_snapshot(settings.snapshots_dir, snapshot_id)).snapshot_id


def stage_plan_shards(settings: Settings, snapshot_id: str, n_shards: int) -> list[int]:
    """Shard indexes for the mapped embedding tasks."""
    return plan_shards(open_snapshot(settings.snapshots_dir, snapshot_id).require_accepted(), n_shards)


def stage_embed_shard(settings: Settings, snapshot_id: str, shard: int, n_shards: int) -> dict:
    """Encode one shard of the uncached item texts into the cache; returns what it did and where."""
    return embed_shard(settings, open_snapshot(settings.snapshots_dir, snapshot_id), shard, n_shards)


def stage_embed(settings: Settings, snapshot_id: str) -> str:
    """Item vectors for the snapshot (cached by text hash); returns their folder."""
    return str(embed_items(settings, open_snapshot(settings.snapshots_dir, snapshot_id)))


def stage_evaluate(settings: Settings, run_dir: str, handles: list[dict] | None = None) -> str:
    """Score every candidate and the current champion on the same split; returns the report path.

    ``handles`` are the training tasks' outputs (the DAG passes them; the run folder is the truth).
    """
    from components.evaluation.champion import champion_scores
    from components.registry import load_champion_engine

    run = inside(settings.runs_dir, run_dir)
    meta = json.loads((run / "train.json").read_text())
    data = load_data(settings, meta["snapshot_id"])
    split = leave_last_out(data)
    seed, samples = settings.train.seed, settings.train.bootstrap_samples
    counts = {"val": split.val_train.item_counts(), "test": split.test_train.item_counts()}
    sides = {"val": (split.val_histories, split.val_targets), "test": (split.test_histories, split.test_targets)}

    def score_all(scorer) -> dict:
        out = {}
        for side, (histories, targets) in sides.items():
            started = time.perf_counter()
            result = evaluate_in_chunks(  # bounded memory: a chunk of users × the catalogue at a time
                lambda part, side=side: scorer(side, part),
                histories,
                targets,
                train_counts=counts[side],
                bootstrap_samples=samples,
                seed=seed,
            )
            out[side] = {**result.flat(), "inference_seconds": round(time.perf_counter() - started, 3)}
            out[side + "_curve"] = result.hr_curve
        return out

    report = {
        "snapshot_id": meta["snapshot_id"],
        "users": int(len(split.eval_users)),
        "items": data.n_items,
        "candidates": {},
        "dropped": {},
    }
    fits = candidate_fits(run, meta["candidates"])
    for name, fit in fits.items():
        if fit["status"] != "ok":
            report["dropped"][name] = fit.get("reason", fit["status"])
            continue
        models = {side: candidate_model(run, fit, side) for side in ("val", "test")}
        report["candidates"][name] = {
            **score_all(lambda side, h, models=models: models[side].score(h)),
            "train_seconds": fit["seconds"],
            "fit": {key: fit[key] for key in ("sides", "fit", "warm_start") if key in fit},
        }
    if not report["candidates"]:
        raise LmRecsysError(f"every candidate was dropped: {report['dropped']}; the champion stays")
    try:
        engine, version = load_champion_engine(settings)
    except ChampionUnreadable as exc:  # neither comparable nor servable: the gate may replace it, and says why
        engine, report["champion_unreadable"] = None, {"version": exc.version, "reason": str(exc)}
        log.warning("the champion, version %s, could not be read: %s", exc.version, exc)
    if engine is not None:
        report["champion"] = {
            "version": version,
            "model": engine.model.name,
            **score_all(lambda side, h: champion_scores(engine, data.catalogue.item_ids, h)),
        }
    metric = settings.registry.gate_metric.replace("@", "_at_")
    report["gate_metric"] = metric
    ranked = list(report["candidates"])
    report["best"] = max(ranked, key=lambda n: (report["candidates"][n]["val"][metric], -ranked.index(n)))
    path = run / "report.json"
    atomic_write_text(path, json.dumps(report, indent=2))
    atomic_write_text(run / "report.md", report_markdown(report))
    return str(path)


def stage_register(settings: Settings, report_path: str) -> dict:
    """Log the run to MLflow and register the best candidate as a new version; returns its handle.

    The run carries the lineage a person needs in the MLflow UI: the full settings (params and
    ``config/settings.json``), every metric with its 95% interval, HR@K curves as stepped
    metrics, the evaluation table, PNG plots, the snapshot manifest, the validation summary and
    the embedding manifest, and tags for snapshot, encoder, code and package versions.
    """
    import mlflow

    from components.registry import configure, log_bundle_model

    report_file = inside(settings.runs_dir, report_path)
    run = report_file.parent
    report = json.loads(report_file.read_text())
    meta = json.loads((run / "train.json").read_text())
    snapshot = open_snapshot(settings.snapshots_dir, meta["snapshot_id"]).require_accepted()
    best, metric = report["best"], report["gate_metric"]
    client = configure(settings)
    bundle, encoder_id = _write_serving_bundle(run, snapshot, meta, best)
    validation_file = snapshot.path / "validation.json"
    validation = json.loads(validation_file.read_text()) if validation_file.exists() else {}
    summary = run_summary(report, meta["candidates"], snapshot.snapshot_id, encoder_id, validation)
    with mlflow.start_run(run_name=f"{snapshot.snapshot_id}-{run.name}") as active:
        _log_run(settings, client, active.info.run_id, run, report, meta, snapshot, encoder_id, validation, summary)
        version, model_uri = log_bundle_model(bundle, settings.registry.model_name)
        run_id = active.info.run_id
    name, best_val = settings.registry.model_name, report["candidates"][best]["val"]
    version_tags = {"snapshot_id": snapshot.snapshot_id, "model_kind": best, "run_id": run_id, "encoder_id": encoder_id}
    version_tags[metric] = best_val[metric]
    version_tags.update({k: v for k, v in fit_tags(report).items() if k.startswith("warm_start.")})
    for key, value in version_tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    client.update_model_version(name, version, description=summary)
    champion = report.get("champion")
    return {
        "version": str(version),
        "model_uri": f"models:/{name}/{version}",
        "run_id": run_id,
        "snapshot_id": snapshot.snapshot_id,
        "model_kind": best,
        "challenger_metric": best_val[metric],
        "champion_metric": champion["val"][metric] if champion else None,
        "champion_version": champion["version"] if champion else report.get("champion_unreadable", {}).get("version"),
        "champion_unreadable": report.get("champion_unreadable", {}).get("reason"),
        "popularity_metric": (
            report["candidates"].get("popularity", {}).get("val", {}).get(metric) if best != "popularity" else None
        ),
    }


def _write_serving_bundle(run: Path, snapshot, meta: dict, best: str) -> tuple[Path, str]:
    """The best candidate's serving fit (and its validation-side fit) as a bundle; returns it and
    the encoder id."""
    data = InteractionData.from_frames(snapshot.items(), snapshot.interactions())
    vectors, embed_manifest = aligned_vectors(data, meta["embeddings_dir"])
    best_fit = candidate_fits(run, [best])[best]
    encoder_id = embed_manifest["encoder"]["encoder_id"]
    bundle_meta = {
        "model_name": best,
        "snapshot_id": snapshot.snapshot_id,
        "feedback_watermark": snapshot.manifest["feedback_watermark"],
        "id_type": snapshot.manifest["id_type"],
        "encoder_id": encoder_id,
        "encoder": embed_manifest["encoder"],
    }
    validation_model = candidate_model(run, best_fit, "val")
    bundle = write_bundle(
        run / "bundle", candidate_model(run, best_fit, "serve"), data, vectors, bundle_meta, validation_model
    )
    return bundle, encoder_id


def _log_run(settings, client, run_id, run, report, meta, snapshot, encoder_id, validation, summary) -> None:
    """Tags, params, metrics (with HR@K curves) and artifacts of one pipeline run in MLflow."""
    import mlflow
    from mlflow.entities import Metric

    from components.evaluation.plots import write_report_plots
    from components.registry import flatten_params, settings_for_logging

    manifest = snapshot.manifest
    mlflow.set_tags(
        {
            "snapshot_id": snapshot.snapshot_id,
            "snapshot.parent": str(manifest.get("parent")),
            "snapshot.content_hash": str(manifest.get("content_hash")),
            "snapshot.feedback_watermark": str(manifest.get("feedback_watermark")),
            "validation.success": str(validation.get("success")),
            "validation.checks": str(validation.get("checks")),
            "validation.alerts": str(len(validation.get("alerts") or [])),
            "validation.override": str(bool(validation.get("override"))),
            "feedback.quarantined": json.dumps((manifest.get("feedback_quarantine") or {}).get("rules", {})),
            "erasure.rows_removed": str((manifest.get("erasure") or {}).get("rows_removed", 0)),
            "encoder_id": encoder_id,
            "git_commit": git_commit(),
            "run_key": run.name,
            "best_candidate": report["best"],
            "python": platform.python_version(),
            "mlflow.note.content": summary + "\n\n" + (run / "report.md").read_text(),
            **{f"version.{k}": v for k, v in package_versions().items()},
            **fit_tags(report),
        }
    )
    for index, alert in enumerate(validation.get("alerts") or []):
        mlflow.set_tag(f"validation.alert.{index}", alert[:500])
    mlflow.log_params(
        {
            "candidates": ",".join(meta["candidates"]),
            "gate_metric": report["gate_metric"],
            "tolerance": settings.registry.tolerance,
            "users": report["users"],
            "items": report["items"],
            "max_users": settings.ingest.max_users,
        }
    )
    logged_settings = settings_for_logging(settings)
    mlflow.log_params({f"settings.{k}": v for k, v in flatten_params(logged_settings).items()})
    mlflow.log_dict(logged_settings, "config/settings.json")
    scored = dict(report["candidates"])
    if "champion" in report:
        scored["champion"] = report["champion"]
    stamp = int(time.time() * 1000)
    for name, result in scored.items():
        for side in ("val", "test"):
            values = result[side].items()
            mlflow.log_metrics(
                {f"{name}.{side}.{k}": float(v) for k, v in values if isinstance(v, int | float) and np.isfinite(v)}
            )
        # HR@K as one stepped metric per model: the UI draws it as a curve over K
        curves = [
            Metric(f"{name}.{side}.hr_curve", float(v), stamp, k)
            for side in ("val", "test")
            for k, v in enumerate(result.get(side + "_curve") or [], start=1)
        ]
        if curves:
            client.log_batch(run_id, metrics=curves)
    artifacts = {"evaluation": [run / "report.json", run / "report.md", run / "train.json"]}
    artifacts["plots"] = list(write_report_plots(report, run / "plots").values())
    artifacts["snapshot"] = [snapshot.path / "manifest.json"]
    artifacts["validation"] = [snapshot.path / "validation.json"]
    artifacts["embeddings"] = [Path(meta["embeddings_dir"]) / "manifest.json"]
    for folder, paths in artifacts.items():
        for path in paths:
            mlflow.log_artifact(str(path), folder)


def stage_promote(settings: Settings, registration: dict) -> dict:
    """Run the gate on a registered challenger; ``champion`` moves only if it passes."""
    from components.privacy.runs import erasure_verdict, mark_serving_clean
    from components.registry import configure, promote_if_better
    from components.registry.gate import record_decision
    from components.registry.tracking import utc_now

    client = configure(settings)
    name, version = settings.registry.model_name, registration["version"]
    warm = client.get_model_version(name, version).tags.get("warm_start.used") == "True"
    snapshot = open_snapshot(settings.snapshots_dir, registration["snapshot_id"])
    erasure = erasure_verdict(settings, snapshot, warm)
    if erasure["block"]:
        decision = {"decision": "rejected", "reason": f"{erasure['block']}; the next run applies it", "by": "gate"}
        record_decision(client, name, version, {**decision, "decided_at": utc_now()})
        return {**registration, **decision}
    decision = promote_if_better(
        client,
        settings,
        version,
        registration["challenger_metric"],
        registration["champion_metric"],
        registration["popularity_metric"],
        registration["model_uri"],
        expected_champion=registration.get("champion_version"),
        champion_unreadable=registration.get("champion_unreadable"),
        erasure=erasure["erasure"],
        move=settings.registry.promotion == "offline" or bool(erasure["erasure"]),  # an erasure cannot wait
    )
    if decision["decision"] == "online":
        decision.update(_start_online_experiment(settings, version))
    if decision["decision"] == "promoted":
        if erasure["applied"]:
            mark_serving_clean(settings, erasure["applied"], version)
            decision["erasures_applied"] = len(erasure["applied"])
        decision["purge"] = _purge(settings)
    return {**registration, **decision}


def _start_online_experiment(settings: Settings, version: str) -> dict:
    """``registry.promotion: online``: the gate approved ``version``; test it on live traffic (docs/experiments.md)."""
    from components.errors import LmRecsysError
    from components.experiments import start_experiment

    try:  # the gate's smoke test has just passed in a fresh process
        record = start_experiment(settings, version, smoke=False, created_by="pipeline")
    except LmRecsysError as exc:  # e.g. an experiment already runs: the champion stays, the run ends green
        log.warning("version %s passed the gate but no online experiment started: %s", version, exc)
        return {"experiment_error": str(exc)}
    return {"experiment_id": record["experiment_id"]}


def decide_experiments(settings: Settings) -> list[dict]:
    """Evaluate every running online experiment and act on its decision (promote the challenger with the
    reason ``online experiment ID: …``, or stop), as ``lmrecsys experiments decide`` and a service with
    ``experiments.auto_decide`` do; what the ``lm_recsys_experiments`` DAG runs where the service may not
    write the registry (docs/experiments.md).

    Returns one ``{experiment_id, decision, reason, changed}`` per running experiment, ``[]`` when none
    runs (one query of the feedback store, no registry call). ``decision`` is ``promoted``, ``stopped`` or
    ``continue``. Safe beside another decider (a replica deciding by itself, a human, an overlapping run):
    acting holds the registry's promotion lock and re-reads the experiment under it, so a decision is
    made once, and the one that comes second reports the state it found with ``changed: False``.
    """
    from components.experiments import evaluate, list_experiments

    decisions = []
    for experiment in (e for e in list_experiments(settings) if e["state"] == "running"):
        outcome = evaluate(settings, experiment)["decision"]
        changed = bool(outcome.get("changed"))
        decision = outcome.get("state", outcome["action"])
        reason = outcome["reason"] if changed or "state" not in outcome else f"already {decision}; nothing was changed"
        decisions.append(
            {"experiment_id": experiment["experiment_id"], "decision": decision, "reason": reason, "changed": changed}
        )
    return decisions


def _purge(settings: Settings) -> dict:
    """The erasure purge and retention after a promotion; a failure is logged and retried after the next one."""
    from components.privacy.purge import purge
    from components.privacy.retention import apply_retention

    try:
        return {**purge(settings), "retention": apply_retention(settings)}
    except Exception as exc:  # the champion is clean already; older artifacts wait for the next purge
        log.warning("erasure purge failed (the requests stay serving-clean and are retried): %s", exc)
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}


def run_pipeline(settings: Settings, run_key: str | None = None) -> dict:
    """Every stage in this process, in order; returns the registration decision."""
    run_key = run_key or time.strftime("run-%Y%m%dT%H%M%S") + f"-{os.getpid()}"
    check_candidates(settings)
    snapshot_id = stage_ingest(settings)
    stage_validate(settings, snapshot_id)
    embeddings_dir = stage_embed(settings, snapshot_id)
    run_dir = stage_train(settings, snapshot_id, embeddings_dir, run_key)
    report_path = stage_evaluate(settings, run_dir)
    return stage_promote(settings, stage_register(settings, report_path))
