"""/readyz follows the feedback store, and feedback items are checked before a champion exists (issue #16).

A real PostgreSQL store behind a TCP proxy that the test cuts and restores: /readyz turns 503 naming the
store (password-free) within the probe interval, feedback gets 503, and both come back when the store does.
Before any champion loads, feedback item ids are checked against the newest accepted snapshot, which is
picked up when it appears. The service runs in-process on the shared test champion.
"""

from __future__ import annotations

import logging
import shutil
import socket
import threading
import time
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.unit.test_service_inprocess import EnvPatch, build_champion, service_app, service_env

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="session")
def champion_root(tmp_path_factory, movielens_dir):
    return build_champion(tmp_path_factory, movielens_dir)


class Proxy:
    """A TCP forwarder to ``target_port`` on a fixed local port; ``stop()`` refuses and cuts connections."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._running = False

    def start(self) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(64)
        self.listener.settimeout(0.1)
        self._running = True
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def stop(self) -> None:
        self._running = False
        self.listener.close()
        for sock in self._sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self._sockets.clear()

    def _accept(self, listener) -> None:
        while self._running:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            client.settimeout(None)
            self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source, sink) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def wait_for(check, timeout_s: float = 15.0):
    deadline = time.monotonic() + timeout_s
    while True:
        answer = check()
        if answer or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


def event(item_id=1, user_id=1, kind="like"):
    return {"user_id": user_id, "item_id": item_id, "event": kind}


def test_readyz_follows_a_postgres_store_that_goes_away_and_comes_back(champion_root, tmp_path, postgres_url, caplog):
    from starlette.testclient import TestClient

    caplog.set_level(logging.INFO)
    parts = urlsplit(postgres_url)
    proxy = Proxy(parts.port or 5432)
    proxy.start()
    proxied = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
    env = {**service_env(champion_root, tmp_path / "unused.db"), "LMRECSYS_FEEDBACK__URL": proxied}
    try:
        with EnvPatch(env), TestClient(service_app(), raise_server_exceptions=False) as client:
            assert wait_for(lambda: client.get("/readyz").status_code == 200), client.get("/readyz").text
            assert client.post("/feedback", json=event()).status_code == 200
            proxy.stop()
            down = wait_for(lambda: client.get("/readyz").status_code == 503, timeout_s=10)
            assert down, "readyz stayed 200 with the store gone"
            reasons = client.get("/readyz").json()["reasons"]
            assert any("feedback store" in r and f"127.0.0.1:{proxy.port}" in r for r in reasons), reasons
            failed = client.post("/feedback", json=event(kind="view"))
            assert failed.status_code == 503 and "retry with the same event_id" in failed.json()["error"]
            assert client.post("/recommend", json={"user_id": 2}).status_code == 200  # no recent feedback: answered
            stale = client.post("/recommend", json={"user_id": 1})  # their feedback cannot be read: not dropped
            assert stale.status_code == 503 and "feedback store" in stale.json()["error"], stale.text
            proxy.start()
            assert wait_for(lambda: client.get("/readyz").status_code == 200), client.get("/readyz").text
            assert client.post("/feedback", json=event(kind="view")).status_code == 200
    finally:
        proxy.stop()
    messages = [r.getMessage() for r in caplog.records if r.name == "lmrecsys.serving"]
    assert sum("does not answer" in m for m in messages) == 1, messages  # said once per outage, not every second
    assert sum("answers again" in m for m in messages) == 1, messages


def test_a_service_started_while_the_store_is_down_becomes_ready_when_it_answers(champion_root, tmp_path):
    """SQLite: a store folder that cannot be created makes /readyz 503; once it can, /readyz turns 200."""
    from starlette.testclient import TestClient

    blocker = tmp_path / "store"
    blocker.write_text("a file where the store's folder should be")
    env = {**service_env(champion_root, blocker / "fb.db")}
    with EnvPatch(env), TestClient(service_app(), raise_server_exceptions=False) as client:
        answer = client.get("/readyz")
        assert answer.status_code == 503 and any("feedback store" in r for r in answer.json()["reasons"])
        assert client.post("/feedback", json=event()).status_code == 503
        blocker.unlink()
        assert wait_for(lambda: client.get("/readyz").status_code == 200), client.get("/readyz").text
        assert client.post("/feedback", json=event()).status_code == 200


def copy_accepted_snapshot(champion_root, data_root):
    from components.data.snapshots import newest_accepted
    from components.settings import load_settings

    snapshot = newest_accepted(load_settings(data_root=champion_root).snapshots_dir)
    shutil.copytree(snapshot.path, data_root / "snapshots" / snapshot.snapshot_id)
    return snapshot


def test_feedback_items_are_checked_against_the_newest_accepted_snapshot_before_a_champion(
    champion_root, tmp_path, caplog
):
    from starlette.testclient import TestClient

    from components.feedback.store import FeedbackStore
    from serving.middleware import SERVING

    caplog.set_level(logging.INFO)
    root, db = tmp_path / "no-champion", tmp_path / "fb.db"
    known = int(copy_accepted_snapshot(champion_root, tmp_path / "first").items()["item_id"].iloc[0])
    with EnvPatch(service_env(root, db)), TestClient(service_app(), raise_server_exceptions=False) as client:
        assert client.get("/readyz").json()["reasons"] == ["no model is loaded yet"]
        # no champion, no accepted snapshot: accepted unchecked, and the log says so once
        assert client.post("/feedback", json=event(item_id=987654321)).status_code == 200
        assert client.post("/feedback", json=event(item_id=987654322)).status_code == 200
        unchecked = [r for r in caplog.records if "accepted unchecked" in r.getMessage()]
        assert len(unchecked) == 1
        copy_accepted_snapshot(champion_root, root)
        SERVING[-1].accepted.refresh()  # what the background thread does every few seconds
        for path, payload in (
            ("/feedback", event(item_id=987654323)),
            ("/feedback_batch", {"events": [event(item_id=known), event(item_id=987654324)]}),
        ):
            refused = client.post(path, json=payload)
            assert refused.status_code == 404, refused.text
            assert refused.json()["unknown_ids"] == [int(payload.get("item_id", 987654324))]
            assert str(refused.json()["unknown_ids"][0]) in refused.json()["error"]
        bad_user = client.post("/feedback", json=event(item_id=known, user_id="not-an-int"))
        assert bad_user.status_code == 400 and bad_user.json()["field"] == "user_id"
        assert client.post("/feedback", json=event(item_id=known)).status_code == 200
        assert client.post("/feedback", json=event(item_id=str(known))).status_code == 200
    assert FeedbackStore(f"sqlite:///{db}").count() == 4  # two unchecked, two known; nothing refused was written


def test_an_accepted_snapshot_present_at_start_is_used_at_once(champion_root, tmp_path):
    from starlette.testclient import TestClient

    root = tmp_path / "no-champion"
    known = int(copy_accepted_snapshot(champion_root, root).items()["item_id"].iloc[-1])
    with EnvPatch(service_env(root, tmp_path / "fb.db")), TestClient(service_app()) as client:
        assert client.post("/feedback", json=event(item_id=987654321)).status_code == 404
        assert client.post("/feedback", json=event(item_id=known)).status_code == 200
