"""The served artifact: an MLflow pyfunc carrying a serving bundle, how it is logged and loaded.

MLflow pickles :class:`RecommenderPyfunc` by reference (module and class name), so a model
loads only where this class is importable under the name it was logged with.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import requests

from components.errors import ChampionUnreadable
from components.registry.tracking import CHAMPION, configure, get_alias_version
from components.settings import Settings

COLUMNS = ["user_id", "item_id", "title", "score", "rank", "source"]
"""The columns of :meth:`RecommenderPyfunc.predict`'s answer."""


class RecommenderPyfunc(mlflow.pyfunc.PythonModel):
    """A pyfunc over a serving bundle. ``predict`` takes rows of (user_id, k) and returns top-k.

    Fast paths (serving) call ``unwrap_python_model().engine`` directly.
    """

    def load_context(self, context):
        from components.engine import ServingEngine

        self.engine = ServingEngine(Path(context.artifacts["bundle"]))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        rows = []
        for record in model_input.to_dict("records"):
            user_id = self.engine.normalise_id(record["user_id"])
            k = int(record.get("k", 10) or 10)
            recs, source = self.engine.recommend_history(self.engine.history_for(user_id), k)
            rows += [
                {
                    "user_id": user_id,
                    "item_id": r.item_id,
                    "title": r.title,
                    "score": r.score,
                    "rank": r.rank,
                    "source": source,
                }
                for r in recs
            ]
        return pd.DataFrame(rows, columns=COLUMNS)


def log_bundle_model(bundle_dir: Path, registered_name: str) -> tuple[str, str]:
    """Log the bundle as a pyfunc in the active run, register it, return (version, model_uri)."""
    info = mlflow.pyfunc.log_model(
        name="recommender",
        python_model=RecommenderPyfunc(),
        artifacts={"bundle": str(bundle_dir)},
        registered_model_name=registered_name,
        pip_requirements=[],  # the lm-recsys package itself must be importable where the model loads
    )
    return str(info.registered_model_version), info.model_uri


def load_champion_engine(settings: Settings):
    """The current champion's serving engine and version; ``(None, None)`` without a champion.

    Raises :class:`ChampionUnreadable` (carrying the version) when the registry names a champion
    whose artifact cannot be loaded; a registry that cannot be reached raises as usual.
    """
    client = configure(settings)
    current = get_alias_version(client, settings.registry.model_name, CHAMPION)
    if current is None:
        return None, None
    try:
        model = mlflow.pyfunc.load_model(f"models:/{settings.registry.model_name}@{CHAMPION}")
        engine = model.unwrap_python_model().engine
        engine.validation_model()  # loaded now, so a corrupt file shows here and not mid-evaluation
    except requests.RequestException:
        raise  # the tracking server is unreachable: a retry may succeed, the artifact is not at fault
    except (OSError, ValueError, KeyError, EOFError) as exc:  # missing or corrupt artifact files
        raise ChampionUnreadable(f"{type(exc).__name__}: {exc}"[:500], version=str(current.version)) from exc
    return engine, current.version
