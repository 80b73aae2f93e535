"""Which arm a unit (a user id, or an anonymous session id) sees: a stable hash of (experiment, unit).

The same unit lands in the same arm for the whole experiment, on every replica and after restarts, and
the split of one experiment is independent of every other's (the experiment id is part of the hash).
"""

from __future__ import annotations

import hashlib

CHAMPION, CHALLENGER, INTERLEAVED = "champion", "challenger", "interleaved"


def unit_fraction(experiment_id: str, unit: str) -> float:
    """A number in [0, 1), uniform over units, fixed for (experiment, unit)."""
    digest = hashlib.sha256(f"{experiment_id}\0{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(experiment_id: str, unit: str, share: float) -> str:
    """``challenger`` for a ``share`` of units, ``champion`` for the rest."""
    return CHALLENGER if unit_fraction(experiment_id, unit) < share else CHAMPION
