"""The REST client of the local Airflow stack: which failures it retries, and what it reports."""

from __future__ import annotations

import ast
import json
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import typer

from devtools.stack import SQLITE_CONNECT_ARGS, VENV_BIN, AirflowStack


class ScriptedServer:
    """An HTTP server that answers each (method, path) from a script of (status, body) pairs."""

    def __init__(self, script: dict[tuple[str, str], list[tuple[int, dict]]]):
        self.script = script
        self.calls: list[tuple[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                outer.calls.append((self.command, self.path))
                if self.path == "/auth/token":
                    status, body = 201, {"access_token": "t"}
                else:
                    queue = outer.script[(self.command, self.path)]
                    status, body = queue.pop(0) if len(queue) > 1 else queue[0]
                    if status == "slow":  # answer too late for the client's timeout
                        time.sleep(1.0)
                        status = 200
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = _answer

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _stack(tmp_path, server: ScriptedServer) -> AirflowStack:
    stack = AirflowStack(tmp_path / "airflow", tmp_path / "dags")
    stack.base = f"http://127.0.0.1:{server.httpd.server_address[1]}"
    return stack


def test_an_idempotent_call_is_retried_through_a_transient_server_error(tmp_path):
    locked = (500, {"detail": "database is locked"})
    script = {("PATCH", "/api/v2/dags/d"): [locked, locked, (200, {"is_paused": True})]}
    with ScriptedServer(script) as server:
        assert _stack(tmp_path, server).api("PATCH", "/dags/d", json={"is_paused": True}) == {"is_paused": True}
    assert server.calls.count(("PATCH", "/api/v2/dags/d")) == 3


def test_an_idempotent_call_is_retried_after_a_timeout(tmp_path):
    script = {("PATCH", "/api/v2/dags/d"): [("slow", {}), (200, {"is_paused": False})]}
    with ScriptedServer(script) as server:
        assert _stack(tmp_path, server).api("PATCH", "/dags/d", json={"is_paused": False}, timeout=0.3) == {
            "is_paused": False
        }
    assert server.calls.count(("PATCH", "/api/v2/dags/d")) == 2


def test_a_post_is_never_repeated(tmp_path):
    script = {("POST", "/api/v2/dags/d/dagRuns"): [(500, {"detail": "database is locked"}), (200, {"dag_run_id": "r"})]}
    with ScriptedServer(script) as server:
        with pytest.raises(requests.HTTPError, match="POST /dags/d/dagRuns: 500 .*database is locked"):
            _stack(tmp_path, server).api("POST", "/dags/d/dagRuns", json={})
    assert server.calls.count(("POST", "/api/v2/dags/d/dagRuns")) == 1


def test_a_lasting_error_is_raised_with_the_servers_explanation(tmp_path):
    script = {("GET", "/api/v2/dags/missing"): [(404, {"detail": "The Dag with dag_id: `missing` was not found"})]}
    with ScriptedServer(script) as server:
        with pytest.raises(requests.HTTPError, match="GET /dags/missing: 404 .*was not found") as raised:
            _stack(tmp_path, server).api("GET", "/dags/missing")
    assert raised.value.response.status_code == 404
    assert server.calls.count(("GET", "/api/v2/dags/missing")) == 1  # a client error is not retried


def test_airflow_reads_the_sqlite_busy_timeout_from_the_stack_environment(tmp_path):
    stack = AirflowStack(tmp_path / "airflow", tmp_path / "dags")
    code = "from airflow.configuration import conf; print(conf.getimport('database', 'sql_alchemy_connect_args'))"
    out = subprocess.run(
        [str(VENV_BIN / "python"), "-c", code], env=stack.env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    # Airflow adds check_same_thread=False to the same dict when it sets up its engine
    assert ast.literal_eval(out.stdout.strip().splitlines()[-1])["timeout"] == SQLITE_CONNECT_ARGS["timeout"] >= 30


def test_a_server_database_gets_no_sqlite_arguments(tmp_path):
    stack = AirflowStack(tmp_path / "airflow", tmp_path / "dags", db_url="postgresql+psycopg2://u@127.0.0.1:5432/test")
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS" not in stack.env


def test_demo_command_line(monkeypatch):
    """``make demo`` runs ``python -m devtools.demo``: its options parse, and bad ones are named."""
    from typer.testing import CliRunner

    import devtools.demo as demo

    calls = []
    monkeypatch.setattr(
        demo, "run_demo", lambda root, **kwargs: calls.append((root, kwargs)) or {"champion_version": 1}
    )
    app = typer.Typer()
    app.command()(demo.demo)
    runner = CliRunner()
    done = runner.invoke(app, ["--data-root", "somewhere", "--max-users", "40", "--no-wait"])
    assert done.exit_code == 0, done.output
    assert calls == [(Path("somewhere"), {"max_users": 40, "keep_running": False})]
    assert '"champion_version": 1' in done.output
    bad = runner.invoke(app, ["--max-users", "many"])
    assert bad.exit_code == 2 and "max-users" in bad.output
