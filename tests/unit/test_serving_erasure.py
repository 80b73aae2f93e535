"""Erasure in the service: a forgotten user stops being served at once in the replica that took the
request, and within one refresh in the others (the store is shared); admin routes need the token."""

from __future__ import annotations

import time

import pytest

from components.feedback.store import FeedbackEvent, FeedbackStore
from tests.unit.test_service_inprocess import ADMIN_TOKEN, EnvPatch, champion_root, service_app, service_env  # noqa: F401

pytestmark = [pytest.mark.slow]
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _known_users(client, n: int) -> list:
    from serving.middleware import SERVING

    return list(SERVING[-1].loaded.engine.histories)[:n]


def test_forget_through_the_service_and_through_another_replica(champion_root, tmp_path):  # noqa: F811
    from starlette.testclient import TestClient

    from components.privacy import forget_user
    from components.settings import load_settings

    db = tmp_path / "feedback.db"
    with EnvPatch(service_env(champion_root, db, LMRECSYS_SERVING__ADMIN_TOKEN=ADMIN_TOKEN)):
        with TestClient(service_app(), raise_server_exceptions=False) as client:
            first, second = _known_users(client, 2)
            item = client.post("/recommend", json={"user_id": first, "k": 1}).json()["items"][0]["item_id"]
            assert (
                client.post("/feedback", json={"user_id": first, "item_id": item, "event": "like"}).status_code == 200
            )
            before = client.post("/recommend", json={"user_id": first, "k": 5}).json()
            assert before["source"] == "history"
            assert client.post("/history", json={"user_id": first}).json()["items"]
            held = client.get(f"/admin/users/{first}/audit", headers=ADMIN).json()
            assert {p["memory"] for p in held["places"]} >= {"history", "cached_ranking", "recent feedback index"}

            assert client.delete(f"/admin/users/{first}", params={"reason": "asked by email"}).status_code == 401
            assert client.delete(f"/admin/users/{first}", headers=ADMIN).status_code == 400  # no reason
            done = client.delete(f"/admin/users/{first}", params={"reason": "asked by email"}, headers=ADMIN)
            assert done.status_code == 200 and done.json()["events_deleted"] == 1 and done.json()["state"] == "pending"
            after = client.post("/recommend", json={"user_id": first, "k": 5}).json()
            assert after["source"] == "popularity (unknown user)" and after["fallback"] is True
            assert all(not r.get("explanation") or str(first) not in str(r["explanation"]) for r in after["items"])
            history = client.post("/history", json={"user_id": first}).json()
            assert history["items"] == [] and history["known_user"] is False
            assert client.get(f"/admin/users/{first}/audit", headers=ADMIN).json() == {
                "user_id": str(first),
                "found": 0,
                "places": [],
            }

            # another replica (here: the CLI's code path on the same store) forgets the second user
            settings = load_settings(data_root=champion_root, feedback={"url": f"sqlite:///{db}"})
            store = FeedbackStore(f"sqlite:///{db}")
            try:
                store.append([FeedbackEvent(str(second), str(item), "like", event_id="second-like")])
            finally:
                store.close()
            assert forget_user(settings, second, "asked by phone")["events_deleted"] == 1
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                answer = client.post("/recommend", json={"user_id": second, "k": 5}).json()
                if answer["source"] != "history":
                    break
                time.sleep(0.2)
            assert answer["source"] == "popularity (unknown user)"
            assert client.get(f"/admin/users/{second}/audit", headers=ADMIN).json()["found"] == 0
