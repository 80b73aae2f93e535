"""``mlflow models serve`` on a registered version: MLflow's own scoring server loads the model
from code, answers /invocations in the logged signature's terms, and refuses a changed bundle.

The registry is SQLite in a temporary folder and the bundle is the tiny one of the unit tests;
the server runs with ``--env-manager local`` (the project's own environment).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest

from components.engine import write_bundle
from components.models import LMContent
from components.registry import configure, log_bundle_model
from components.settings import load_settings
from tests.harness import restored_mlflow_state
from tests.unit._model_fixtures import cluster_vectors, tiny_data

pytestmark = pytest.mark.integration
PROJECT_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve(model_uri: str, tracking_uri: str, port: int, log_file: Path) -> subprocess.Popen:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # uvicorn, as MLflow runs it
    env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_DISABLE_TELEMETRY": "true"}
    mlflow_cli = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri]
    return subprocess.Popen(
        [*mlflow_cli, "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log_file.open("w"),
        stderr=subprocess.STDOUT,
    )


def wait_ready(process: subprocess.Popen, port: int) -> bool:
    """True once /ping answers 200; False if the server exits first."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as answer:
                if answer.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"mlflow models serve neither started nor exited within {START_TIMEOUT_S}s")


def invoke(port: int, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    with restored_mlflow_state():
        root = tmp_path_factory.mktemp("models-serve")
        settings = load_settings(data_root=root)
        configure(settings)
        data = tiny_data()
        model = LMContent({"whiten_dim": None}).fit(data, cluster_vectors())
        bundle = write_bundle(
            root / "bundle", model, data, cluster_vectors(), {"model_name": "lm_content", "id_type": "int"}
        )
        versions = []
        for _ in range(2):
            with mlflow.start_run():
                versions.append(log_bundle_model(bundle, settings.registry.model_name))
        yield settings, versions, root


def test_mlflow_models_serve_answers_and_refuses_a_changed_bundle(registered):
    settings, ((intact, _), (tampered, tampered_uri)), root = registered
    name = settings.registry.model_name
    port = free_port()
    process = serve(f"models:/{name}/{intact}", settings.tracking_uri, port, root / "serve-intact.log")
    try:
        assert wait_ready(process, port), (root / "serve-intact.log").read_text()[-3000:]
        status, body = invoke(port, {"dataframe_records": [{"user_id": "1", "k": 3}]})
        assert status == 200, body
        rows = body["predictions"]
        assert [r["rank"] for r in rows] == [1, 2, 3] and {r["user_id"] for r in rows} == {"1"}
        assert set(rows[0]) == {"user_id", "item_id", "title", "score", "rank", "source"}
        status, body = invoke(port, {"dataframe_records": [{"user_id": "4"}]})  # k is optional
        assert status == 200 and len(body["predictions"]) == 5, body
        status, body = invoke(port, {"dataframe_records": [{"k": 3}]})  # user_id is required
        assert status == 400, body
    finally:
        stop(process)

    model_id = tampered_uri.rsplit("/", 1)[-1]
    location = mlflow.MlflowClient(settings.tracking_uri).get_logged_model(model_id).artifact_location
    stored = Path(location.removeprefix("file://")) / "artifacts" / "bundle" / "popularity.npy"
    np.save(stored, np.load(stored)[::-1].copy())
    port = free_port()
    process = serve(f"models:/{name}/{tampered}", settings.tracking_uri, port, root / "serve-tampered.log")
    try:
        ready = wait_ready(process, port)
        log = (root / "serve-tampered.log").read_text()
        if ready:  # a server that starts anyway must not answer from the changed bundle
            status, body = invoke(port, {"dataframe_records": [{"user_id": "1", "k": 3}]})
            assert status != 200, body
        assert "content hash" in log and "popularity.npy" in log, log[-3000:]
    finally:
        stop(process)
