"""The serving engine: a fitted model plus its catalogue, answering recommendation requests, and
the bundle folder it is loaded from. Used by the MLflow pyfunc and by the BentoML service."""

from components.engine.bundle import write_bundle
from components.engine.engine import MAX_HISTORY, Recommendation, ScoreRequest, ServingEngine

__all__ = ["MAX_HISTORY", "Recommendation", "ScoreRequest", "ServingEngine", "write_bundle"]
