"""The BentoML service in-process (``to_asgi()`` under Starlette's TestClient) on a real champion.

One champion is built per test session by the real pipeline on a reduced ml-latest-small (60
users) and reused; each test module gets its own feedback store so events never leak between
tests that count them. Set LMRECSYS_TEST_CHAMPION_ROOT to a data root holding a champion to skip the
pipeline run while iterating.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="lmrecsys-prom-")
)  # before bentoml imports prometheus_client

import re
import uuid
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.slow]

ADMIN_TOKEN = "test-admin-token-7f3a"


def build_champion(tmp_path_factory, movielens_dir: Path) -> Path:
    """A data root holding one real champion, built once per session and shared by modules."""
    from components.pipeline import run_pipeline
    from components.settings import load_settings

    prebuilt = os.environ.get("LMRECSYS_TEST_CHAMPION_ROOT")  # a data root from an earlier run, to iterate faster
    if prebuilt:
        return Path(prebuilt)
    root = tmp_path_factory.getbasetemp() / "serving-champion"
    if not (root / "READY").exists():
        settings = load_settings(
            data_root=root, ingest={"source": str(movielens_dir), "max_users": 60}, train={"bootstrap_samples": 100}
        )
        decision = run_pipeline(settings)
        assert decision.get("promoted") or decision.get("decision") == "promoted", decision
        (root / "READY").write_text("ok")
    return root


def service_env(data_root: Path, feedback_db: Path, **extra: str) -> dict[str, str]:
    return {
        "LMRECSYS_DATA_ROOT": str(data_root),
        "LMRECSYS_FEEDBACK__URL": f"sqlite:///{feedback_db}",
        "LMRECSYS_SERVING__POLL_INTERVAL_S": "3600",
        **extra,
    }


class EnvPatch:
    """Set environment variables for the service's __init__ and put the old values back."""

    def __init__(self, values: dict[str, str | None]):
        self.values = values
        self.saved = {name: os.environ.get(name) for name in values}

    def __enter__(self):
        for name, value in self.values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        return self

    def __exit__(self, *exc):
        for name, value in self.saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


_APP = None


def service_app():
    """One ASGI app per process: BentoML registers its HTTP metrics once per app, so the clients
    of every test (each with its own environment and service instance) share it."""
    global _APP
    if _APP is None:
        from serving.service import RecommenderService

        _APP = RecommenderService.to_asgi()
    return _APP


@pytest.fixture(scope="session")
def champion_root(tmp_path_factory, movielens_dir) -> Path:
    return build_champion(tmp_path_factory, movielens_dir)


@pytest.fixture(scope="module")
def catalogue(champion_root) -> pd.DataFrame:
    from components.data.snapshots import list_snapshots
    from components.settings import load_settings

    snapshot = list_snapshots(load_settings(data_root=champion_root).snapshots_dir)[0]
    return pd.read_parquet(snapshot.path / "items.parquet")


@pytest.fixture(scope="module")
def client(champion_root, tmp_path_factory):
    from starlette.testclient import TestClient

    feedback_db = tmp_path_factory.mktemp("feedback") / "feedback.db"
    with EnvPatch(service_env(champion_root, feedback_db, LMRECSYS_SERVING__ADMIN_TOKEN=ADMIN_TOKEN)):
        with TestClient(service_app(), raise_server_exceptions=False) as test_client:
            test_client.feedback_db = feedback_db
            yield test_client


def no_traceback(response) -> None:
    assert "Traceback" not in response.text and 'File "' not in response.text, response.text


def post(client, path: str, payload):
    return client.post(path, json=payload)


# ---------------------------------------------------------------------------------------------- own service instances
# These run first, before the module's shared client starts: clients of one app must not overlap,
# because closing one tears down the service instance the app holds.
def test_admin_reload_is_disabled_without_a_token(champion_root, tmp_path):
    from starlette.testclient import TestClient

    with EnvPatch({**service_env(champion_root, tmp_path / "fb.db"), "LMRECSYS_SERVING__ADMIN_TOKEN": None}):
        with TestClient(service_app()) as test_client:
            response = test_client.post("/admin/reload", headers={"Authorization": "Bearer anything"})
            assert response.status_code == 403 and "LMRECSYS_SERVING__ADMIN_TOKEN" in response.json()["error"]


def test_not_ready_until_a_model_exists(tmp_path, catalogue):
    from starlette.testclient import TestClient

    from components.feedback.store import FeedbackStore

    empty_root = tmp_path / "empty"
    with EnvPatch(service_env(empty_root, tmp_path / "fb.db")):
        with TestClient(service_app()) as test_client:
            assert test_client.get("/healthz").status_code == 200
            assert test_client.get("/readyz").status_code == 503
            assert test_client.get("/info").status_code == 503
            response = post(test_client, "/recommend", {"user_id": 1})
            assert response.status_code == 503 and "readyz" in response.json()["error"]
            # feedback is still accepted (and durable) while no model is loaded
            assert post(test_client, "/feedback", {"user_id": 1, "item_id": 1, "event": "like"}).status_code == 200
    assert FeedbackStore(f"sqlite:///{tmp_path / 'fb.db'}").count() == 1


MAX_K_PROBE = """
import json, sys
from starlette.testclient import TestClient
from serving.service import RecommenderService
answers = {}
with TestClient(RecommenderService.to_asgi(), raise_server_exceptions=False) as client:
    for path, payload in json.loads(sys.argv[1]):
        response = client.post(path, json=payload)
        answers[f"{path} {payload['k']}"] = [response.status_code, response.json()]
    answers["schema"] = client.get("/docs.json").json()
print(json.dumps(answers))
"""


def test_max_k_setting_is_the_limit_on_k(champion_root, tmp_path):
    """With ``serving.max_k`` = 5 (not the default 100), k = 5 is answered and k = 6 is the same 400 naming
    ``k`` that k = 101 gets by default, in the fast lane and in BentoML's API layer (/search), and the
    OpenAPI schema says 5. In a fresh process: the limit is part of the input schemas, fixed at import."""
    requests_ = [
        ("/recommend", {"user_id": 1, "k": 5}),
        ("/similar_items", {"item_id": 1, "k": 5}),
        ("/recommend", {"user_id": 1, "k": 6}),
        ("/similar_items", {"item_id": 1, "k": 6}),
        ("/search", {"query": "toys", "k": 6}),  # a sync endpoint: BentoML's API layer, not the fast lane
    ]
    env = {
        **os.environ,
        **service_env(champion_root, tmp_path / "fb.db", LMRECSYS_SERVING__MAX_K="5"),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),
    }
    (tmp_path / "prometheus").mkdir()
    result = subprocess.run(
        [sys.executable, "-c", MAX_K_PROBE, json.dumps(requests_)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    for path in ("/recommend", "/similar_items"):
        status, body = answers[f"{path} 5"]
        assert status == 200 and len(body["items"]) == 5, (path, body)
    for path in ("/recommend", "/similar_items", "/search"):
        status, body = answers[f"{path} 6"]
        assert status == 400, (path, status, body)
        assert [detail["loc"] for detail in body["detail"]] == [["k"]], body
        assert "less than or equal to 5" in body["detail"][0]["msg"], body
    schemas = answers["schema"]["components"]["schemas"]
    k_fields = {name: spec["properties"]["k"] for name, spec in schemas.items() if "k" in spec.get("properties", {})}
    k_limits = {name: field.get("maximum") for name, field in k_fields.items()}
    assert k_limits and set(k_limits.values()) == {5}, k_limits


# ---------------------------------------------------------------------------------------------- happy paths
def test_health_ready_info_and_ui(client):
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    info = client.get("/info").json()
    assert info["ready"] is True and info["model_version"].isdigit()
    assert info["snapshot_id"] and info["model_name"] in ("lm_content", "popularity")
    ui = client.get("/ui")
    assert ui.status_code == 200 and "<h1>lm-recsys</h1>" in ui.text


def test_recommend_known_user_excludes_seen_and_explains(client, champion_root):
    from components.data.snapshots import list_snapshots
    from components.settings import load_settings

    response = post(client, "/recommend", {"user_id": 1, "k": 7})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["source"] == "history" and body["fallback"] is False
    assert body["model_version"] == client.get("/info").json()["model_version"]
    assert [item["rank"] for item in body["items"]] == list(range(1, 8))
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert all(item["title"] and item["explanation"].startswith("because you liked ") for item in body["items"])
    interactions = pd.read_parquet(
        list_snapshots(load_settings(data_root=champion_root).snapshots_dir)[0].path / "interactions.parquet"
    )
    seen = set(interactions.loc[interactions["user_id"] == 1, "item_id"])
    assert not seen & {item["item_id"] for item in body["items"]}
    with_seen = post(client, "/recommend", {"user_id": 1, "k": 50, "exclude_seen": False}).json()
    assert len(with_seen["items"]) == 50


def test_recommend_category_filter(client, catalogue):
    body = post(client, "/recommend", {"user_id": 1, "k": 10, "categories": ["Horror"]}).json()
    assert len(body["items"]) == 10
    categories = dict(zip(catalogue["item_id"], catalogue["categories"]))
    assert all("horror" in categories[item["item_id"]].lower() for item in body["items"])


def test_unknown_user_falls_back_to_popularity_and_says_so(client):
    body = post(client, "/recommend", {"user_id": 999_999, "k": 5}).json()
    assert body["fallback"] is True and body["source"] == "popularity (unknown user)"
    assert [item["explanation"] for item in body["items"]] == [None] * 5
    assert body["items"] == post(client, "/recommend", {"user_id": 888_888, "k": 5}).json()["items"]


def test_unknown_user_with_a_session_uses_it(client, catalogue):
    session = catalogue["item_id"].tolist()[:3]
    body = post(client, "/recommend", {"user_id": 999_998, "k": 5, "session_item_ids": session}).json()
    assert body["source"] == "session (unknown user)" and body["fallback"] is True
    assert not set(session) & {item["item_id"] for item in body["items"]}
    assert all(item["explanation"] for item in body["items"])
    popular = post(client, "/recommend", {"user_id": 999_998, "k": 5}).json()
    assert popular["items"] != body["items"]


def test_recommend_session_and_similar_items(client, catalogue):
    session = catalogue["item_id"].tolist()[10:13]
    body = post(client, "/recommend_session", {"item_ids": session, "k": 4}).json()
    assert body["source"] == "session" and len(body["items"]) == 4
    assert not set(session) & {item["item_id"] for item in body["items"]}
    toy_story = int(catalogue.loc[catalogue["title"].str.startswith("Toy Story (1995)"), "item_id"].iloc[0])
    similar = post(client, "/similar_items", {"item_id": toy_story, "k": 5}).json()
    assert similar["item_id"] == toy_story and len(similar["items"]) == 5
    assert toy_story not in {item["item_id"] for item in similar["items"]}
    assert any("Toy Story" in item["title"] for item in similar["items"]), similar["items"]


def test_search_finds_items_by_text(client):
    response = post(client, "/search", {"query": "Toy Story animated toys come to life", "k": 10})
    assert response.status_code == 200, response.text
    titles = [item["title"] for item in response.json()["items"]]
    assert any("Toy Story" in title for title in titles), titles
    horror = post(client, "/search", {"query": "scary ghosts", "k": 5, "categories": ["Horror"]}).json()
    assert len(horror["items"]) == 5


def test_ping(client):
    assert post(client, "/ping", {}).json() == {"ok": True}


# ---------------------------------------------------------------------------------------------- feedback
def test_feedback_counts_at_once_without_retraining(client):
    user = 3
    before = post(client, "/recommend", {"user_id": user, "k": 5}).json()
    top = [item["item_id"] for item in before["items"]]
    assert before["recent_events_used"] == 0
    for item_id in top[:2]:
        assert post(client, "/feedback", {"user_id": user, "item_id": item_id, "event": "like"}).status_code == 200
    assert post(client, "/feedback", {"user_id": user, "item_id": top[2], "event": "dislike"}).status_code == 200
    after = post(client, "/recommend", {"user_id": user, "k": 5}).json()
    assert after["recent_events_used"] == 3 and after["model_version"] == before["model_version"]
    assert not set(top[:3]) & {item["item_id"] for item in after["items"]}
    # the dislike is excluded even when seen items are not
    kept = {
        item["item_id"]
        for item in post(client, "/recommend", {"user_id": user, "k": 100, "exclude_seen": False}).json()["items"]
    }
    assert top[2] not in kept


def test_feedback_makes_an_unknown_user_known(client, catalogue):
    user = 777_001
    liked = catalogue["item_id"].tolist()[20]
    assert post(client, "/feedback", {"user_id": user, "item_id": liked, "event": "like"}).status_code == 200
    body = post(client, "/recommend", {"user_id": user, "k": 5}).json()
    assert body["source"] == "history" and body["fallback"] is False
    assert liked not in {item["item_id"] for item in body["items"]}


def test_feedback_is_idempotent_by_event_id(client, catalogue):
    from components.feedback.store import FeedbackStore

    store = FeedbackStore(f"sqlite:///{client.feedback_db}")
    event = {
        "user_id": 5,
        "item_id": catalogue["item_id"].tolist()[30],
        "event": "rating",
        "value": 4.5,
        "event_id": f"idem-{uuid.uuid4().hex}",
    }
    count = store.count()
    first = post(client, "/feedback", event).json()
    second = post(client, "/feedback", event).json()
    assert first == {"accepted": 1, "new": 1, "duplicates": 0, "event_ids": [event["event_id"]]}
    assert second == {"accepted": 1, "new": 0, "duplicates": 1, "event_ids": [event["event_id"]]}
    assert store.count() == count + 1


def test_feedback_batch_all_or_nothing(client, catalogue):
    from components.feedback.store import FeedbackStore

    store = FeedbackStore(f"sqlite:///{client.feedback_db}")
    items = catalogue["item_id"].tolist()[40:45]
    events = [{"user_id": 6, "item_id": i, "event": "click", "event_id": f"batch-{uuid.uuid4().hex}"} for i in items]
    count = store.count()
    body = post(client, "/feedback_batch", {"events": events}).json()
    assert body["accepted"] == 5 and body["new"] == 5 and body["event_ids"] == [e["event_id"] for e in events]
    assert store.count() == count + 5
    again = post(
        client,
        "/feedback_batch",
        {
            "events": [
                *events[:2],
                {"user_id": 6, "item_id": items[0], "event": "view", "event_id": f"batch-{uuid.uuid4().hex}"},
            ]
        },
    ).json()
    assert again["new"] == 1 and again["duplicates"] == 2
    bad = post(
        client,
        "/feedback_batch",
        {
            "events": [
                {"user_id": 6, "item_id": items[0], "event": "view"},
                {"user_id": 6, "item_id": 10**9, "event": "view"},
            ]
        },
    )
    assert bad.status_code == 404 and str(10**9) in bad.json()["error"]
    assert store.count() == count + 6


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        ("/recommend", {"user_id": 1, "k": 0}, "k"),
        ("/recommend", {"user_id": 1, "k": -3}, "k"),
        ("/recommend", {"user_id": 1, "k": 101}, "k"),
        ("/recommend", {"user_id": 1, "k": "ten"}, "k"),
        ("/recommend", {"user_id": [1], "k": 5}, "user_id"),
        ("/recommend", {"k": 5}, "user_id"),
        ("/recommend", {"user_id": 1, "exclude_seen": "maybe"}, "exclude_seen"),
        # strict numbers and flags: true is not user 1 or k=1, "5" is not k=5, 1 is not true
        ("/recommend", {"user_id": True, "k": 5}, "user_id"),
        ("/recommend", {"user_id": 1, "k": True}, "k"),
        ("/recommend", {"user_id": 1, "k": "5"}, "k"),
        ("/recommend", {"user_id": 1, "k": 5.5}, "k"),
        ("/recommend", {"user_id": 1, "exclude_seen": 1}, "exclude_seen"),
        ("/history", {"user_id": 1, "limit": "5"}, "limit"),
        ("/feedback", {"user_id": 1, "item_id": True, "event": "like"}, "item_id"),
        ("/feedback", {"user_id": 1, "item_id": 1, "event": "rating", "value": True}, "value"),
        ("/feedback", {"user_id": 1, "item_id": 1, "event": "like", "position": "2"}, "position"),
        ("/recommend", {"user_id": 1, "session_item_ids": list(range(201))}, "session_item_ids"),
        ("/recommend", {"user_id": 1, "categories": ["x" * 65]}, "categories"),
        ("/recommend_session", {"item_ids": []}, "item_ids"),
        ("/recommend_session", {"item_ids": list(range(201))}, "item_ids"),
        ("/search", {"query": "q" * 501}, "query"),
        ("/search", {"query": ""}, "query"),
        ("/similar_items", {"item_id": 1, "k": 1000}, "k"),
        ("/feedback", {"user_id": 1, "item_id": 1}, "event"),
        ("/feedback", {"user_id": 1, "event": "like"}, "item_id"),
        ("/feedback", {"item_id": 1, "event": "like"}, "user_id"),
        ("/feedback", {"user_id": 1, "item_id": 1, "event": "shrug"}, "event"),
        ("/feedback", {"user_id": 1, "item_id": 1, "event": "rating", "value": "high"}, "value"),
        ("/feedback_batch", {"events": []}, "events"),
        ("/feedback_batch", {"events": [{"user_id": 1}]}, "events"),
    ],
)
def test_wrong_input_is_a_400_naming_the_field(client, path, payload, field):
    response = post(client, path, payload)
    assert response.status_code == 400, response.text
    no_traceback(response)
    body = response.json()
    fields = [str(part) for detail in body.get("detail", []) for part in detail.get("loc", [])]
    assert field in fields or body.get("field") == field, body


@pytest.mark.parametrize(
    ("payload", "field", "message"),
    [
        ({"user_id": "not-a-number", "k": 5}, "user_id", "not a valid int id"),
        ({"user_id": "1.5", "k": 5}, "user_id", "not a valid int id"),
    ],
)
def test_non_integer_movielens_user_is_a_400(client, payload, field, message):
    response = post(client, "/recommend", payload)
    assert response.status_code == 400 and response.json()["field"] == field and message in response.json()["error"]
    no_traceback(response)


@pytest.mark.parametrize(
    ("payload", "field", "message"),
    [
        ({"user_id": 1, "item_id": 1, "event": "rating"}, "value", "need a value"),
        ({"user_id": 1, "item_id": 1, "event": "rating", "value": 9}, "value", "outside"),
        ({"user_id": 1, "item_id": 1, "event": "like", "timestamp": 100}, "timestamp", "before"),
        ({"user_id": 1, "item_id": 1, "event": "like", "timestamp": 1e15}, "timestamp", "ahead"),
        ({"user_id": "abc", "item_id": 1, "event": "like"}, "user_id", "not valid int ids"),
    ],
)
def test_feedback_semantic_errors_write_nothing(client, payload, field, message):
    from components.feedback.store import FeedbackStore

    store = FeedbackStore(f"sqlite:///{client.feedback_db}")
    count = store.count()
    response = post(client, "/feedback", payload)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field and message in response.json()["error"]
    assert store.count() == count


@pytest.mark.parametrize(
    ("path", "payload", "unknown"),
    [
        ("/similar_items", {"item_id": 987654321}, 987654321),
        ("/similar_items", {"item_id": "no-such-item"}, "no-such-item"),
        ("/recommend_session", {"item_ids": [1, 987654321]}, 987654321),
        ("/recommend", {"user_id": 999_997, "session_item_ids": [987654321]}, 987654321),
        ("/feedback", {"user_id": 1, "item_id": 987654321, "event": "like"}, 987654321),
    ],
)
def test_unknown_item_ids_are_404_naming_the_id(client, path, payload, unknown):
    response = post(client, path, payload)
    assert response.status_code == 404, response.text
    assert str(unknown) in response.json()["error"] and unknown in response.json()["unknown_ids"]


def test_malformed_json_and_wrong_body_types_are_4xx_without_tracebacks(client):
    for body in (b"{not json", b"[1, 2]", b'"text"', b"null"):
        response = client.post("/recommend", content=body, headers={"content-type": "application/json"})
        assert 400 <= response.status_code < 500, (body, response.status_code, response.text)
        no_traceback(response)


def test_request_body_cap(client):
    big = {"user_id": 1, "categories": ["x" * 1000] * 1100}
    response = post(client, "/recommend", big)
    assert response.status_code == 413 and "limit" in response.json()["error"]

    def chunks():
        for _ in range(1100):
            yield b" " * 1024

    streamed = client.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert post(client, "/recommend", {"user_id": 1, "k": 3}).status_code == 200


# ---------------------------------------------------------------------------------------------- admin and metrics
def test_admin_reload_needs_the_right_token(client):
    assert client.post("/admin/reload").status_code == 401
    assert client.post("/admin/reload", headers={"Authorization": "Bearer wrong"}).status_code == 401
    response = client.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert response.status_code == 200 and response.json()["changed"] is False
    assert response.json()["version"] == client.get("/info").json()["model_version"]


def metric(text: str, series: str, **labels: str) -> float:
    """The sum of ``series`` over the samples in a /metrics page whose labels include ``labels``."""
    total = 0.0
    for match in re.finditer(rf"^{re.escape(series)}\{{(.*)\}} (\S+)$", text, flags=re.MULTILINE):
        found = dict(re.findall(r'(\w+)="([^"]*)"', match[1]))
        if all(found.get(name) == value for name, value in labels.items()):
            total += float(match[2])
    return total


def test_metrics_show_requests_latency_version_and_feedback(client, catalogue):
    """BentoML's own request series count every request per endpoint and status (the service keeps
    only its domain series: model version, reloads, feedback written)."""
    requests_total, duration = "bentoml_service_request_total", "bentoml_service_request_duration_seconds"
    ok = {"endpoint": "/recommend", "http_response_code": "200"}
    bad = {"endpoint": "/recommend", "http_response_code": "400"}
    before = client.get("/metrics").text
    post(client, "/recommend", {"user_id": 1, "k": 3})
    post(client, "/recommend", {"user_id": 1, "k": 0})
    post(client, "/feedback", {"user_id": 8, "item_id": catalogue["item_id"].tolist()[50], "event": "view"})
    text = client.get("/metrics").text
    version = client.get("/info").json()["model_version"]
    assert metric(text, requests_total, **ok) == metric(before, requests_total, **ok) + 1
    assert metric(text, requests_total, **bad) == metric(before, requests_total, **bad) + 1
    assert metric(text, f"{duration}_count", **ok) == metric(before, f"{duration}_count", **ok) + 1
    assert metric(text, f"{duration}_sum", **ok) > metric(before, f"{duration}_sum", **ok)
    assert metric(text, f"{duration}_bucket", le="0.05", **ok) >= 1
    assert re.search(rf"lmrecsys_model_version {float(version)}", text)
    assert re.search(r"lmrecsys_feedback_events_written_total [1-9]", text)
    assert "lmrecsys_requests_total" not in text and "lmrecsys_request_seconds" not in text


# ---------------------------------------------------------------------------------------------- the fast lane
def test_fast_lane_answers_exactly_as_bentomls_api_layer(client, catalogue):
    """Every hot endpoint, valid and invalid input alike: the fast lane's status and body equal
    what BentoML's own API layer answers for the same request."""
    from serving.middleware import SERVING

    items = catalogue["item_id"].tolist()
    requests_ = [
        ("/recommend", {"user_id": 1, "k": 5}),
        ("/recommend", {"user_id": 2, "k": 100}),
        ("/recommend", {"user_id": 1, "k": 5, "exclude_seen": False}),
        ("/recommend", {"user_id": 1, "k": 4, "categories": ["Comedy"]}),
        ("/recommend", {"user_id": 99_999_999, "k": 3}),
        ("/recommend", {"user_id": 99_999_999, "k": 3, "session_item_ids": items[:3]}),
        ("/recommend", {"user_id": 1, "k": 1000}),
        ("/recommend", {"user_id": "not-a-number"}),
        ("/recommend", {"k": 3}),
        ("/recommend_session", {"item_ids": items[:2], "k": 3}),
        ("/recommend_session", {"item_ids": [-5], "k": 3}),
        ("/similar_items", {"item_id": items[0], "k": 3}),
        ("/similar_items", {"item_id": -5}),
        ("/history", {"user_id": 1, "limit": 3}),
        ("/feedback", {"user_id": 1, "item_id": -5, "event": "view"}),
        ("/feedback", {"user_id": 1, "item_id": items[0], "event": "rating"}),
        ("/feedback", {"user_id": 1, "item_id": items[0], "event": "shout"}),
        ("/feedback_batch", {"events": []}),
    ]
    instance = SERVING[-1]
    answers = {}
    try:
        for lane in (True, False):
            instance.fast_lane = lane
            for path, payload in requests_:
                response = post(client, path, payload)
                assert (response.headers.get("x-lmrecsys-lane") == "fast") is lane, (path, payload)
                no_traceback(response)
                body = response.json()
                if isinstance(body, dict) and "recommendation_id" in body:  # a fresh id per answer, by design
                    assert body.pop("recommendation_id").startswith("rec-")
                answers.setdefault((path, json.dumps(payload)), []).append((response.status_code, body))
            malformed = client.post("/recommend", content=b"{not json", headers={"content-type": "application/json"})
            answers.setdefault(("/recommend", "malformed"), []).append((malformed.status_code, malformed.json()))
    finally:
        instance.fast_lane = True
    statuses = set()
    for key, (fast, bentoml_layer) in answers.items():
        assert fast == bentoml_layer, key
        statuses.add(fast[0])
    assert {200, 400, 404} <= statuses  # the list really covers answers and both kinds of error


def test_other_content_types_go_through_bentoml(client):
    response = client.post(
        "/recommend", content=b"user_id=1", headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert "x-lmrecsys-lane" not in response.headers
    assert response.status_code < 500
    assert post(client, "/ping", {}).headers.get("x-lmrecsys-lane") is None  # not a hot endpoint


def test_requests_leave_no_timers_behind(client):
    """BentoML's request timeout used to leave one live timer per request for 60 s (hundreds of
    thousands under load, each walked by every full garbage collection); the service cancels it."""
    import asyncio
    import gc

    for _ in range(300):
        post(client, "/recommend", {"user_id": 1, "k": 3})
    gc.collect()
    live = [o for o in gc.get_objects() if isinstance(o, asyncio.TimerHandle) and not o.cancelled()]
    assert len(live) < 50, f"{len(live)} request timers still scheduled"


def test_fast_lane_refuses_endpoints_it_cannot_serve_faithfully():
    from serving.middleware import FAST_LANE_ENDPOINTS, FastLane
    from serving.service import RecommenderService

    assert len(FastLane(None, RecommenderService).routes) == len(FAST_LANE_ENDPOINTS)
    with pytest.raises(TypeError, match="'search'"):  # a sync endpoint: BentoML runs it in a thread pool
        FastLane(None, RecommenderService, ("search",))


def test_micro_batched_answers_equal_unbatched_ones(client, catalogue):
    """Requests the ranking cache cannot answer go through the micro-batcher; sent concurrently,
    they form batches, and every answer equals the one the service gives with batching off."""
    from concurrent.futures import ThreadPoolExecutor

    from serving.middleware import SERVING

    items = catalogue["item_id"].tolist()
    requests_ = [("/recommend", {"user_id": user, "k": 10, "exclude_seen": False}) for user in range(1, 25)]
    requests_ += [("/recommend", {"user_id": user, "k": 5, "categories": ["Comedy"]}) for user in range(1, 9)]
    requests_ += [("/recommend_session", {"item_ids": items[i : i + 3], "k": 5}) for i in range(0, 24, 3)]
    instance = SERVING[-1]
    batcher = instance.batcher
    assert batcher is not None  # on by default
    before = batcher.batches
    with ThreadPoolExecutor(16) as pool:
        batched = list(pool.map(lambda request: post(client, *request), requests_))
    assert batcher.batches - before < len(requests_)  # some requests shared a model call
    try:
        instance.batcher = None
        alone = [post(client, *request) for request in requests_]
    finally:
        instance.batcher = batcher
    for request, a, b in zip(requests_, batched, alone):
        assert a.status_code == b.status_code == 200, (request, a.text)
        got, want = a.json(), b.json()
        assert [i["item_id"] for i in got["items"]] == [i["item_id"] for i in want["items"]], request
        assert [i["explanation"] for i in got["items"]] == [i["explanation"] for i in want["items"]], request
        assert got["items"][0]["score"] == pytest.approx(want["items"][0]["score"], rel=1e-5, abs=1e-6)
