"""The content hash of a serving bundle, recorded at registration and checked before a load.

:func:`bundle_sha256` is a SHA-256 over the bundle's files: for each file, in the order of its
path relative to the bundle (POSIX form), its path, its size and its bytes. A symbolic link is
hashed as its target, marked as a link, so replacing a file by a link changes the hash.

At registration the hash goes into the model version's tag ``bundle.sha256`` (the registry is the
trusted record: the bundle and its ``MLmodel`` live in the artifact store, which a reader of the
registry cannot vouch for) and into the pyfunc's ``model_config``. Before a version's bundle is
used, :func:`fetch_verified_bundle` downloads it, recomputes the hash and raises
:class:`BundleMismatch` when it differs from the tag. Versions registered before the tag existed
load with a logged warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

BUNDLE_HASH_TAG = "bundle.sha256"
"""The model-version tag (and run tag) holding the bundle's SHA-256."""
CONFIG_KEY = "bundle_sha256"
"""The pyfunc ``model_config`` key holding the same hash."""
FILES_KEY = "bundle_files"
"""The pyfunc ``model_config`` key holding each bundle file's SHA-256 (to name what changed)."""
BUNDLE_ARTIFACT = "bundle"
"""The pyfunc artifact name of the bundle; MLflow stores it under ``artifacts/bundle``."""
_CHUNK = 1 << 20


class BundleMismatch(ValueError):
    """A bundle's files do not hash to the recorded value (changed, added or removed files)."""

    def __init__(self, what: str, expected: str, actual: str, changes: str = ""):
        super().__init__(
            f"{what}: the bundle's content hash is sha256:{actual}, but sha256:{expected} was recorded "
            f"at registration; its files were changed after registration ({changes or 'which is not known'}), "
            "refusing to load it"
        )
        self.expected, self.actual = expected, actual


def bundle_sha256(folder: Path) -> str:
    """The hex SHA-256 over every file under ``folder`` (sorted relative paths, sizes and bytes)."""
    return bundle_digests(folder)[0]


def bundle_digests(folder: Path) -> tuple[str, dict[str, str]]:
    """The bundle's hash and, per relative path, that file's own SHA-256 (for diagnosis)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no bundle folder at {folder}")
    entries = []
    for root, dirs, files in os.walk(folder):  # does not descend into linked folders
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            path = Path(root, name)
            entries.append((path.relative_to(folder).as_posix(), path))
    digest, files = hashlib.sha256(), {}
    for relative, path in sorted(entries):
        digest.update(relative.encode("utf-8") + b"\0")
        one = hashlib.sha256()
        if path.is_symlink():
            target = os.readlink(path).encode("utf-8")
            digest.update(b"link\0" + len(target).to_bytes(8, "big") + target)
            files[relative] = "link:" + hashlib.sha256(target).hexdigest()
            continue
        digest.update(b"file\0" + path.stat().st_size.to_bytes(8, "big"))
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
                one.update(chunk)
        files[relative] = one.hexdigest()
    return digest.hexdigest(), files


def describe_changes(recorded: dict[str, str] | None, actual: dict[str, str]) -> str:
    """Which files differ from the per-file list logged with the model (a hint, not the check)."""
    if not recorded:
        return ""
    missing = sorted(set(recorded) - set(actual))
    added = sorted(set(actual) - set(recorded))
    changed = sorted(p for p in set(recorded) & set(actual) if recorded[p] != actual[p])
    parts = [
        f"{label}: {', '.join(paths)}"
        for label, paths in (("missing", missing), ("added", added), ("changed", changed))
        if paths
    ]
    return "; ".join(parts)


def check_bundle(folder: Path, expected: str | None, what: str, files: dict[str, str] | None = None) -> str:
    """Recompute ``folder``'s hash; raise :class:`BundleMismatch` if it is not ``expected``.

    ``expected`` None (nothing recorded) only logs a warning. ``files`` (the per-file list logged
    with the model) only sharpens the message. Returns the computed hash.
    """
    actual, actual_files = bundle_digests(folder)
    if expected is None:
        log.warning("%s has no recorded bundle hash (registered before bundle.sha256); loading it unchecked", what)
    elif actual != expected.strip().lower():
        raise BundleMismatch(what, expected, actual, describe_changes(files, actual_files))
    return actual


def fetch_verified_bundle(model_version, dst_path: str | None = None) -> Path:
    """Download ``model_version``'s bundle and check it against its ``bundle.sha256`` tag.

    ``model_version`` is an MLflow ``ModelVersion`` (it carries the tags). With a local artifact
    store nothing is copied: the returned folder is the store's own; else it is downloaded into
    ``dst_path`` (a new temporary folder when None, kept for the engine to read). Raises
    :class:`BundleMismatch` for a changed bundle, ``OSError`` or an ``MlflowException`` for a
    missing one.
    """
    import mlflow

    name, version = model_version.name, str(model_version.version)
    model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=dst_path))
    bundle = model_dir / "artifacts" / BUNDLE_ARTIFACT
    expected = (model_version.tags or {}).get(BUNDLE_HASH_TAG)
    check_bundle(bundle, expected, f"{name!r} version {version}", _logged_files(model_dir) if expected else None)
    return bundle


def _logged_files(model_dir: Path) -> dict[str, str] | None:
    """The per-file list in the model's MLmodel, if it can be read (it only names what changed)."""
    from mlflow.models import Model

    try:
        config = Model.load(str(model_dir)).flavors.get("python_function", {}).get("config") or {}
    except Exception:  # a damaged MLmodel only costs the hint; the hash check itself still runs
        return None
    files = config.get(FILES_KEY)
    return files if isinstance(files, dict) else None


def version_integrity_problem(client, name: str, version: str) -> str | None:
    """Why ``version``'s bundle must not be served (changed or unreadable), or None when it may.

    For the gate and the human promotions, which refuse rather than raise. A download from a
    remote artifact store goes into a temporary folder that is removed afterwards.
    """
    model_version = client.get_model_version(name, str(version))
    local = urlsplit(client.get_model_version_download_uri(name, str(version))).scheme in ("", "file")
    try:
        with tempfile.TemporaryDirectory(prefix="lmrecsys-bundle-check-") as scratch:
            fetch_verified_bundle(model_version, None if local else scratch)
    except BundleMismatch as exc:
        return str(exc)
    except (OSError, ValueError) as exc:
        return f"bundle of {name!r} version {version} cannot be read: {type(exc).__name__}: {exc}"[:500]
    return None
