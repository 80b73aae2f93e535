"""The stores behind a running ``bentoml serve`` restart or go away, and serving rides it out.

1. The feedback store's PostgreSQL server (a private one, started with ``initdb`` and ``pg_ctl``)
   restarts while threads post feedback: every acknowledged event is in the store afterwards, and
   the service answers 2xx again within 10 s of the restart.
2. The MLflow tracking server (``mlflow server`` on SQLite) goes down while serving runs:
   ``/recommend`` keeps answering with the loaded version, and once the server is back the
   service follows the alias, which moved in the meantime, by itself.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import requests

from components.settings import PROJECT_ROOT
from tests.faults.traffic import FeedbackPump, stored_event_ids
from tests.harness import (
    BentoServer,
    MlflowServer,
    free_port,
    restored_mlflow_state,
    wait_for,
)
from tests.unit.test_service_inprocess import build_champion

pytestmark = [pytest.mark.integration]
RECOVERY_S = 10.0
NOTICE_S = 20.0
"""How soon a tracking server that is down must show in the log (the pipeline's bounded retries give up in ~10 s)."""
PICK_UP_S = 30.0


@pytest.fixture(scope="module")
def champion_root(tmp_path_factory, movielens_dir) -> Path:
    return build_champion(tmp_path_factory, movielens_dir)


def serve(data_root: Path, workdir: Path, **env: str) -> BentoServer:
    env = {"LMRECSYS_DATA_ROOT": str(data_root), "LMRECSYS_SERVING__POLL_INTERVAL_S": "3600", **env}
    return BentoServer(env, workdir, PROJECT_ROOT).wait_ready(timeout=180)


def test_postgres_restart_loses_no_acknowledged_event(champion_root, private_postgres, tmp_path):
    server = serve(champion_root, tmp_path / "bento", LMRECSYS_FEEDBACK__URL=private_postgres.url)
    pump = FeedbackPump(server.base, "pg-restart", threads=4)
    try:
        pump.start().wait_acknowledged(200, timeout=60)
        began, back = private_postgres.restart()
        wait_for(lambda: pump.first_ok_after(back), RECOVERY_S + 5, interval=0.05, what="a 2xx after the restart")
        time.sleep(1)
        pump.stop()
        assert server.alive(), server.tail()
    finally:
        pump.stop()
        server.stop()
    acknowledged = pump.acknowledged()
    missing = set(acknowledged) - stored_event_ids(private_postgres.url, acknowledged)
    assert not missing, f"{len(missing)} acknowledged events are not in the store: {sorted(missing)[:10]}"
    recovered = pump.first_ok_after(back) - began  # from the moment the restart began
    assert recovered <= RECOVERY_S, f"first 2xx {recovered:.1f}s after the restart began; {pump.statuses()}"
    errors = {status for status in pump.statuses() if not 200 <= status < 300}
    assert errors <= {503}, f"failed requests must be 503s (retry with the same event_id): {pump.statuses()}"
    assert len(acknowledged) >= 200 + 1


def second_version(backend_uri: str) -> str:
    """Register the champion's logged model once more, as a new version of the same model."""
    import mlflow
    from mlflow.tracking import MlflowClient

    with restored_mlflow_state():
        mlflow.set_tracking_uri(backend_uri)  # MLflow resolves a logged model's source through the global URI
        client = MlflowClient(backend_uri)
        first = client.get_model_version_by_alias("recommender", "champion")
        return str(client.create_model_version("recommender", first.source, run_id=first.run_id).version)


def outage_logged(server: BentoServer, timeout: float) -> bool:
    try:
        wait_for(lambda: "cannot read the champion alias" in server.log_path.read_text(errors="replace"), timeout)
    except TimeoutError:
        return False
    return True


def serves(server: BentoServer, version: str, timeout: float) -> bool:
    try:
        wait_for(lambda: recommended_version(server.base) == version, timeout, procs=[server])
    except TimeoutError:
        return False
    return True


def recommended_version(base: str) -> str:
    response = requests.post(f"{base}/recommend", json={"user_id": 1, "k": 5}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["model_version"]


def test_serving_outlives_the_tracking_server(champion_root, tmp_path):
    from mlflow.tracking import MlflowClient

    registry = tmp_path / "registry"
    registry.mkdir()
    shutil.copy2(champion_root / "mlflow.db", registry / "mlflow.db")  # artifacts stay where they are
    backend = f"sqlite:///{registry / 'mlflow.db'}"
    new = second_version(backend)
    port = free_port()
    tracking = MlflowServer(backend, registry / "mlartifacts", tmp_path / "logs", port).wait_ready()
    server = None
    try:
        server = serve(
            champion_root,
            tmp_path / "bento",
            LMRECSYS_REGISTRY__TRACKING_URI=f"http://127.0.0.1:{port}",
            LMRECSYS_FEEDBACK__URL=f"sqlite:///{tmp_path / 'feedback.db'}",
            LMRECSYS_SERVING__POLL_INTERVAL_S="1",
        )
        old = recommended_version(server.base)
        assert old != new
        tracking.stop()
        MlflowClient(backend).set_registered_model_alias("recommender", "champion", new)  # moved while down
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # several polls fail meanwhile; every answer is the old version
            assert recommended_version(server.base) == old
            time.sleep(0.1)
        assert requests.get(f"{server.base}/readyz", timeout=10).status_code == 200
        # the outage is noticed in bounded time: MLflow's own client retries for minutes unless told otherwise
        noticed = outage_logged(server, NOTICE_S)
        tracking = MlflowServer(backend, registry / "mlartifacts", tmp_path / "logs", port).wait_ready()
        back = time.monotonic()
        picked_up = serves(server, new, PICK_UP_S)
        print(f"version {new} served: {picked_up}, {time.monotonic() - back:.1f}s after the tracking server was back")
        assert noticed, (
            f"no 'cannot read the champion alias' in the log {NOTICE_S:.0f}s into the outage: the alias poll is "
            "still inside MLflow's default HTTP retries (7, back-off factor 2)"
        )
        assert picked_up, f"version {new} not served {PICK_UP_S:.0f}s after the tracking server was back"
        assert requests.get(f"{server.base}/info", timeout=10).json()["model_version"] == new
    finally:
        if server is not None:
            server.stop()
        if tracking.alive():
            tracking.stop()
