"""The champion history: the promotion log, and what humans call (history, versions, rollback, force).

Every move of ``champion`` is appended to a durable promotion log kept as tags on the registered
model (``champion_log.000001``, ...), from which :func:`champion_history` answers "which version
was champion when, and why". Moves happen under the promotion lock
(:mod:`components.registry.locks`), so racing moves leave exactly one champion and a gap-free log.
"""

from __future__ import annotations

import getpass
import json
import logging
import time

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from components.errors import RegistryError
from components.registry.integrity import version_integrity_problem
from components.registry.locks import promotion_lock
from components.registry.tracking import CHAMPION, aliased_version, configure, plain_text, registry_errors, utc_now
from components.settings import Settings

log = logging.getLogger(__name__)
LOG_TAG_PREFIX = "champion_log."
"""Registered-model tags ``champion_log.<seq>`` hold one JSON event per move of ``champion``."""
MAX_REASON_CHARS = 2000


# -- the promotion log -----------------------------------------------------------------------------


def read_events(client: MlflowClient, name: str) -> list[dict]:
    """The recorded moves of ``champion``, oldest first (empty when the model does not exist)."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    events = []
    for key, value in (model.tags or {}).items():
        if key.startswith(LOG_TAG_PREFIX):
            try:
                events.append(json.loads(value))
            except json.JSONDecodeError:
                events.append({"seq": int(key[len(LOG_TAG_PREFIX) :]), "action": "unreadable", "raw": value})
    return sorted(events, key=lambda event: int(event["seq"]))


def append_event(client: MlflowClient, name: str, events: list[dict], event: dict) -> dict:
    """Append one event to the log; the caller holds the promotion lock, so seq is unique."""
    seq = (int(events[-1]["seq"]) if events else 0) + 1
    event = {"seq": seq, "at": utc_now(), **event}
    event["reason"] = str(event.get("reason", ""))[:MAX_REASON_CHARS]
    client.set_registered_model_tag(name, f"{LOG_TAG_PREFIX}{seq:06d}", json.dumps(event, sort_keys=True))
    events.append(event)
    return event


def _last_logged_version(events: list[dict]) -> str | None:
    return str(events[-1]["version"]) if events and events[-1].get("version") is not None else None


def reconcile(client: MlflowClient, name: str, events: list[dict]) -> None:
    """Record an alias move the log does not know about (interrupted move, or set by hand in the UI)."""
    current = aliased_version(client, name, CHAMPION)
    logged = _last_logged_version(events)
    if current != logged:
        append_event(
            client,
            name,
            events,
            {
                "action": "untracked",
                "by": "unknown",
                "version": current,
                "previous": logged,
                "reason": "the champion alias was "
                + ("removed" if current is None else f"moved to version {current}")
                + " outside a recorded promotion (an interrupted promotion, or a change made by hand)",
            },
        )


def _champion_stack(events: list[dict]) -> list[str]:
    """Replay the log into the chain of champions that rollback walks back along."""
    stack: list[str] = []
    for event in events:
        version = event.get("version")
        if event.get("action") == "rollback":
            while stack and stack[-1] != str(version):
                stack.pop()
            if not stack and version is not None:
                stack.append(str(version))
        elif version is None:
            stack.clear()  # the alias was removed: nothing before it is a champion to return to
        elif not stack or stack[-1] != str(version):
            stack.append(str(version))
    return stack


def move_champion(client: MlflowClient, name: str, version: str, event: dict) -> dict:
    """Move ``champion`` to ``version`` and log why; the caller holds the lock and reconciled."""
    events = read_events(client, name)
    client.set_registered_model_alias(name, CHAMPION, version)
    recorded = append_event(client, name, events, {"version": str(version), **event})
    client.set_model_version_tag(name, version, "champion_since", recorded["at"])
    return recorded


# -- history, rollback and forced promotion (what the CLI calls) -----------------------------------


def _require_reason(reason: str, what: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise ValueError(
            f"{what} needs a reason (for example --reason 'CTR dropped after v7'); it is recorded in the history"
        )
    return reason


@registry_errors
def champion_history(settings: Settings) -> list[dict]:
    """Every move of ``champion``, oldest first: which version, since and until when, by whom, why.

    Each entry is a promotion-log event (``seq``, ``at``, ``action`` in promoted / forced /
    rollback / untracked, ``by`` in gate / human / unknown, ``version``, ``previous``, ``reason``
    and, for the gate, the metrics) plus ``until`` (the next move's time, or None), ``current``
    and ``retired`` (why the version was retired, e.g. ``erasure``, or None). An alias moved
    outside the log appears as an ``untracked`` entry that is not yet recorded (``recorded``
    False); the next promotion or rollback records it.
    """
    client = configure(settings)
    name = settings.registry.model_name
    events = [{**event, "recorded": True} for event in read_events(client, name)]
    current = aliased_version(client, name, CHAMPION)
    logged = _last_logged_version(events)
    if current != logged:
        events.append(
            {
                "seq": None,
                "at": None,
                "action": "untracked",
                "by": "unknown",
                "version": current,
                "previous": logged,
                "reason": "the champion alias differs from the last recorded move",
                "recorded": False,
            }
        )
    retired = {}
    if events:
        retired = {
            str(mv.version): (mv.tags or {}).get("retired") for mv in client.search_model_versions(f"name = '{name}'")
        }
    for index, event in enumerate(events):
        event["until"] = events[index + 1]["at"] if index + 1 < len(events) else None
        event["current"] = index == len(events) - 1 and current is not None and str(event.get("version")) == current
        event["retired"] = retired.get(str(event.get("version")))  # e.g. "erasure": no rollback reaches it
    return events


def _version_row(mv, aliases: dict[str, list[str]]) -> dict:
    """One row of :func:`list_versions`."""
    tags = mv.tags or {}
    created = mv.creation_timestamp
    return {
        "version": str(mv.version),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created / 1000)) if created else None,
        "aliases": sorted(aliases.get(str(mv.version), [])),
        "run_id": mv.run_id,
        "snapshot_id": tags.get("snapshot_id"),
        "model_kind": tags.get("model_kind"),
        "decision": tags.get("gate.decision", "undecided"),
        "reason": tags.get("gate.reason"),
        "decided_at": tags.get("gate.decided_at"),
        "metric": tags.get("gate.metric"),
        "challenger_metric": tags.get("gate.challenger_metric"),
        "champion_metric": tags.get("gate.champion_metric"),
        "champion_since": tags.get("champion_since"),
        "human_action": tags.get("human.action"),
        "human_reason": tags.get("human.reason"),
        "rolled_back_at": tags.get("rolled_back_at"),
        "retired": tags.get("retired"),
        "retired_at": tags.get("retired_at"),
    }


@registry_errors
def list_versions(settings: Settings) -> list[dict]:
    """Every registered version, oldest first, with its aliases, lineage and gate decision."""
    client = configure(settings)
    name = settings.registry.model_name
    try:
        found = client.search_model_versions(f"name='{name}'")
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    # search results carry no aliases on every store; the registered model has them all
    aliases: dict[str, list[str]] = {}
    for alias, alias_version in (client.get_registered_model(name).aliases or {}).items() if found else ():
        aliases.setdefault(str(alias_version), []).append(alias)
    return [_version_row(mv, aliases) for mv in sorted(found, key=lambda v: int(v.version))]


def _tag_human_action(client: MlflowClient, name: str, version: str, action: str, reason: str, at: str) -> None:
    tags = {"action": action, "reason": reason[:MAX_REASON_CHARS], "at": at, "by": "human", "user": _user()}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, f"human.{key}", value)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def _rollback_target(client: MlflowClient, name: str, events: list[dict], current: str) -> str:
    """The newest earlier champion that still exists; RegistryError when there is none."""
    stack = _champion_stack(events)
    while stack and stack[-1] == current:
        stack.pop()
    while stack:
        candidate = stack.pop()
        try:
            found = client.get_model_version(name, candidate)
            if (found.tags or {}).get("retired"):
                log.warning(
                    "previous champion version %s was retired (%s); rolling back past it",
                    candidate,
                    found.tags["retired"],
                )
                continue
            return candidate
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            log.warning("previous champion version %s was deleted; rolling back past it", candidate)
    raise RegistryError(
        f"version {current} of {name!r} has no previous champion to roll back to "
        "(it is the first in the history); use promote --version N --force to pick one"
    )


@registry_errors
def rollback(settings: Settings, reason: str) -> dict:
    """Move ``champion`` back to the version that held it before the current one.

    Rolling back again walks further back along the chain of champions. Raises RegistryError
    when there is no champion or no earlier champion to return to (the alias is left as is).
    Returns the recorded event: ``version`` (the new champion), ``previous`` (the one rolled back
    from), ``reason``, ``by`` = human, ``at``, ``seq``.
    """
    reason = _require_reason(reason, "rollback")
    client = configure(settings)
    name = settings.registry.model_name
    with promotion_lock(settings):
        events = read_events(client, name)
        reconcile(client, name, events)
        current = aliased_version(client, name, CHAMPION)
        if current is None:
            raise RegistryError(
                f"{name!r} has no champion, so there is nothing to roll back; use promote --version N --force"
            )
        target = _rollback_target(client, name, events, current)
        if problem := version_integrity_problem(client, name, target):
            raise RegistryError(f"refusing to roll back to version {target} of {name!r}: {problem}")
        event = move_champion(
            client,
            name,
            target,
            {
                "action": "rollback",
                "by": "human",
                "user": _user(),
                "previous": current,
                "reason": reason,
            },
        )
        _tag_human_action(client, name, target, "rollback", reason, event["at"])
        client.set_model_version_tag(name, current, "rolled_back_at", event["at"])
        client.set_model_version_tag(name, current, "rolled_back_reason", reason[:MAX_REASON_CHARS])
    log.warning("champion of %s rolled back from version %s to %s: %s", name, current, target, reason)
    return event


@registry_errors
def servable(settings: Settings, client, version: str) -> tuple[bool, str]:
    """``(ok, message)``: whether ``version`` can be served. Its bundle must pass the ``bundle.sha256``
    check, then the smoke test (a fresh process loads and queries it); the message says why not, or
    what the smoke test answered."""
    from components.registry import smoke  # on use: see components/registry/smoke.py

    name = settings.registry.model_name
    problem = version_integrity_problem(client, name, version)
    if problem:
        return False, problem
    return smoke.smoke_test(f"models:/{name}/{version}", plain_text(settings.tracking_uri))


def force_promote(settings: Settings, version: str | int, reason: str) -> dict:
    """Make ``version`` the champion without the metric comparison, recorded as forced by a human.

    The load-and-predict smoke test still runs (in a fresh process): a model that cannot load
    would take serving down, which no reason justifies. Raises RegistryError for an unknown
    version or a failed smoke test; returns the recorded event (``changed`` False and no new
    event when the version already is the champion).
    """
    reason = _require_reason(reason, "a forced promotion")
    client = configure(settings)
    name = settings.registry.model_name
    version = str(version)
    try:
        target = client.get_model_version(name, version)
    except MlflowException as exc:
        raise RegistryError(f"{name!r} has no version {version}: {exc.message}") from exc
    if aliased_version(client, name, CHAMPION) == version:
        return {"changed": False, "version": version, "reason": f"version {version} is already the champion"}
    ok, message = servable(settings, client, version)
    if not ok:
        raise RegistryError(f"refusing to force version {version} of {name!r}: {message} (source {target.source})")
    with promotion_lock(settings):
        events = read_events(client, name)
        reconcile(client, name, events)
        current = aliased_version(client, name, CHAMPION)
        if current == version:
            return {"changed": False, "version": version, "reason": f"version {version} is already the champion"}
        event = move_champion(
            client,
            name,
            version,
            {
                "action": "forced",
                "by": "human",
                "user": _user(),
                "previous": current,
                "reason": reason,
                "smoke_test": message,
            },
        )
        _tag_human_action(client, name, version, "forced", reason, event["at"])
    log.warning("version %s of %s force-promoted over %s: %s", version, name, current, reason)
    return {"changed": True, **event}
