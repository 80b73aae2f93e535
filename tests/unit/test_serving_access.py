"""Client access and secrets (issue #16, parts 7 and 8): client API keys on every route but the probes, in the
fast lane and in BentoML's API layer alike; production mode without keys refuses to start; no key, token or
store password in a 401 body or a log line.

The service runs in-process on the shared test champion (see tests/unit/test_service_inprocess.py).
"""

from __future__ import annotations

import logging

import pytest

from tests.unit.test_service_inprocess import EnvPatch, build_champion, service_app, service_env

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="session")
def champion_root(tmp_path_factory, movielens_dir):
    return build_champion(tmp_path_factory, movielens_dir)


KEYS = ["client-key-0123456789abcdef", "client-key-fedcba9876543210"]
ADMIN = "admin-token-" + "z" * 32
PASSWORD = "pg-pass-never-logged-42"
KEY_ENV = '["' + '", "'.join(KEYS) + '"]'


def keyed_client(champion_root, tmp_path, **extra):
    from starlette.testclient import TestClient

    env = service_env(
        champion_root,
        tmp_path / "fb.db",
        LMRECSYS_SERVING__CLIENT_KEYS=KEY_ENV,
        LMRECSYS_SERVING__ADMIN_TOKEN=ADMIN,
        **extra,
    )
    return EnvPatch(env), TestClient(service_app(), raise_server_exceptions=False)


def logged(caplog) -> str:
    return "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.exc_info or ''}" for r in caplog.records)


REQUESTS = [
    ("post", "/recommend", {"user_id": 1, "k": 3}),
    ("post", "/history", {"user_id": 1}),
    ("post", "/recommend_session", {"item_ids": [1], "k": 3}),
    ("post", "/similar_items", {"item_id": 1, "k": 3}),
    ("post", "/feedback", {"user_id": 1, "item_id": 1, "event": "view"}),
    ("post", "/feedback_batch", {"events": [{"user_id": 1, "item_id": 1, "event": "view"}]}),
    ("post", "/search", {"query": "toys", "k": 3}),  # always BentoML's API layer
    ("post", "/ping", {}),
    ("get", "/info", None),
    ("get", "/docs.json", None),
]


@pytest.mark.parametrize("fast_lane", ["true", "false"])
def test_every_route_but_the_probes_needs_a_client_key(champion_root, tmp_path, fast_lane, caplog):
    """Without a key or with a wrong one: 401 naming both headers, never echoing what was sent; with a key
    (as a bearer token or in X-API-Key): answered. The same with the fast lane on and off."""
    caplog.set_level(logging.DEBUG)
    patch, client = keyed_client(champion_root, tmp_path, LMRECSYS_SERVING__FAST_LANE=fast_lane)
    wrong = ["client-key-0123456789abcdeX", KEYS[0][:-1], KEYS[0] + "0", "nope"]
    with patch, client:
        for method, path, body in REQUESTS:
            send = getattr(client, method)
            kwargs = {"json": body} if body is not None else {}
            answers = [send(path, **kwargs)]
            answers += [send(path, headers={"X-API-Key": w}, **kwargs) for w in wrong]
            answers += [send(path, headers={"Authorization": f"Bearer {w}"}, **kwargs) for w in wrong]
            answers += [send(path, headers={"Authorization": KEYS[0]}, **kwargs)]  # no "Bearer": not a key
            for answer in answers:
                assert answer.status_code == 401, (path, answer.status_code, answer.text)
                assert "X-API-Key" in answer.json()["error"] and "Authorization: Bearer" in answer.json()["error"]
                assert "x-lmrecsys-lane" not in answer.headers  # refused before the fast lane
                assert not any(secret in answer.text for secret in [*KEYS, *wrong, ADMIN]), answer.text
            for headers in ({"X-API-Key": KEYS[0]}, {"Authorization": f"Bearer {KEYS[1]}"}):
                answer = send(path, headers=headers, **kwargs)
                assert answer.status_code == 200, (path, headers, answer.text)
                if path in ("/recommend", "/history", "/feedback"):
                    lane = answer.headers.get("x-lmrecsys-lane")
                    assert lane == ("fast" if fast_lane == "true" else None), (path, fast_lane)
        recs = client.post("/recommend", json={"user_id": 1, "k": 3}, headers={"X-API-Key": KEYS[0]}).json()
        assert any(item["explanation"] for item in recs["items"])  # explanations reach authenticated clients
        for path in ("/healthz", "/livez", "/readyz", "/metrics", "/ui"):
            assert client.get(path).status_code == 200, path
        assert 'id="api-key"' in client.get("/ui").text  # the page asks for the key and sends it
    text = logged(caplog)
    assert not any(secret in text for secret in [*KEYS, *wrong, ADMIN])


def test_admin_reload_needs_a_client_key_and_the_admin_token(champion_root, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    patch, client = keyed_client(champion_root, tmp_path)
    with patch, client:
        bearer = {"Authorization": f"Bearer {ADMIN}"}
        assert client.post("/admin/reload", headers=bearer).status_code == 401  # no client key
        refused = client.post("/admin/reload", headers={"X-API-Key": KEYS[0], "Authorization": f"Bearer {KEYS[1]}"})
        assert refused.status_code == 401 and "admin token" in refused.json()["error"]
        assert not any(secret in refused.text for secret in [*KEYS, ADMIN])
        near = client.post("/admin/reload", headers={"X-API-Key": KEYS[0], "Authorization": f"Bearer {ADMIN}x"})
        assert near.status_code == 401 and ADMIN not in near.text
        answer = client.post("/admin/reload", headers={"X-API-Key": KEYS[0], **bearer})
        assert answer.status_code == 200 and answer.json()["changed"] is False
    text = logged(caplog)
    assert not any(secret in text for secret in [*KEYS, ADMIN])


def test_without_keys_outside_production_the_service_stays_open(champion_root, tmp_path):
    from starlette.testclient import TestClient

    with EnvPatch({**service_env(champion_root, tmp_path / "fb.db"), "LMRECSYS_SERVING__CLIENT_KEYS": None}):
        with TestClient(service_app()) as client:
            assert client.post("/history", json={"user_id": 1}).status_code == 200
            assert client.post("/recommend", json={"user_id": 1}).status_code == 200


@pytest.mark.parametrize(
    ("keys", "message"),
    [(None, "LMRECSYS_SERVING__CLIENT_KEYS"), ("[]", "LMRECSYS_SERVING__CLIENT_KEYS"), ('["short"]', "16 characters")],
)
def test_production_mode_refuses_to_start_without_client_keys(champion_root, tmp_path, keys, message):
    from serving.service import RecommenderService

    env = {
        **service_env(champion_root, tmp_path / "fb.db"),
        "LMRECSYS_SERVING__PRODUCTION": "true",
        "LMRECSYS_SERVING__CLIENT_KEYS": keys,
    }
    with EnvPatch(env), pytest.raises(RuntimeError, match=message) as raised:
        RecommenderService.inner()  # the checks run first in __init__, before anything is loaded
    assert "production mode" in str(raised.value)


def test_production_mode_with_keys_serves_them(champion_root, tmp_path):
    patch, client = keyed_client(champion_root, tmp_path, LMRECSYS_SERVING__PRODUCTION="true")
    with patch, client:
        assert client.post("/recommend", json={"user_id": 1}).status_code == 401
        assert client.post("/recommend", json={"user_id": 1}, headers={"X-API-Key": KEYS[1]}).status_code == 200


def test_no_store_password_in_logs_or_answers(champion_root, tmp_path, caplog):
    """A feedback URL with a password on a closed port: the service starts, /readyz says the store does not
    answer (URL redacted), feedback gets a 503, and the password appears in no answer and no log line."""
    from starlette.testclient import TestClient

    caplog.set_level(logging.DEBUG)
    url = f"postgresql://app:{PASSWORD}@127.0.0.1:1/feedback"
    env = {**service_env(champion_root, tmp_path / "fb.db"), "LMRECSYS_FEEDBACK__URL": url}
    texts = []
    with EnvPatch(env), TestClient(service_app(), raise_server_exceptions=False) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503, ready.text
        assert any("app:***@127.0.0.1:1" in reason for reason in ready.json()["reasons"]), ready.text
        feedback = client.post("/feedback", json={"user_id": 1, "item_id": 1, "event": "like"})
        assert feedback.status_code == 503, feedback.text
        batch = client.post("/feedback_batch", json={"events": [{"user_id": 1, "item_id": 1, "event": "like"}]})
        assert batch.status_code == 503
        recs = client.post("/recommend", json={"user_id": 1})
        texts += [ready.text, feedback.text, batch.text, recs.text, client.get("/info").text]
    texts.append(logged(caplog))
    assert caplog.records, "expected the store failure to be logged"
    assert not any(PASSWORD in text for text in texts), [t for t in texts if PASSWORD in t]
