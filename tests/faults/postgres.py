"""A private PostgreSQL server for one test: ``initdb`` and ``pg_ctl`` in a folder of its own, on a free port.

The server can be stopped, started and restarted under load, which the shared server on 5432 must
never be. Trust authentication on 127.0.0.1 only. PostgreSQL refuses to run as root, so under
root the server runs as the ``postgres`` system user in a folder it owns (outside pytest's
``tmp_path``, which only root may enter).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.harness import free_port


def postgres_bin() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: Debian's versioned folders first, then ``$PATH``."""
    for initdb in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True):
        return Path(initdb).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def unavailable() -> str | None:
    """Why no private server can be started here, or None."""
    if postgres_bin() is None:
        return "PostgreSQL's initdb/pg_ctl are not installed"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run the server as"
    return None


class PrivatePostgres:
    """``initdb`` + ``pg_ctl`` on a free port; ``url`` is a trust-auth ``postgresql://`` URL."""

    def __init__(self, folder: Path):
        self.bin = postgres_bin()
        if self.bin is None:
            raise FileNotFoundError("no initdb/pg_ctl found (looked in /usr/lib/postgresql/*/bin and $PATH)")
        self.port = free_port()
        self.user = None
        if os.geteuid() == 0:
            self.user = pwd.getpwnam("postgres")
            folder = Path(tempfile.mkdtemp(prefix="lmrecsys-pg-"))
            os.chown(folder, self.user.pw_uid, self.user.pw_gid)
        self.folder = folder
        self.data = folder / "data"
        self.log = folder / "postgres.log"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        folder.mkdir(parents=True, exist_ok=True)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-instructions")

    def _run(self, tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        def as_postgres():
            os.setsid()
            if self.user is not None:
                os.setgid(self.user.pw_gid)
                os.setuid(self.user.pw_uid)

        result = subprocess.run(
            [str(self.bin / tool), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=as_postgres,
            cwd=self.folder,
            env={**os.environ, "LC_ALL": "C.UTF-8"},
        )
        if result.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({result.returncode}):\n{result.stderr}\n{self.tail()}")
        return result

    def _pg_ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c fsync=on"
        self._run("pg_ctl", action, "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options, *extra)

    def start(self) -> PrivatePostgres:
        self._pg_ctl("start")
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w", "-t", "60")

    def restart(self, mode: str = "fast") -> tuple[float, float]:
        """``pg_ctl restart``; returns (monotonic time it began, time the server accepted again)."""
        began = time.monotonic()
        self._pg_ctl("restart", "-m", mode)
        return began, time.monotonic()

    def running(self) -> bool:
        return (
            subprocess.run([str(self.bin / "pg_ctl"), "status", "-D", str(self.data)], capture_output=True).returncode
            == 0
        )

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def close(self) -> None:
        """Stop the server (immediately; a stuck one is killed by its pid) and remove its folder."""
        try:
            if self.running():
                self.stop("immediate")
        except (RuntimeError, subprocess.SubprocessError):
            pid_file = self.data / "postmaster.pid"
            if pid_file.exists():
                try:
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        if self.user is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
