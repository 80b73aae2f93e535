"""Recommenders behind one interface; ``build_model(name)`` makes one from its registry name."""

from components.models.base import MODEL_REGISTRY, Recommender, build_model, load_model
from components.models.ease import EASE
from components.models.lm_content import LMContent
from components.models.popularity import Popularity
from components.models.sasrec import LMSASRec, SASRec

__all__ = [
    "MODEL_REGISTRY",
    "Recommender",
    "build_model",
    "load_model",
    "EASE",
    "LMContent",
    "LMSASRec",
    "Popularity",
    "SASRec",
]
