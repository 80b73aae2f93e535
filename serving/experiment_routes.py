"""Online experiments on the service's FastAPI app: the admin routes and the /ui panel's data.

Admin routes (bearer admin token, like ``/admin/reload``):

- ``POST /admin/experiments`` with ``{"challenger", "share", "mode", "metric", "max_days"}``: start one
  (``components.experiments.start_experiment``; 400 names a bad input, 409 a running experiment);
- ``GET /admin/experiments``: every experiment on the model, newest first;
- ``GET /admin/experiments/{id}``: one, with its statistics and the decision it would take now;
- ``POST /admin/experiments/{id}/stop`` with ``{"reason"}``: stop it, the champion stays.

``GET /experiments/current`` (no admin token; a client key where keys are configured): the newest
experiment's arms, traffic, metrics with intervals over time and decision, for the /ui panel. It holds
figures only, never a user id.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from serving.schemas import Finite, Int

log = logging.getLogger("lmrecsys.serving")
router = APIRouter()


class StartIn(BaseModel):
    challenger: str | Int
    share: Finite | None = None
    mode: str | None = None
    metric: str = "like_rate"
    max_days: Finite | None = None


class StopIn(BaseModel):
    reason: str = ""


def _service_or_refusal(request: Request):
    from serving.forgotten import _refused, _service

    service = _service()
    return service, _refused(service, request)


def _failure(exc: Exception) -> JSONResponse:
    from components.errors import LmRecsysError
    from components.feedback.impressions import ExperimentConflict

    if isinstance(exc, ExperimentConflict):
        return JSONResponse({"error": str(exc)}, status_code=409)
    if isinstance(exc, LmRecsysError):
        return JSONResponse({"error": str(exc)}, status_code=400)
    log.error("experiment admin action failed: %s: %s", type(exc).__name__, str(exc)[:300])
    return JSONResponse({"error": f"nothing was changed ({type(exc).__name__}); see the service log"}, status_code=503)


@router.post("/admin/experiments")
def start(body: StartIn, request: Request):
    """Start an experiment of ``challenger`` against the champion (its smoke test runs first)."""
    from components.experiments import start_experiment

    service, refusal = _service_or_refusal(request)
    if refusal is not None:
        return refusal
    try:
        record = start_experiment(
            service.settings,
            body.challenger,
            share=body.share,
            mode=body.mode,
            metric=body.metric,
            max_days=body.max_days,
            created_by="admin api",
        )
    except Exception as exc:
        return _failure(exc)
    service.arms.refresh()  # serve both arms now, not at the next refresh
    return record


@router.get("/admin/experiments")
def listed(request: Request):
    from components.experiments import list_experiments

    service, refusal = _service_or_refusal(request)
    return refusal if refusal is not None else list_experiments(service.settings)


@router.get("/admin/experiments/{experiment_id}")
def show(experiment_id: str, request: Request):
    from components.experiments import evaluate, get_experiment

    service, refusal = _service_or_refusal(request)
    if refusal is not None:
        return refusal
    try:
        return evaluate(service.settings, get_experiment(service.settings, experiment_id), apply=False)
    except Exception as exc:
        return _failure(exc)


@router.post("/admin/experiments/{experiment_id}/stop")
def stop(experiment_id: str, body: StopIn, request: Request):
    from components.experiments import stop_experiment

    service, refusal = _service_or_refusal(request)
    if refusal is not None:
        return refusal
    try:
        result = stop_experiment(service.settings, experiment_id, body.reason)
    except Exception as exc:
        return _failure(exc)
    service.arms.refresh()
    return result


@router.get("/experiments/current")
def current():
    """The newest experiment's figures for the /ui panel (``{"experiment": null}`` when there is none)."""
    from components.experiments import evaluate
    from serving.forgotten import _service

    service = _service()
    if service is None:
        return JSONResponse({"error": "the service is starting; see /readyz"}, status_code=503)
    try:
        found = service.store.experiments(model_name=service.settings.registry.model_name)
        if not found:
            return {"experiment": None}
        result = evaluate(service.settings, found[0], apply=False)
    except Exception as exc:
        return _failure(exc)
    result["served"] = {"challenger_loaded": service.arms.challenger is not None}
    return result
