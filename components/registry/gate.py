"""The promotion gate: the champion/challenger comparison that decides whether ``champion`` moves.

A new version gets alias ``challenger``; :func:`promote_if_better` moves ``champion`` to it only
when every condition holds, and records its decision as ``gate.<key>`` tags on the version.
Humans move ``champion`` through :mod:`components.registry.history` instead.
"""

from __future__ import annotations

import logging
import math

from mlflow.tracking import MlflowClient

from components.registry.history import move_champion, read_events, reconcile
from components.registry.integrity import version_integrity_problem
from components.registry.locks import promotion_lock

# Models logged before the split pickled their class as components.registry.gate.RecommenderPyfunc.
from components.registry.pyfunc import RecommenderPyfunc  # noqa: F401
from components.registry.tracking import CHALLENGER, CHAMPION, aliased_version, plain_text, registry_errors, utc_now
from components.settings import Settings

log = logging.getLogger(__name__)


def record_decision(client: MlflowClient, name: str, version: str, decision: dict) -> None:
    """Write a gate decision onto the version as ``gate.<key>`` tags."""
    for key, value in decision.items():
        client.set_model_version_tag(name, version, f"gate.{key}", str(value))


def _set_challenger(client: MlflowClient, name: str, version: str) -> None:
    """Point ``challenger`` at ``version`` unless a newer version already holds it."""
    current = aliased_version(client, name, CHALLENGER)
    if current is None or int(version) >= int(current):
        client.set_registered_model_alias(name, CHALLENGER, version)


def _mark_abandoned(client: MlflowClient, name: str, decided_version: str) -> list[str]:
    """Tag older versions that never reached the gate (their run died after registering)."""
    marked = []
    aliased = {str(v) for v in (client.get_registered_model(name).aliases or {}).values()}
    for found in client.search_model_versions(f"name='{name}'"):
        tags = found.tags or {}
        undecided = "gate.decision" not in tags and "human.action" not in tags
        if int(found.version) < int(decided_version) and undecided and str(found.version) not in aliased:
            record_decision(
                client,
                name,
                str(found.version),
                {
                    "decision": "abandoned",
                    "reason": "registered but never reached the gate (its run stopped); "
                    f"version {decided_version} was decided after it",
                    "decided_at": utc_now(),
                    "by": "gate",
                },
            )
            marked.append(str(found.version))
    return marked


def _promotion_reason(current: str | None, champion_unreadable: str | None) -> str:
    if current is None:
        return "first champion"
    if champion_unreadable:
        return (
            f"version {current} could not be read ({champion_unreadable}), so it could be neither compared nor served"
        )
    return f"at least as good as version {current}"


def _staleness(current: str | None, expected_champion: str | None) -> str | None:
    """Why the challenger's comparison no longer holds, or None when it still does."""
    if current is not None and expected_champion is not None and current != str(expected_champion):
        return f"the champion moved from version {expected_champion} to {current} after evaluation; re-run to compare"
    if current is not None and expected_champion is None:
        return f"version {current} became champion after evaluation; re-run to compare"
    return None


def _metric_reasons(
    settings: Settings, current: str | None, challenger_metric, champion_metric, popularity_metric
) -> list[str]:
    """Why the challenger's metric fails the gate (empty when it passes)."""
    metric, tolerance = settings.registry.gate_metric, settings.registry.tolerance
    if challenger_metric is None or not math.isfinite(challenger_metric):
        return [f"the challenger's validation {metric} is {challenger_metric} (no evaluation users?)"]
    if current is not None and champion_metric is not None and challenger_metric < champion_metric - tolerance:
        return [
            f"validation {metric} {challenger_metric:.4f} is below the champion's {champion_metric:.4f} "
            f"(tolerance {tolerance})"
        ]
    if popularity_metric is not None and challenger_metric <= popularity_metric:
        return [f"validation {metric} {challenger_metric:.4f} does not beat popularity's {popularity_metric:.4f}"]
    return []


def _decide(
    client: MlflowClient,
    settings: Settings,
    version: str,
    reasons: list[str],
    measured: dict,
    expected_champion: str | None,
    champion_unreadable: str | None,
    move: bool = True,
) -> dict:
    """Under the promotion lock: re-check staleness, record the decision, move ``champion`` if it won
    (with ``move`` False, a winner against a champion is recorded as ``online`` and the alias stays).

    ``measured`` holds what was found outside the lock: ``challenger_metric``, ``champion_metric``
    and ``smoke_test`` (the smoke test's message).
    """
    name = settings.registry.model_name
    metric = settings.registry.gate_metric
    events = read_events(client, name)
    reconcile(client, name, events)
    current = aliased_version(client, name, CHAMPION)  # re-read: another gate may have moved it meanwhile
    if current == version:
        return {"decision": "promoted", "reason": f"version {version} is already the champion", "metric": metric}
    stale = _staleness(current, expected_champion)
    if stale:
        reasons.insert(0, stale)
    promoted = not reasons
    reason = "; ".join(reasons) if reasons else _promotion_reason(current, champion_unreadable)
    if promoted and measured.get("erasure"):
        overridden = measured.get("overridden") or []
        reason = f"erasure: {measured['erasure']}" + (
            f" (promoted although {'; '.join(overridden)})" if overridden else ""
        )
    online = promoted and not move and current is not None
    if online:
        reason = f"passed the offline gate ({reason}); sent to an online experiment against version {current}"
    decision = {
        "decision": "online" if online else "promoted" if promoted else "rejected",
        "reason": reason,
        "metric": metric,
        "challenger_metric": f"{measured['challenger_metric']:.6f}",
        "champion_metric": "none" if measured["champion_metric"] is None else f"{measured['champion_metric']:.6f}",
        "previous_champion": "none" if current is None else current,
        "smoke_test": measured["smoke_test"],
        "decided_at": utc_now(),
        "by": "gate",
        **({"erasure": measured["erasure"]} if measured.get("erasure") else {}),
    }
    record_decision(client, name, version, decision)
    if promoted and not online:
        move_champion(
            client,
            name,
            version,
            {
                "action": "promoted",
                "by": "gate",
                "at": decision["decided_at"],
                "previous": current,
                "reason": decision["reason"],
                "metric": metric,
                "challenger_metric": decision["challenger_metric"],
                "champion_metric": decision["champion_metric"],
            },
        )
    _mark_abandoned(client, name, version)
    log.info("version %s %s: %s", version, decision["decision"], decision["reason"])
    return decision


@registry_errors
def promote_if_better(
    client: MlflowClient,
    settings: Settings,
    version: str,
    challenger_metric: float,
    champion_metric: float | None,
    popularity_metric: float | None,
    model_uri: str,
    *,
    expected_champion: str | None = None,
    smoke_user=None,
    champion_unreadable: str | None = None,
    erasure: str | None = None,
    move: bool = True,
) -> dict:
    """The gate: move ``champion`` to ``version`` only if every condition holds; record why.

    ``erasure`` (what the run erased) promotes a challenger that trained without forgotten users even
    when its metric is worse: the champion trained on them and must stop being served. Its metric must
    still be finite, the comparison fresh and the smoke test passed; the decision says what it overrode.

    ``move`` False (``registry.promotion: online``) records a passing challenger as ``online`` instead of
    moving ``champion`` (a first champion is still promoted): the caller starts an online experiment.

    ``expected_champion`` is the version the challenger was compared with; if the alias moved
    since, the comparison is stale and the challenger is rejected rather than promoted blindly.
    The metric checks and the smoke test run outside the promotion lock; the staleness check,
    the decision tags and the alias move run under it, so two racing gates cannot both win.
    """
    from components.registry import smoke  # on use: see components/registry/smoke.py

    name = settings.registry.model_name
    version = str(version)
    with promotion_lock(settings):
        _set_challenger(client, name, version)
    current = aliased_version(client, name, CHAMPION)
    if current == version:
        metric = settings.registry.gate_metric
        return {"decision": "promoted", "reason": f"version {version} is already the champion", "metric": metric}
    reasons = _metric_reasons(settings, current, challenger_metric, champion_metric, popularity_metric)
    overridden = []
    if erasure and reasons and challenger_metric is not None and math.isfinite(challenger_metric):
        overridden, reasons = reasons, []
    stale_before = _staleness(current, expected_champion)
    if reasons or stale_before:
        smoke_ok, smoke_msg = False, "skipped"
    elif problem := version_integrity_problem(client, name, version):  # checked before anything loads it
        smoke_ok, smoke_msg = False, f"smoke test failed: {problem}"
    else:
        smoke_ok, smoke_msg = smoke.smoke_test(model_uri, plain_text(settings.tracking_uri), smoke_user)
    if not reasons and not stale_before and not smoke_ok:
        reasons.append(smoke_msg)
    measured = {"challenger_metric": challenger_metric, "champion_metric": champion_metric, "smoke_test": smoke_msg}
    measured.update(erasure=erasure, overridden=overridden)
    with promotion_lock(settings):
        return _decide(client, settings, version, reasons, measured, expected_champion, champion_unreadable, move)
