"""Hostile clients: a battery of bad requests by kind, and schemathesis over the whole OpenAPI schema.

``hostile_cases(n)`` yields ``n`` requests cycling through the kinds below, each with a fresh
random choice (seeded, so a run can be repeated); ``run_battery`` sends them from a few threads and
counts the answers per kind. A healthy service answers every one with a 2xx or a 4xx.
"""

from __future__ import annotations

import json
import random
import threading
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests

JSON = {"content-type": "application/json"}
ENDPOINTS = ("/recommend", "/recommend_session", "/search", "/similar_items", "/history", "/feedback")
CONTROL = ["\x00", "a\x00b", "\x01\x02", "\x1b[31mred", "line\nbreak", "\x7f", "\u202eevil", "\ufeff", "🎬" * 40]


@dataclass(frozen=True)
class Case:
    kind: str
    method: str
    path: str
    body: bytes | None
    headers: dict = field(default_factory=lambda: dict(JSON))


def _json(kind: str, path: str, payload) -> Case:
    return Case(kind, "POST", path, json.dumps(payload, allow_nan=True).encode())


def _raw(kind: str, path: str, text: str | bytes, headers: dict | None = None) -> Case:
    body = text.encode() if isinstance(text, str) else text
    return Case(kind, "POST", path, body, dict(JSON) if headers is None else headers)


def malformed_json(rng: random.Random) -> Case:
    bodies = [
        '{"user_id": 1',
        "not json at all",
        "",
        "[]",
        "null",
        '{"user_id": }',
        '{"user_id": 1,,}',
        b"\xff\xfe\x00{",
        "[" * 5000 + "]" * 5000,
        '{"a":' * 3000 + "1" + "}" * 3000,
        '{"user_id": 1}{"user_id": 2}',
        '{"user_id": "\\ud800"}',
        '{"user_id": 1, "user_id": [2]}',
    ]
    return _raw("malformed JSON", rng.choice(ENDPOINTS), rng.choice(bodies))


def wrong_types(rng: random.Random) -> Case:
    bad = [[1], {"a": 1}, True, None, 1.5, "", [], float("nan"), float("inf")]
    path = rng.choice(["/recommend", "/feedback", "/similar_items", "/search", "/recommend_session"])
    payload = {
        "/recommend": {"user_id": rng.choice(bad), "k": rng.choice(["ten", -1, 0, 1.5, None, [3], 10**30])},
        "/feedback": {
            "user_id": 1,
            "item_id": rng.choice(bad),
            "event": rng.choice([5, None, "rating", "explode", ["like"]]),
            "value": rng.choice(["high", float("nan"), float("inf"), -1e308, [4]]),
            "timestamp": rng.choice(["now", float("nan"), -1, 1e20, {}]),
            "event_id": rng.choice([123, [], {}, ""]),
        },
        "/similar_items": {"item_id": rng.choice(bad), "k": rng.choice(["5", {}])},
        "/search": {"query": rng.choice([5, None, [], {"q": 1}]), "k": rng.choice([0, "x"])},
        "/recommend_session": {"item_ids": rng.choice(["1,2", 7, [None], [[1]], {}])},
    }[path]
    return _json("wrong types", path, payload)


def huge_ids(rng: random.Random) -> Case:
    big = rng.choice([10**30, -(10**30), 2**63, 2**64, -(2**63) - 1, "9" * 5000, "x" * 128, "x" * 129, 10**400])
    path = rng.choice(["/recommend", "/feedback", "/similar_items", "/history", "/recommend_session"])
    payload = {"user_id": big, "item_id": big, "item_ids": [big], "event": "view", "k": 5}
    return _json("huge ids", path, payload)


def control_characters(rng: random.Random) -> Case:
    text = rng.choice(CONTROL)
    path = rng.choice(["/feedback", "/recommend", "/search", "/history"])
    payload = {"user_id": text, "item_id": 1, "event": "view", "event_id": rng.choice([text, f"ctl-{text}"])}
    if path == "/search":
        payload = {"query": text * rng.choice([1, 3])}
    return _json("NUL and control characters", path, payload)


def unknown_items(rng: random.Random) -> Case:
    item = rng.choice([999_999, 0, -5, 123_456_789])
    path = rng.choice(["/feedback", "/similar_items", "/recommend_session", "/recommend"])
    payload = {
        "/feedback": {"user_id": 1, "item_id": item, "event": "like"},
        "/similar_items": {"item_id": item},
        "/recommend_session": {"item_ids": [1, item]},
        "/recommend": {"user_id": 99_000_000 + rng.randrange(1000), "session_item_ids": [item]},
    }[path]
    return _json("unknown items", path, payload)


def new_users(rng: random.Random) -> Case:
    user = 10_000_000 + rng.randrange(10**6)
    if rng.random() < 0.5:
        return _json("floods of new users", "/recommend", {"user_id": user, "k": rng.randrange(1, 101)})
    event = rng.choice(["view", "click", "like", "dislike", "purchase"])
    return _json(
        "floods of new users", "/feedback", {"user_id": user, "item_id": 1 + rng.randrange(30), "event": event}
    )


def duplicates(rng: random.Random) -> Case:
    event = {"user_id": 7, "item_id": 3, "event": "rating", "value": 4.0, "event_id": f"storm-{rng.randrange(5)}"}
    if rng.random() < 0.2:
        return _json("duplicate storms", "/feedback_batch", {"events": [event] * rng.choice([2, 100, 1000])})
    return _json("duplicate storms", "/feedback", event)


def batch_limits(rng: random.Random) -> Case:
    one = {"user_id": 1, "item_id": 1, "event": "view"}
    choice = rng.randrange(7)
    if choice == 0:
        return _json("batch-limit abuse", "/feedback_batch", {"events": [one] * 1001})
    if choice == 1:
        return _json("batch-limit abuse", "/feedback_batch", {"events": []})
    if choice == 2:  # over the 1 MiB body cap
        return _json("batch-limit abuse", "/feedback_batch", {"events": [dict(one, event_id="p" * 120)] * 9000})
    if choice == 3:
        return _json("batch-limit abuse", "/recommend", {"user_id": 1, "k": rng.choice([101, 10**6])})
    if choice == 4:
        return _json("batch-limit abuse", "/recommend", {"user_id": 1, "categories": ["Comedy"] * 21})
    if choice == 5:
        return _json("batch-limit abuse", "/recommend_session", {"item_ids": [1] * 201})
    return _json("batch-limit abuse", "/search", {"query": "q" * 501})


def wrong_protocol(rng: random.Random) -> Case:
    choice = rng.randrange(4)
    if choice == 0:
        return Case("wrong methods and content types", "GET", rng.choice(ENDPOINTS), None, {})
    if choice == 1:
        return _raw("wrong methods and content types", "/recommend", '{"user_id": 1}', {"content-type": "text/plain"})
    if choice == 2:
        return _raw(
            "wrong methods and content types",
            "/feedback",
            "user_id=1",
            {"content-type": "application/x-www-form-urlencoded"},
        )
    return _json("wrong methods and content types", rng.choice(["/nope", "/admin/reload", "/feedback/../admin"]), {})


KINDS = [malformed_json, wrong_types, huge_ids, control_characters, unknown_items, new_users, duplicates, batch_limits]
KINDS.append(wrong_protocol)


def hostile_cases(n: int, seed: int = 16):
    rng = random.Random(seed)
    for i in range(n):
        yield KINDS[i % len(KINDS)](rng)


@dataclass
class BatteryResult:
    by_kind: dict = field(default_factory=lambda: defaultdict(Counter))
    server_errors: list = field(default_factory=list)
    connection_errors: int = 0

    @property
    def total(self) -> int:
        return sum(sum(c.values()) for c in self.by_kind.values())

    def count(self, low: int, high: int) -> int:
        return sum(n for c in self.by_kind.values() for status, n in c.items() if low <= status < high)


def run_battery(base: str, n: int, threads: int = 8, seed: int = 16) -> BatteryResult:
    """Send ``n`` hostile requests to ``base``; a status 0 is a connection error or a timeout."""
    result, lock, local = BatteryResult(), threading.Lock(), threading.local()

    def send(case: Case) -> None:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        try:
            response = session.request(case.method, base + case.path, data=case.body, headers=case.headers, timeout=60)
            status, text = response.status_code, response.text[:300]
        except requests.RequestException as exc:
            status, text, local.session = 0, str(exc)[:300], None
        with lock:
            result.by_kind[case.kind][status] += 1
            if status >= 500 or status == 0:
                result.server_errors.append(
                    f"{case.kind}: {case.method} {case.path} {case.body[:200]!r} -> {status} {text}"
                )
                result.connection_errors += status == 0

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(send, hostile_cases(n, seed)))
    return result


def run_schemathesis(base: str, max_examples: int) -> tuple[int, list[str]]:
    """schemathesis over every operation of ``base``'s OpenAPI schema (``/docs.json``) except the admin
    routes; returns (cases sent, the 5xx answers)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(f"{base}/docs.json")
    failures: list[str] = []
    checked = 0
    for operation in schema.get_all_operations():
        operation = operation.ok()
        if operation.path.startswith("/admin"):
            continue

        @settings(max_examples=max_examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def fuzz(case):
            nonlocal checked
            response = case.call(base_url=base, timeout=60)
            checked += 1
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.path} {case.body!r} -> {response.status_code} {response.text[:300]}"
                )

        fuzz()
    return checked, failures
