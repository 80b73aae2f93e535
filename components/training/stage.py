"""The train stage: one task per candidate, each fitted into its own folder of the run.

``stage_plan_training`` checks the candidate names and writes the run's ``train.json``;
``stage_train_candidate`` fits one candidate (once for a sequential model, warm-started from the
champion when it can be; once per side of the split for a closed-form one) and returns a small
handle; ``stage_train`` runs them all in one process. See docs/models.md, "One fit per run".
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from components.data import handles
from components.data.atomic import atomic_dir, atomic_write_text
from components.data.dataset import InteractionData, leave_last_out
from components.data.snapshots import open_snapshot
from components.embed import ItemEmbeddings
from components.errors import ChampionUnreadable, LmRecsysError, TrainingDiverged, WarmStartIncompatible
from components.models import MODEL_REGISTRY, build_model, load_model
from components.settings import Settings

log = logging.getLogger(__name__)


def load_data(settings: Settings, snapshot_id: str) -> InteractionData:
    snapshot = open_snapshot(settings.snapshots_dir, snapshot_id).require_accepted()
    return InteractionData.from_frames(snapshot.items(), snapshot.interactions())


def aligned_vectors(data: InteractionData, embeddings_dir: str) -> tuple[np.ndarray, dict]:
    embeddings = ItemEmbeddings.load(Path(embeddings_dir))
    if not np.array_equal(embeddings.item_ids, data.catalogue.item_ids):
        raise ValueError(
            f"embeddings at {embeddings_dir} do not match the snapshot's catalogue; re-run the embed stage"
        )
    return embeddings.vectors, embeddings.manifest


def check_candidates(settings: Settings) -> list[str]:
    """The configured candidate names, or a clear error naming the unknown ones."""
    unknown = [name for name in settings.train.candidates if name not in MODEL_REGISTRY]
    if unknown:
        raise LmRecsysError(
            f"unknown candidate(s) {', '.join(map(repr, unknown))} in train.candidates; "
            f"known: {', '.join(sorted(MODEL_REGISTRY))}"
        )
    return list(settings.train.candidates)


def stage_plan_training(settings: Settings, snapshot_id: str, embeddings_dir: str, run_key: str) -> list[str]:
    """Start the run folder with ``train.json`` and return the candidates, one training task each."""
    candidates = check_candidates(settings)
    open_snapshot(settings.snapshots_dir, snapshot_id).require_accepted()
    embeddings_dir = str(handles.inside(settings.embeddings_dir, embeddings_dir))
    embed_manifest = json.loads((Path(embeddings_dir) / "manifest.json").read_text())
    run = settings.runs_dir / handles.run_key(run_key)
    run.mkdir(parents=True, exist_ok=True)
    meta = {
        "snapshot_id": snapshot_id,
        "embeddings_dir": embeddings_dir,
        "encoder": embed_manifest["encoder"],
        "candidates": candidates,
    }
    atomic_write_text(run / "train.json", json.dumps(meta, indent=2))
    return candidates


def _pending_erasures(settings: Settings) -> int | None:
    """Pending erasure requests (None when the store cannot say): any of them means a cold start."""
    from components.feedback.store import FeedbackError, FeedbackStore

    try:
        store = FeedbackStore(settings.feedback_url)
        try:
            return len(store.erasures("pending"))
        finally:
            store.close()
    except FeedbackError:
        return None


def _warm_source(settings: Settings, name: str, data: InteractionData, encoder_id: str):
    """The champion's evaluation-side fit as a warm start for ``name``, or None and the reason.

    Only that fit is safe: it never trained on the held-out items of the champion's snapshot,
    which are this run's validation and test items for users without new events. The served
    weights trained on them and would flatter the warm-started challenger at the gate.
    """
    from components.registry import load_champion_engine

    erasures = _pending_erasures(settings)
    if erasures is None or erasures:
        why = "could not be checked" if erasures is None else f"{erasures} pending"
        return None, {"used": False, "reason": f"erasure requests {why}: the champion's weights may have seen them"}
    try:
        engine, version = load_champion_engine(settings)
    except ChampionUnreadable as exc:
        return None, {
            "used": False,
            "champion_version": exc.version,
            "reason": f"the champion could not be read ({exc})",
        }
    except Exception as exc:
        return None, {"used": False, "reason": f"the champion could not be read ({type(exc).__name__}: {exc})"}
    if engine is None:
        return None, {"used": False, "reason": "there is no champion"}
    info = {"used": False, "champion_version": str(version), "champion_kind": engine.meta.get("model_name")}
    if info["champion_kind"] != name:
        return None, {**info, "reason": f"the champion is {info['champion_kind']}, not {name}"}
    if engine.meta.get("encoder_id") != encoder_id:
        return None, {**info, "reason": f"the champion's encoder is {engine.meta.get('encoder_id')}, not {encoder_id}"}
    if not (engine.folder / "model_val" / "model.json").exists():
        return None, {**info, "reason": "the champion has no evaluation-side fit to start from"}
    source = engine.validation_model()
    item_map = engine.catalogue.positions(data.catalogue.item_ids)
    return (source, item_map), {
        **info,
        "used": True,
        "known_items": int((item_map >= 0).sum()),
        "items": int(len(item_map)),
    }


def _fit_candidate(
    settings: Settings, name: str, data: InteractionData, vectors: np.ndarray, folder: Path, encoder_id: str
) -> dict:
    """Fit one candidate into ``folder``; returns what the fit did (sides, timings, warm start)."""
    config = settings.train.model_configs.get(name, {})
    split = leave_last_out(data)
    started = time.perf_counter()
    model = build_model(name, config)
    if not model.fits_once:  # closed form or counting: cheap, refitted per side of the split
        for side, fit_data in (("val", split.val_train), ("test", split.test_train), ("full", data)):
            build_model(name, config).fit(fit_data, vectors).save(folder / side)
        return {
            "sides": {"val": "val", "test": "test", "serve": "full"},
            "seconds": round(time.perf_counter() - started, 3),
        }
    warm_info = {"used": False, "reason": "train.warm_start is off"}
    if settings.train.warm_start and model.supports_warm_start:
        warm, warm_info = _warm_source(settings, name, data, encoder_id)
        if warm is not None:
            try:
                model.warm_start(*warm)
            except WarmStartIncompatible as exc:
                warm_info = {**warm_info, "used": False, "reason": str(exc)}
        if not warm_info["used"]:
            log.info("%s: cold start: %s", name, warm_info["reason"])
    model.fit(split.test_train, vectors)  # early stopping and the gate: the validation item
    model.save(folder / "eval")
    evaluated = model.fit_summary()
    serve_started = time.perf_counter()
    model.continue_training(data).save(folder / "full")
    return {
        "sides": {"val": "eval", "test": "eval", "serve": "full"},
        "seconds": round(time.perf_counter() - started, 3),
        "serve_seconds": round(time.perf_counter() - serve_started, 3),
        "fit": evaluated,
        "warm_start": warm_info,
    }


def memory_verdict(settings: Settings, name: str, data: InteractionData) -> str | None:
    """Why ``name`` must be skipped at this data size (its declared needs exceed the budget), or None."""
    import psutil

    from components.models.base import DataSize

    size = DataSize.of(data)
    needs = build_model(name, settings.train.model_configs.get(name, {})).memory_needs(size)
    configured = settings.train.memory_budget_gb
    budget = configured * 2**30 if configured else 0.8 * psutil.virtual_memory().available
    if needs <= budget:
        return None
    where = f"train.memory_budget_gb = {configured:g}" if configured else "80% of the memory available"
    return (
        f"skipped: needs about {needs / 2**30:.2f} GiB at this size ({size.users:,} users, {size.items:,} items, "
        f"{size.interactions:,} interactions), over the budget of {budget / 2**30:.2f} GiB ({where})"
    )


def stage_train_candidate(settings: Settings, snapshot_id: str, embeddings_dir: str, run_key: str, name: str) -> dict:
    """Train one candidate into ``runs/<run_key>/<name>/``; returns its small handle.

    A candidate whose training diverges is dropped with its reason (``status: dropped``), and one
    whose declared memory needs exceed the budget is not trained (``status: skipped``), so the
    others go on; any other error fails the task, and its retry starts clean.
    """
    data = load_data(settings, snapshot_id)
    vectors, embed_manifest = aligned_vectors(data, embeddings_dir)
    run = settings.runs_dir / handles.run_key(run_key)
    if not (run / "train.json").exists():
        stage_plan_training(settings, snapshot_id, embeddings_dir, run_key)
    record = {"name": name, "run_dir": str(run)}
    skipped = memory_verdict(settings, name, data)
    with atomic_dir(run / name) as tmp:
        if skipped:
            record.update(status="skipped", reason=skipped)
            log.warning("candidate %s %s", name, skipped)
        else:
            _fit_into(settings, name, data, vectors, tmp, embed_manifest["encoder"]["encoder_id"], record)
        (tmp / "fit.json").write_text(json.dumps(record, indent=2))
    return {key: record[key] for key in ("name", "run_dir", "status")}


def _fit_into(settings, name, data, vectors, tmp: Path, encoder_id: str, record: dict) -> None:
    """Fit ``name`` into ``tmp`` and complete ``record``; a diverged fit leaves ``tmp`` empty."""
    try:
        record.update(status="ok", **_fit_candidate(settings, name, data, vectors, tmp, encoder_id))
    except TrainingDiverged as exc:
        for child in tmp.iterdir():
            shutil.rmtree(child, ignore_errors=True)
        record.update(status="dropped", reason=str(exc))
        log.warning("dropped candidate %s: %s", name, exc)


def stage_train(settings: Settings, snapshot_id: str, embeddings_dir: str, run_key: str) -> str:
    """Every candidate in turn, in this process (the DAG maps one task per candidate); returns the run folder."""
    for name in stage_plan_training(settings, snapshot_id, embeddings_dir, run_key):
        stage_train_candidate(settings, snapshot_id, embeddings_dir, run_key, name)
    return str(settings.runs_dir / handles.run_key(run_key))


def candidate_fits(run: Path, names: list[str]) -> dict[str, dict]:
    """Each candidate's ``fit.json``; a clear error when one is missing (its task never finished)."""
    fits = {}
    for name in names:
        path = run / name / "fit.json"
        if not path.exists():
            raise LmRecsysError(f"candidate {name!r} has no finished fit in {run}; its training task did not complete")
        fits[name] = json.loads(path.read_text())
    return fits


def candidate_model(run: Path, fit: dict, side: str):
    """The fitted model of one candidate for ``val``, ``test`` or ``serve``."""
    return load_model(run / fit["name"] / fit["sides"][side])
