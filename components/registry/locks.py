"""The promotion lock: it serialises every move of ``champion`` and ``challenger``.

A PostgreSQL session-level advisory lock when the lock target is a ``postgresql://`` URL, else
an exclusive lock on a file (:class:`filelock.FileLock`, an ``flock`` on Unix) next to the SQLite
store or under the data root. Both are released when their holder dies.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import time
from contextlib import contextmanager
from pathlib import Path

import filelock

from components.errors import RegistryError
from components.registry.tracking import plain_text, utc_now
from components.settings import Settings, redact_url

LOCK_TIMEOUT_S = 120.0
"""Longest wait for the promotion lock; it is held only for a few registry calls."""


def promotion_lock_target(settings: Settings) -> str:
    """Where the promotion lock lives: a ``postgresql://`` URL or a lock-file path.

    In order: ``registry.lock_url`` when set (a shared PostgreSQL for several hosts behind one
    tracking server); the tracking store itself when it is PostgreSQL; a file next to the SQLite
    store; otherwise (a tracking server with no lock URL) a file under the data root, which
    serialises promotions on this host only.
    """
    configured = plain_text(getattr(settings.registry, "lock_url", None))
    if configured:
        return configured
    uri = plain_text(settings.tracking_uri)
    if uri.startswith("postgresql"):
        return uri
    if uri.startswith("sqlite:///"):
        return uri[len("sqlite:///") :] + ".promotion.lock"
    return str(settings.root / "registry.promotion.lock")


def _advisory_key(name: str) -> int:
    """A stable signed 64-bit key per registered model for pg_advisory_lock."""
    return int.from_bytes(hashlib.sha256(f"lm-recsys-promotion:{name}".encode()).digest()[:8], "big", signed=True)


@contextmanager
def _postgres_lock(url: str, key: int, timeout_s: float):
    import psycopg2

    dsn = re.sub(r"^postgresql\+\w+://", "postgresql://", url)
    try:
        connection = psycopg2.connect(dsn, connect_timeout=10)
    except psycopg2.Error as exc:
        raise RegistryError(f"cannot reach the promotion lock database {redact_url(url)}: {exc}") from exc
    connection.autocommit = True
    try:
        deadline = time.monotonic() + timeout_s
        with connection.cursor() as cursor:
            while True:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", (key,))
                if cursor.fetchone()[0]:
                    break
                if time.monotonic() > deadline:
                    raise RegistryError(
                        f"another promotion has held the PostgreSQL advisory lock {key} "
                        f"for over {timeout_s:.0f}s; try again"
                    )
                time.sleep(0.1)
        try:
            yield
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", (key,))
    finally:
        connection.close()  # a session-level advisory lock also ends with its connection


def _write_holder(fd: int) -> None:
    """Note in the lock file who holds it (for a person looking at a stuck promotion)."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {utc_now()}\n".encode(), 0)


@contextmanager
def _file_lock(path: Path, timeout_s: float):
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh FileLock per hold, each with its own open file: flock locks belong to the open file
    # description, so two threads of one process exclude each other as well as two processes; the
    # kernel drops the lock when the holder dies. A negative filelock timeout would wait forever.
    lock = filelock.FileLock(path, timeout=max(0.0, timeout_s), on_acquired=_write_holder)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise RegistryError(
            f"another promotion has held the lock file {path} for over {timeout_s:.0f}s; try again"
        ) from None
    try:
        yield
    finally:
        lock.release()


@contextmanager
def promotion_lock(settings: Settings, timeout_s: float = LOCK_TIMEOUT_S):
    """Hold the lock that serialises every move of ``champion`` and ``challenger``."""
    target = promotion_lock_target(settings)
    if target.startswith("postgresql"):
        with _postgres_lock(target, _advisory_key(settings.registry.model_name), timeout_s):
            yield
    else:
        with _file_lock(Path(target), timeout_s):
            yield
