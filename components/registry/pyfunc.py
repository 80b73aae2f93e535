"""The served artifact: an MLflow pyfunc carrying a serving bundle, how it is logged and loaded.

Versions are logged as MLflow models from code: ``python_model`` is the path of
``components/registry/model_code.py``, which MLflow copies into the model and runs on load, so
nothing is pickled. Versions logged before that carry a cloudpickle of :class:`RecommenderPyfunc`
by reference (module and class name); they load only where this class is importable under this
name, so it stays here. Both kinds have the bundle under the artifact ``bundle``.

Every version logged here records its bundle's SHA-256 (:mod:`components.registry.integrity`)
as the version tag ``bundle.sha256``; :func:`load_version_engine` and
:func:`load_champion_engine` check it before the bundle is read.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import pandas as pd
import requests
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from components.errors import ChampionUnreadable
from components.registry.integrity import (
    BUNDLE_ARTIFACT,
    BUNDLE_HASH_TAG,
    CONFIG_KEY,
    FILES_KEY,
    BundleMismatch,
    bundle_digests,
    check_bundle,
    fetch_verified_bundle,
)
from components.registry.tracking import CHAMPION, configure, get_alias_version
from components.settings import Settings

log = logging.getLogger(__name__)

COLUMNS = ["user_id", "item_id", "title", "score", "rank", "source"]
"""The columns of :meth:`RecommenderPyfunc.predict`'s answer."""
MODEL_CODE = Path(__file__).with_name("model_code.py")
"""The file logged as the model's code (MLflow models from code)."""
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "user_id"), ColSpec("long", "k", required=False)]),
    outputs=Schema(
        [
            ColSpec("string", "user_id"),
            ColSpec("string", "item_id"),
            ColSpec("string", "title"),
            ColSpec("double", "score"),
            ColSpec("long", "rank"),
            ColSpec("string", "source"),
        ]
    ),
)
"""Rows of (user_id as a string, optional k, default 10) in; the top-k rows of COLUMNS out."""
EXAMPLE_K = 5


class RecommenderPyfunc(mlflow.pyfunc.PythonModel):
    """A pyfunc over a serving bundle. ``predict`` takes rows of (user_id, k) and returns top-k.

    Fast paths (serving) call ``unwrap_python_model().engine`` directly. When the model config
    carries ``bundle_sha256`` (every version logged from code does), the bundle is hashed before
    it is read and a mismatch raises :class:`~components.registry.integrity.BundleMismatch`.
    """

    def load_context(self, context):
        from components.engine import ServingEngine

        bundle = Path(context.artifacts[BUNDLE_ARTIFACT])
        config = context.model_config or {}
        if config.get(CONFIG_KEY):
            check_bundle(bundle, config[CONFIG_KEY], f"the model at {bundle.parent.parent}", config.get(FILES_KEY))
        self.engine = ServingEngine(bundle)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        rows = []
        for record in model_input.to_dict("records"):
            user_id = self.engine.normalise_id(record["user_id"])
            k = record.get("k", 10)
            k = 10 if k is None or pd.isna(k) or int(k) <= 0 else int(k)
            recs, source = self.engine.recommend_history(self.engine.history_for(user_id), k)
            rows += [
                {
                    "user_id": str(user_id),
                    "item_id": str(r.item_id),
                    "title": r.title,
                    "score": float(r.score),
                    "rank": int(r.rank),
                    "source": source,
                }
                for r in recs
            ]
        return pd.DataFrame(rows, columns=COLUMNS)


def _input_example(bundle_dir: Path) -> pd.DataFrame:
    """One request for the bundle's first user with a history (user "0" for an empty bundle)."""
    import json

    from components.engine.bundle import read_histories

    id_type = json.loads((Path(bundle_dir) / "bundle.json").read_text()).get("id_type", "int")
    user = next(iter(read_histories(bundle_dir, id_type)), None)  # reads one user id, no history
    return pd.DataFrame([{"user_id": str(user) if user is not None else "0", "k": EXAMPLE_K}])


def log_bundle_model(bundle_dir: Path, registered_name: str) -> tuple[str, str]:
    """Log the bundle as a pyfunc (from code) in the active run, register it; (version, model_uri).

    The bundle's SHA-256 goes into the model config, the run's tag and the new version's tag
    ``bundle.sha256`` (set as the version is created, so no version is ever without it).
    """
    digest, files = bundle_digests(bundle_dir)
    info = mlflow.pyfunc.log_model(
        name="recommender",
        python_model=str(MODEL_CODE),
        artifacts={BUNDLE_ARTIFACT: str(bundle_dir)},
        model_config={CONFIG_KEY: digest, FILES_KEY: files},
        signature=SIGNATURE,
        input_example=_input_example(bundle_dir),
        pip_requirements=[],  # the lm-recsys package itself must be importable where the model loads
    )
    mlflow.set_tag(BUNDLE_HASH_TAG, digest)
    version = mlflow.register_model(info.model_uri, registered_name, tags={BUNDLE_HASH_TAG: digest})
    return str(version.version), info.model_uri


def load_version_engine(model_version):
    """The serving engine of ``model_version`` (an MLflow ``ModelVersion``), its bundle checked.

    The bundle is downloaded and hashed against the version's ``bundle.sha256`` tag before any
    of it is read; the engine is built from those files directly, so no code or pickle from the
    artifact store runs. Raises :class:`~components.registry.integrity.BundleMismatch` (a
    ``ValueError``) for a changed bundle; a version without the tag loads with a warning.
    """
    from components.engine import ServingEngine

    return ServingEngine(fetch_verified_bundle(model_version))


def load_champion_engine(settings: Settings):
    """The current champion's serving engine and version; ``(None, None)`` without a champion.

    Raises :class:`ChampionUnreadable` (carrying the version) when the registry names a champion
    whose artifact cannot be loaded, or whose bundle no longer has the content hash recorded at
    registration; a registry that cannot be reached raises as usual.
    """
    client = configure(settings)
    current = get_alias_version(client, settings.registry.model_name, CHAMPION)
    if current is None:
        return None, None
    try:
        engine = load_version_engine(current)
        engine.validation_model()  # loaded now, so a corrupt file shows here and not mid-evaluation
    except requests.RequestException:
        raise  # the tracking server is unreachable: a retry may succeed, the artifact is not at fault
    except BundleMismatch as exc:
        raise ChampionUnreadable(str(exc), version=str(current.version)) from exc
    except (OSError, ValueError, KeyError, EOFError) as exc:  # missing or corrupt artifact files
        raise ChampionUnreadable(f"{type(exc).__name__}: {exc}"[:500], version=str(current.version)) from exc
    return engine, current.version
