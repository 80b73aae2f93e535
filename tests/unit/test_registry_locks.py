"""The promotion lock: where it lives, and that a file lock excludes a second holder.

The lock library is ``filelock``; these tests hold the lock from a thread of this process and
from another process, and check that a waiter gives up with a RegistryError naming the lock file
and the timeout. (The PostgreSQL advisory-lock path needs a database and is not tested here.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from components.errors import RegistryError
from components.registry import promotion_lock, promotion_lock_target
from components.settings import TELEMETRY_OFF, load_settings


def test_lock_target_follows_the_backend(tmp_path):
    sqlite = load_settings(data_root=tmp_path)
    assert promotion_lock_target(sqlite) == str(tmp_path.resolve() / "mlflow.db") + ".promotion.lock"
    pg = load_settings(data_root=tmp_path, registry={"tracking_uri": "postgresql://postgres@127.0.0.1:5432/mlflow"})
    assert promotion_lock_target(pg) == "postgresql://postgres@127.0.0.1:5432/mlflow"
    server = load_settings(data_root=tmp_path, registry={"tracking_uri": "http://127.0.0.1:5000"})
    assert promotion_lock_target(server) == str(tmp_path.resolve() / "registry.promotion.lock")


def test_file_lock_excludes_a_second_holder_until_released(tmp_path):
    settings = load_settings(data_root=tmp_path)
    held, release = threading.Event(), threading.Event()

    def holder():
        with promotion_lock(settings):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    assert held.wait(10)
    started = time.monotonic()
    with pytest.raises(RegistryError, match="another promotion has held the lock file"):
        with promotion_lock(settings, timeout_s=0.3):
            pass
    assert time.monotonic() - started >= 0.3
    release.set()
    thread.join(10)
    with promotion_lock(settings, timeout_s=1):
        pass


HOLD_IN_CHILD = """
import sys
from components.registry import promotion_lock
from components.settings import load_settings
with promotion_lock(load_settings(data_root=sys.argv[1])):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_file_lock_excludes_another_process_and_names_the_lock_on_timeout(tmp_path):
    settings = load_settings(data_root=tmp_path)
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_IN_CHILD, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **TELEMETRY_OFF},
    )
    try:
        assert child.stdout.readline().strip() == "held", child.stderr.read()[-3000:]
        started = time.monotonic()
        with pytest.raises(RegistryError) as raised:
            with promotion_lock(settings, timeout_s=1.0):
                pass
        assert time.monotonic() - started >= 1.0
        lock_file = promotion_lock_target(settings)
        expected = f"another promotion has held the lock file {lock_file} for over 1s; try again"
        assert str(raised.value) == expected
        assert child.poll() is None  # the holder still runs: the waiter timed out, it did not break the lock
    finally:
        child.communicate("release\n", timeout=30)
    assert child.returncode == 0
    with promotion_lock(settings, timeout_s=1):  # the kernel released it with the holder's file
        pass


FIRST_USE = """
import sys
from components.registry import configure
from components.settings import load_settings
configure(load_settings(data_root=sys.argv[1]))
print("ok")
"""


def test_processes_first_using_one_sqlite_store_at_once_all_succeed(tmp_path):
    """Four processes configure a fresh SQLite store at the same moment (as Celery workers do on a fresh
    data root): MLflow migrates it once, under the first-use lock, and every process gets the experiment."""
    env = {**os.environ, **TELEMETRY_OFF}
    command = [sys.executable, "-c", FIRST_USE, str(tmp_path)]
    procs = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "abcd"
    ]
    outcomes = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    assert all(code == 0 and out.strip() == "ok" for code, out, _ in outcomes), outcomes
    from components.registry import configure

    settings = load_settings(data_root=tmp_path)
    names = [e.name for e in configure(settings).search_experiments()]
    assert names.count(settings.registry.experiment_name) == 1
