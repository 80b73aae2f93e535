"""The decision: promote the challenger, stop the experiment, or carry on; and acting on it.

A decision is taken on the statistics (``components.experiments.stats``) in this order: a broken
guardrail stops the experiment; with at least ``min_impressions`` (impressions per arm in split mode,
interleaved impressions, each showing both arms, in interleave mode), a significant mSPRT promotes a
better challenger or stops a worse one; past ``max_days`` the experiment stops without a winner.
Acting holds the registry's promotion lock and re-reads the experiment, so two deciders (two replicas,
or a replica and a human) act once: the challenger becomes champion through the registry's promotion
log with the reason ``online experiment ID``, and either way both versions get ``experiment.*`` tags
and ``models history`` gets an entry.
"""

from __future__ import annotations

import logging
import time

from components.experiments.records import ExperimentError, tag_versions
from components.experiments.stats import experiment_stats, guardrail_breach
from components.feedback.store import FeedbackStore
from components.registry.history import append_event, move_champion, read_events, reconcile
from components.registry.locks import promotion_lock
from components.registry.tracking import CHAMPION, aliased_version, configure, utc_now
from components.settings import Settings

log = logging.getLogger(__name__)


def current_stats(
    settings: Settings, experiment: dict, store: FeedbackStore | None = None, with_series: bool = True
) -> dict:
    own = store is None
    store = FeedbackStore(settings.feedback_url) if own else store
    try:
        impressions = store.impression_frame(experiment["experiment_id"])
        attributions = store.attribution_frame(experiment["experiment_id"])
    finally:
        if own:
            store.close()
    return experiment_stats(experiment, impressions, attributions, settings.experiments, with_series)


def decide(settings: Settings, experiment: dict, stats: dict, now: float | None = None) -> tuple[str, str]:
    """(``promote`` | ``stop`` | ``continue``, why)."""
    config, now = settings.experiments, time.time() if now is None else now
    breach = guardrail_breach(stats, config)
    if breach:
        return "stop", breach
    test = stats["test"]
    units = stats["decisive_units"]
    if stats["sample"] >= config.min_impressions and test["significant"] and test["difference"]:
        low, high = test["interval"]
        direction = "better" if test["difference"] > 0 else "worse"
        detail = (
            f"the challenger is {direction} on {experiment['metric']}: difference {test['difference']:+.4f} "
            f"[{low:+.4f}, {high:+.4f}], always-valid p {test['always_valid_p']:.4f} < alpha {config.alpha}, "
            f"{units} decisive units"
        )
        return ("promote" if test["difference"] > 0 else "stop"), detail
    age_days = (now - float(experiment["created_at"])) / 86_400
    if age_days >= float(experiment["max_days"]):
        return (
            "stop",
            f"no decision within {experiment['max_days']:g} days (always-valid p {test['always_valid_p']:.4f})",
        )
    return "continue", f"{units} decisive units, always-valid p {test['always_valid_p']:.4f}"


def _summary(stats: dict) -> dict:
    return {key: stats[key] for key in ("arms", "test", "decisive_units", "sample")}


def act(settings: Settings, experiment: dict, action: str, reason: str, stats: dict, by: str = "experiment") -> dict:
    """Promote or stop, once: under the promotion lock, only while the experiment still runs."""
    if action not in ("promote", "stop"):
        raise ExperimentError(f"unknown action {action!r}")
    client = configure(settings)
    name, exp_id = settings.registry.model_name, experiment["experiment_id"]
    store = FeedbackStore(settings.feedback_url)
    try:
        with promotion_lock(settings):
            fresh = [e for e in store.experiments(model_name=name) if e["experiment_id"] == exp_id]
            if not fresh or fresh[0]["state"] != "running":
                state = fresh[0]["state"] if fresh else "missing"
                return {"changed": False, "experiment_id": exp_id, "state": state}
            events = read_events(client, name)
            reconcile(client, name, events)
            current = aliased_version(client, name, CHAMPION)
            champion, challenger = experiment["champion_version"], experiment["challenger_version"]
            if action == "promote" and current not in (champion, challenger):
                action, reason = "stop", f"the champion moved to version {current} during the experiment; {reason}"
            full_reason = f"online experiment {exp_id}: {reason}"
            if action == "promote" and current != challenger:
                move_champion(
                    client,
                    name,
                    challenger,
                    {"action": "promoted", "by": by, "previous": current, "reason": full_reason, "experiment": exp_id},
                )
            elif action == "stop":
                append_event(
                    client,
                    name,
                    events,
                    {
                        "action": "experiment-stopped",
                        "by": by,
                        "version": current,
                        "previous": current,
                        "reason": full_reason,
                        "experiment": exp_id,
                    },
                )
            state = "promoted" if action == "promote" else "stopped"
            if not store.finish_experiment(exp_id, state, full_reason, _summary(stats)):
                # Another decider recorded this experiment's end first (one outside the lock: the decision
                # row's primary key lets only one in). Its record stands; this one tags nothing.
                ended = [e for e in store.experiments(model_name=name) if e["experiment_id"] == exp_id]
                final = ended[0]["state"] if ended else "missing"
                log.warning("experiment %s had already ended (%s); this %s was not recorded", exp_id, final, state)
                return {"changed": False, "experiment_id": exp_id, "state": final}
        tags = {"state": state, "decision": state, "reason": full_reason, "decided_at": utc_now(), "by": by}
        test = stats.get("test") or {}
        tags.update(p_value=test.get("always_valid_p"), difference=test.get("difference"))
        tag_versions(client, name, experiment, tags)
    finally:
        store.close()
    log.warning("experiment %s %s: %s", exp_id, state, full_reason)
    return {"changed": True, "experiment_id": exp_id, "state": state, "reason": full_reason}


def evaluate(settings: Settings, experiment: dict, *, apply: bool = True) -> dict:
    """The experiment's statistics and decision; with ``apply``, act on a promote or stop (and skip the
    over-time series, which only the panel and ``show`` need)."""
    stats = current_stats(settings, experiment, with_series=not apply)
    action, reason = decide(settings, experiment, stats) if experiment["state"] == "running" else ("ended", "")
    outcome = {"action": action, "reason": reason}
    if apply and action in ("promote", "stop"):
        outcome.update(act(settings, experiment, action, reason, stats))
    return {"experiment": experiment, "stats": stats, "decision": outcome}


def stop_experiment(settings: Settings, experiment_id: str, reason: str) -> dict:
    """Stop a running experiment by hand; the champion stays."""
    from components.experiments.records import get_experiment

    reason = (reason or "").strip()
    if not reason:
        raise ExperimentError("stopping an experiment needs --reason TEXT (it is recorded); nothing was changed")
    experiment = get_experiment(settings, experiment_id)
    if experiment["state"] != "running":
        raise ExperimentError(f"experiment {experiment_id} is not running (it is {experiment['state']})")
    stats = current_stats(settings, experiment)
    result = act(settings, experiment, "stop", f"stopped by a human: {reason}", stats, by="human")
    if not result["changed"]:
        raise ExperimentError(f"experiment {experiment_id} is not running (it is {result['state']})")
    return result
