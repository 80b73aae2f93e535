"""MLflow tracking, the model registry, the champion/challenger gate, history and rollback.

The served artifact is a pyfunc (:class:`RecommenderPyfunc`) carrying a serving bundle. A new
version gets alias ``challenger``; ``champion`` moves only through :func:`promote_if_better` (the
gate), :func:`force_promote` or :func:`rollback` (humans). Each records its decision as tags on the
version, and every move of ``champion`` is appended to a durable promotion log kept as tags on the
registered model, from which :func:`champion_history` answers "which version was champion when,
and why". Moves happen under a promotion lock, so racing promotions leave exactly one champion and
a gap-free log.

Versions are logged as MLflow models from code (``model_code`` is the logged code; nothing is
pickled) with a signature, and each records its bundle's SHA-256 as the version tag
``bundle.sha256``; every load through this package checks it first (``integrity``).

Modules: ``tracking`` (configure, aliases, settings as params), ``pyfunc`` (the model class,
logging and loading it), ``model_code`` (the file MLflow logs as the model), ``integrity`` (the
bundle hash and its check), ``smoke`` (the load-and-predict test in a fresh process), ``locks`` (the
promotion lock), ``gate`` (:func:`promote_if_better`) and ``history`` (the promotion log, rollback,
forced promotion). Callers import from this package; ``RecommenderPyfunc`` stays importable here
because models logged before the split pickled it under this name.
"""

from components.registry.gate import promote_if_better
from components.registry.history import champion_history, force_promote, list_versions, rollback
from components.registry.locks import promotion_lock, promotion_lock_target
from components.registry.pyfunc import RecommenderPyfunc, load_champion_engine, load_version_engine, log_bundle_model
from components.registry.tracking import (
    CHALLENGER,
    CHAMPION,
    configure,
    flatten_params,
    get_alias_version,
    settings_for_logging,
)

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "RecommenderPyfunc",
    "champion_history",
    "configure",
    "flatten_params",
    "force_promote",
    "get_alias_version",
    "list_versions",
    "load_champion_engine",
    "load_version_engine",
    "log_bundle_model",
    "promote_if_better",
    "promotion_lock",
    "promotion_lock_target",
    "rollback",
    "settings_for_logging",
]
