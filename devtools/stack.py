"""Start and stop real local servers (Airflow, MLflow, BentoML), always by process group.

Used by the demo and by the integration tests.

Every server runs in its own session (``start_new_session=True``). Stopping collects the whole
process tree first (BentoML workers live in their own sessions), sends SIGTERM to the group,
waits, then SIGKILLs anything left, so no test leaves a server behind.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import psutil
import requests
import tenacity

from components import settings

VENV_BIN = Path(sys.executable).parent
"""Console scripts (airflow, bentoml, mlflow) of the running interpreter's environment."""
TELEMETRY_OFF = {**settings.TELEMETRY_OFF, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
"""The child processes' environment additions: telemetry off, offline, no progress bars."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ManagedProcess:
    """A server process started in its own session, with its log in a file."""

    def __init__(self, name: str, args: list[str], env: dict, log_dir: Path, cwd: Path | None = None):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            args,
            env=env,
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 15.0) -> None:
        procs = self.tree()
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        _, alive = psutil.wait_procs(procs, timeout=timeout)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=5)
        self._log.close()

    def kill9(self) -> None:
        """SIGKILL the whole tree at once (a crash, not a shutdown)."""
        for proc in self.tree():
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        self.proc.wait(timeout=10)
        self._log.close()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def worker_hostname() -> str:
    """The host name a Celery worker reports for its task instances: ``<worker name>@<machine>``.

    Airflow records ``socket.getfqdn()`` by default, which is the same for every worker on one
    machine; :meth:`AirflowStack.start_worker` points ``[core] hostname_callable`` here and sets
    ``LMRECSYS_WORKER_NAME`` per worker, so the UI and the REST API show which worker ran a task.
    """
    machine = socket.getfqdn()
    name = os.environ.get("LMRECSYS_WORKER_NAME")
    return f"{name}@{machine}" if name else machine


def _log_line(entry) -> str:
    """One structured Airflow 3 log record as a readable line, exceptions included."""
    if isinstance(entry, str):
        return entry
    line = f"{entry.get('timestamp', '')} [{entry.get('level', '')}] {entry.get('event', '')}"
    for error in entry.get("error_detail") or []:
        line += f"\n  {error.get('exc_type')}: {error.get('exc_value')}"
    return line


def wait_for(
    predicate, timeout: float, interval: float = 0.5, what: str = "condition", procs: list[ManagedProcess] = ()
):
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:
            last_error = exc
        for proc in procs:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited while waiting for {what}:\n{proc.tail()}")
        time.sleep(interval)
    logs = "\n".join(f"--- {p.name}\n{p.tail()}" for p in procs)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})\n{logs}")


def http_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


SQLITE_CONNECT_ARGS = {"timeout": 30}
"""Connect arguments for Airflow's SQLite metadata database (``AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS``).

The api-server, scheduler and dag-processor share one SQLite file. With sqlite3's default 5 s busy
timeout, a write that meets another process's long transaction fails with "database is locked"
(the api-server answers 500). Waiting up to 30 s turns those into short delays.
"""
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "PATCH", "DELETE"})
TRANSIENT_STATUS = frozenset({500, 502, 503, 504})


class AirflowStack:
    """api-server, scheduler and dag-processor (plus optional Celery workers) in a temporary AIRFLOW_HOME."""

    def __init__(
        self,
        home: Path,
        dags_folder: Path,
        extra_env: dict | None = None,
        *,
        executor: str = "LocalExecutor",
        db_url: str | None = None,
    ):
        self.home = home
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        home.mkdir(parents=True, exist_ok=True)
        credentials = settings.load_settings().airflow  # the CLI's --through-airflow reads the same
        self.username, self.password = credentials.username, credentials.password.get_secret_value()
        (home / "passwords.json").write_text(json.dumps({self.username: self.password}))
        (home / "passwords.json").chmod(0o600)
        self.env = {
            **os.environ,
            **TELEMETRY_OFF,
            # the config hooks below name devtools.stack, which lives in the checkout, not the install
            "PYTHONPATH": os.pathsep.join(p for p in (str(settings.PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p),
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url or f"sqlite:///{home / 'airflow.db'}",
            **({} if db_url else {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": "devtools.stack.SQLITE_CONNECT_ARGS"}),
            "AIRFLOW__CORE__EXECUTOR": executor,
            "AIRFLOW__CORE__PARALLELISM": "2",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{self.username}:admin",  # user:role
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),  # a fresh one per stack
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            **(extra_env or {}),
        }
        self.procs: list[ManagedProcess] = []
        self._token: str | None = None

    def airflow(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(VENV_BIN / "airflow"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.home,
        )

    def start(self, *, workers: list[str] = (), timeout: float = 120) -> AirflowStack:
        migrated = self.airflow("db", "migrate")
        if migrated.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{migrated.stdout[-3000:]}\n{migrated.stderr[-3000:]}")
        logs = self.home / "proc-logs"
        airflow = str(VENV_BIN / "airflow")
        self.procs.append(
            ManagedProcess(
                "api-server", [airflow, "api-server", "-p", str(self.port), "-w", "1"], self.env, logs, self.home
            )
        )
        self.procs.append(
            ManagedProcess("scheduler", [airflow, "scheduler", "--skip-serve-logs"], self.env, logs, self.home)
        )
        self.procs.append(ManagedProcess("dag-processor", [airflow, "dag-processor"], self.env, logs, self.home))
        for name in workers:
            self.start_worker(name)
        wait_for(
            lambda: http_ok(f"{self.base}/api/v2/monitor/health"),
            timeout,
            what="the Airflow api-server",
            procs=self.procs,
        )
        return self

    def start_worker(self, name: str) -> ManagedProcess:
        """A Celery worker (concurrency 1) whose task instances report ``<name>@<machine>`` as host."""
        airflow = str(VENV_BIN / "airflow")
        env = {
            **self.env,
            "LMRECSYS_WORKER_NAME": name,
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "devtools.stack.worker_hostname",
        }
        proc = ManagedProcess(
            f"worker-{name}",
            [airflow, "celery", "worker", "--celery-hostname", f"{name}@%h", "--concurrency", "1", "--skip-serve-logs"],
            env,
            self.home / "proc-logs",
            self.home,
        )
        self.procs.append(proc)
        return proc

    def process(self, name: str) -> ManagedProcess:
        return next(p for p in self.procs if p.name == name)

    def restart(self, name: str) -> None:
        old = self.process(name)
        old.stop()
        self.procs.remove(old)
        args = {"scheduler": ["scheduler", "--skip-serve-logs"], "dag-processor": ["dag-processor"]}[name]
        self.procs.append(
            ManagedProcess(name, [str(VENV_BIN / "airflow"), *args], self.env, self.home / "proc-logs", self.home)
        )

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()

    # -- REST API
    @property
    def headers(self) -> dict:
        if self._token is None:
            credentials = {"username": self.username, "password": self.password}
            response = requests.post(f"{self.base}/auth/token", json=credentials, timeout=10)
            response.raise_for_status()
            self._token = response.json()["access_token"]
        return {"Authorization": f"Bearer {self._token}"}

    def api(self, method: str, path: str, *, attempts: int = 4, timeout: float = 30, **kwargs):
        """One REST call. Idempotent calls are retried on a transient server error or a timeout (a
        locked SQLite database answers 500, or not at all until the lock is free), with a short
        back-off; a POST is never repeated."""
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(attempts if method.upper() in IDEMPOTENT else 1),
            wait=tenacity.wait_incrementing(start=1, increment=1),
            retry=tenacity.retry_if_exception_type((requests.ConnectionError, requests.Timeout))
            | tenacity.retry_if_result(lambda answer: answer.status_code in TRANSIENT_STATUS),
            retry_error_callback=lambda state: state.outcome.result(),  # out of tries: the last answer (or its error)
            reraise=True,
        )
        url = f"{self.base}/api/v2{path}"
        response = retrying(lambda: requests.request(method, url, headers=self.headers, timeout=timeout, **kwargs))
        if not response.ok:
            raise requests.HTTPError(
                f"{method} {path}: {response.status_code} {response.text[:2000]}", response=response
            )
        return response.json()

    def wait_dag(self, dag_id: str, timeout: float = 120) -> None:
        wait_for(
            lambda: self.api("GET", f"/dags/{dag_id}"), timeout, what=f"DAG {dag_id} to be parsed", procs=self.procs
        )

    def trigger(self, dag_id: str, conf: dict | None = None, attempts: int = 4) -> str:
        """Trigger a run under a run id chosen here, so the POST can be repeated: a locked SQLite
        database can hold the answer past the timeout after the run was created, and then the
        repeat's 409 (the id exists) says the first attempt landed."""
        run_id = f"manual__{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}_{secrets.token_hex(4)}"
        body = {"dag_run_id": run_id, "logical_date": None, "conf": conf or {}}
        for attempt in range(1, attempts + 1):
            try:
                return self.api("POST", f"/dags/{dag_id}/dagRuns", json=body)["dag_run_id"]
            except (requests.ConnectionError, requests.Timeout):
                if attempt == attempts:
                    raise
            except requests.HTTPError as exc:
                status = exc.response.status_code
                if status == 409 and attempt > 1:
                    return run_id
                if status not in TRANSIENT_STATUS or attempt == attempts:
                    raise
            time.sleep(attempt)
        raise AssertionError("unreachable")

    def runs(self, dag_id: str) -> list[dict]:
        return self.api("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100, "order_by": "start_date"})["dag_runs"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}")["state"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.api(
            "GET", f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances", params={"limit": 100}
        )["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1):
        quoted = urllib.parse.quote(run_id, safe="")
        return self.api(
            "GET",
            f"/dags/{dag_id}/dagRuns/{quoted}/taskInstances/{task_id}/xcomEntries/return_value",
            params={"map_index": map_index},
        )["value"]

    def task_instance(self, dag_id: str, run_id: str, task_id: str) -> dict:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/{task_id}")

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1) -> str:
        """One try's task log as text, read through the REST API like the UI does."""
        quoted = urllib.parse.quote(run_id, safe="")
        body = self.api(
            "GET",
            f"/dags/{dag_id}/dagRuns/{quoted}/taskInstances/{task_id}/logs/{try_number}",
            params={"full_content": "true", "map_index": map_index},
        )
        content = body.get("content", "")
        if isinstance(content, str):
            return content
        return "\n".join(_log_line(entry) for entry in content)

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 600) -> str:
        def finished():
            state = self.run_state(dag_id, run_id)
            return state if state in ("success", "failed") else None

        return wait_for(finished, timeout, interval=2, what=f"{dag_id} run {run_id}", procs=self.procs)


class BentoServer(ManagedProcess):
    """``bentoml serve serving.service:RecommenderService`` on a free port."""

    def __init__(self, env: dict, log_dir: Path, cwd: Path, port: int | None = None):
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, **TELEMETRY_OFF, "BENTOML_HOME": str(log_dir / "bentoml-home"), **env}
        super().__init__(
            "bentoml",
            [
                str(VENV_BIN / "bentoml"),
                "serve",
                "serving.service:RecommenderService",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env,
            log_dir,
            cwd,
        )

    def wait_ready(self, timeout: float = 120) -> BentoServer:
        wait_for(lambda: http_ok(f"{self.base}/readyz"), timeout, what="bentoml serve to be ready", procs=[self])
        return self

    def post(self, path: str, payload: dict, timeout: float = 30) -> requests.Response:
        return requests.post(f"{self.base}{path}", json=payload, timeout=timeout)


class MlflowServer(ManagedProcess):
    """``mlflow server`` on PostgreSQL with proxied artifacts."""

    def __init__(self, backend_uri: str, artifacts: Path, log_dir: Path, port: int | None = None):
        self.port = port or free_port()  # a fixed port: a restarted server is found at the same URL
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, **TELEMETRY_OFF, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        super().__init__(
            "mlflow-server",
            [
                str(VENV_BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                backend_uri,
                "--artifacts-destination",
                str(artifacts),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            env,
            log_dir,
        )

    def wait_ready(self, timeout: float = 90) -> MlflowServer:
        wait_for(lambda: http_ok(f"{self.base}/health"), timeout, what="mlflow server", procs=[self])
        return self
