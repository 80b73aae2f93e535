"""Keyed hashes of user ids, so that a record of who was forgotten is not itself personal data.

An erasure request (``components.privacy``) stores ``user_key(key, user_id)``: an HMAC-SHA256 of the
user id under the deployment's erasure key. Ingest hashes the users it sees with the same key and
leaves out every row whose user has a tombstone. The key is ``privacy.erasure_key`` when set (every
machine of a deployment must share it); otherwise it is created once, at random, in
``<data_root>/erasure.key`` (mode 0600).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

import numpy as np
import pandas as pd

from components.settings import Settings

KEY_FILE = "erasure.key"


def erasure_key(settings: Settings) -> bytes:
    """The deployment's erasure key (created on first use when the setting is unset)."""
    configured = settings.privacy.erasure_key
    if configured is not None:
        return configured.get_secret_value().encode()
    path = settings.root / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it first: use theirs
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
                handle.flush()
                os.fsync(handle.fileno())
    return path.read_text().strip().encode()


def user_key(key: bytes, user_id) -> str:
    """The keyed hash that stands for ``user_id`` in erasure records (ids compare as their text)."""
    return hmac.new(key, str(user_id).strip().encode(), hashlib.sha256).hexdigest()


class Forgetter:
    """Masks the rows of tombstoned users, hashing each distinct user once; remembers whom it matched."""

    def __init__(self, key: bytes | None, tombstones: set[str]):
        self.key, self.tombstones = key, set(tombstones)
        self.matched: set[str] = set()
        """The tombstone keys that matched a user so far (keyed hashes, safe to record in a manifest)."""

    def mask(self, users: pd.Series) -> np.ndarray:
        """True for each row whose user has a tombstone."""
        if not self.tombstones or users.empty or self.key is None:
            return np.zeros(len(users), dtype=bool)
        keyed = {u: user_key(self.key, u) for u in users.unique()}
        gone = {u for u, k in keyed.items() if k in self.tombstones}
        self.matched |= {keyed[u] for u in gone}
        return users.isin(gone).to_numpy() if gone else np.zeros(len(users), dtype=bool)
