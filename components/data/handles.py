"""Strict handles: every id that becomes part of a path is checked before it is joined.

Snapshot ids and run keys arrive from DAG run parameters, XCom and the command line. A handle with
``/``, ``..`` or an absolute path could otherwise point outside the data root: skip validation by
naming another folder, or make a clean-up remove one. Paths handed between stages must resolve
inside the folder they belong to.
"""

from __future__ import annotations

import re
from pathlib import Path

from components.errors import InvalidHandle

SNAPSHOT_ID = re.compile(r"snap-[A-Za-z0-9_-]{1,64}")
"""``snap-`` and a content hash (16 hex digits when the project makes one)."""
RUN_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
"""A run folder's name: letters, digits, ``.``, ``_`` and ``-``, not starting with a dot."""


def snapshot_id(value) -> str:
    """``value`` if it is a well-formed snapshot id, else :class:`InvalidHandle` naming it."""
    if not isinstance(value, str) or not SNAPSHOT_ID.fullmatch(value):
        raise InvalidHandle(f"{value!r} is not a snapshot id (expected snap- and letters, digits, _ or -)")
    return value


def run_key(value) -> str:
    """``value`` if it is a well-formed run key, else :class:`InvalidHandle` naming it."""
    if not isinstance(value, str) or not RUN_KEY.fullmatch(value) or ".." in value:
        raise InvalidHandle(f"{value!r} is not a run key (letters, digits, '.', '_' and '-'; no '/' or '..')")
    return value


def inside(folder: Path, path) -> Path:
    """``path`` resolved, if it lies inside ``folder`` (symbolic links resolved too)."""
    root, resolved = Path(folder).resolve(), Path(path).resolve()
    if not resolved.is_relative_to(root):
        raise InvalidHandle(f"{path} is outside {root}")
    return resolved
