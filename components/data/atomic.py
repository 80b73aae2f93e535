"""Atomic writes: a file or folder is written under a temporary name beside its target and renamed
into place only when complete, so a reader sees the old version or the new one, never half of one.

Every writer in the project goes through these three helpers.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def fsync_file(path: Path) -> None:
    """Flush a written file's data to disk."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_file(path: Path, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it is fsynced and renamed
    onto ``path``. A failed block removes it and leaves ``path`` as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file under a temporary name, fsync it and rename it into place."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def atomic_dir(target: Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside ``target`` that becomes ``target`` when the block succeeds.

    With ``replace`` an existing ``target`` is replaced; without it the first complete writer wins
    and a later one leaves the existing folder untouched (content-addressed folders: same name,
    same content). A failed block removes the temporary folder and leaves ``target`` as it was.
    With ``replace``, temporary folders that a killed process left for the same target are removed
    first (without it a concurrent writer's folder could be one of them, so they are kept).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".tmp-{target.name}-"
    if replace:
        for stale in target.parent.glob(glob.escape(prefix) + "*"):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=prefix))
    try:
        yield tmp
        if not replace:
            with contextlib.suppress(FileExistsError, OSError):
                os.rename(tmp, target)
            if not target.exists():
                raise OSError(f"could not move {tmp} into place as {target}")
            return
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
