"""The experiment's statistics: per-arm figures, the mSPRT always-valid test and the guardrails.

The test is the mixture sequential probability ratio test (Robbins 1970; Johari, Pekelis and Walsh,
"Always valid inference", 2017) on the normal approximation of the difference of means. With a
normal mixing distribution N(0, tau^2) over the true difference theta, the likelihood ratio against
theta = 0 after observing an estimated difference d with variance V is

    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 d^2 / (2 V (V + tau^2)))

and, by Ville's inequality, the chance that Lambda ever reaches 1/alpha under theta = 0 is at most
alpha, however often it is looked at. The always-valid p-value is the running minimum of
min(1, 1/Lambda); the always-valid interval (confidence sequence) is the set of theta whose own ratio
stays below 1/alpha. In split mode the outcome of an impression is its number of attributed positive
events (the metric), compared between arms; in interleave mode it is whether the challenger's team won
the impression (ties and impressions without clicks drop out), compared with one half. tau is given in
standard deviations of the outcome (the arms' pooled one; a fair coin's, 1/2, for interleaving), so one
setting suits rare clicks and frequent likes alike.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from components.experiments.assignment import CHALLENGER, CHAMPION, INTERLEAVED

SERIES_POINTS = 20
"""Checkpoints of the over-time series (the /ui plot); the p-value's running minimum is taken over them."""


def mixture_test(difference: float, variance: float, tau: float, alpha: float) -> dict:
    """The mSPRT at one look: log likelihood ratio, p-value (this look) and the always-valid interval."""
    v = max(float(variance), 1e-12)
    t2 = tau * tau
    log_lr = 0.5 * math.log(v / (v + t2)) + t2 * difference * difference / (2 * v * (v + t2))
    half = math.sqrt(2 * v * (v + t2) / t2 * (math.log(1 / alpha) + 0.5 * math.log((v + t2) / v)))
    return {
        "difference": difference,
        "log_likelihood_ratio": log_lr,
        "p_value": min(1.0, math.exp(-log_lr)),
        "interval": [difference - half, difference + half],
        "significant": log_lr >= math.log(1 / alpha),
    }


def _arm_figures(outcomes: np.ndarray, negatives: int, errors: int, latencies: np.ndarray, tau: float, alpha):
    n = len(outcomes)
    mean = float(outcomes.mean()) if n else 0.0
    # the sample variance, floored by the smoothed Bernoulli one ((x + 1) / (n + 2)): three likes out of
    # three impressions are not certainty, and a zero variance would give a zero-width interval
    smoothed = (float(outcomes.sum()) + 1) / (n + 2)
    var = max(float(outcomes.var(ddof=1)) if n > 1 else 0.25, smoothed * (1 - smoothed))
    interval = mixture_test(0.0, var / n if n else 1.0, tau, alpha)["interval"] if n else [None, None]
    return {
        "impressions": n,
        "positive_events": int(outcomes.sum()),
        "rate": mean,
        "variance": var,
        "interval": [mean + interval[0], mean + interval[1]] if n else [None, None],
        "negative_events": int(negatives),
        "errors": int(errors),
        "error_rate": errors / (n + errors) if n + errors else 0.0,
        "p50_ms": float(np.percentile(latencies, 50)) if len(latencies) else None,
        "p99_ms": float(np.percentile(latencies, 99)) if len(latencies) else None,
    }


def _positives(impressions: pd.DataFrame, attributions: pd.DataFrame, events: tuple) -> pd.Series:
    """Attributed events of the given kinds per impression id (0 for impressions with none)."""
    hits = attributions[attributions["event"].isin(events)]
    counts = hits.groupby("recommendation_id").size()
    return impressions["recommendation_id"].map(counts).fillna(0).astype(float)


def split_stats(impressions, attributions, positive: tuple, negative: tuple, tau: float, alpha: float) -> dict:
    ok = impressions[impressions["error"] == 0]
    outcomes = _positives(ok, attributions, positive)
    bad = _positives(ok, attributions, negative)
    arms = {}
    for arm in (CHAMPION, CHALLENGER):
        mask = (ok["arm"] == arm).to_numpy()
        errors = int(((impressions["arm"] == arm) & (impressions["error"] != 0)).sum())
        latencies = ok["latency_ms"].to_numpy()[mask]
        arms[arm] = _arm_figures(outcomes.to_numpy()[mask], bad.to_numpy()[mask].sum(), errors, latencies, tau, alpha)
    a, b = arms[CHAMPION], arms[CHALLENGER]
    if a["impressions"] and b["impressions"]:
        variance = a["variance"] / a["impressions"] + b["variance"] / b["impressions"]
        spread = tau * math.sqrt(max((a["variance"] + b["variance"]) / 2, 1e-6))  # tau in standard deviations
        test = mixture_test(b["rate"] - a["rate"], variance, spread, alpha)
    else:
        test = {"difference": None, "p_value": 1.0, "interval": [None, None], "significant": False}
    units = min(a["impressions"], b["impressions"])
    return {"arms": arms, "test": test, "decisive_units": units, "sample": units}


def interleave_stats(impressions, attributions, positive: tuple, negative: tuple, tau: float, alpha: float) -> dict:
    ok = impressions[(impressions["error"] == 0) & (impressions["arm"] == INTERLEAVED)]
    hits = attributions[attributions["event"].isin(positive)]
    arms = {}
    per_team = {}
    for arm in (CHAMPION, CHALLENGER):
        counts = hits[hits["arm"] == arm].groupby("recommendation_id").size()
        per_team[arm] = ok["recommendation_id"].map(counts).fillna(0).to_numpy(float)
        negatives = int(attributions[attributions["event"].isin(negative) & (attributions["arm"] == arm)].shape[0])
        errors = int(((impressions["arm"] == arm) & (impressions["error"] != 0)).sum())
        arms[arm] = _arm_figures(per_team[arm], negatives, errors, ok["latency_ms"].to_numpy(), tau, alpha)
    diff = per_team[CHALLENGER] - per_team[CHAMPION]
    wins = (diff[diff != 0] > 0).astype(float)
    n = len(wins)
    arms[CHALLENGER]["wins"], arms[CHAMPION]["wins"] = int(wins.sum()), int(n - wins.sum())
    if n:
        share = float(wins.mean())
        test = mixture_test(share - 0.5, max(share * (1 - share), 0.05) / n, tau * 0.5, alpha)  # sd of a fair coin
        test["challenger_win_share"] = share
    else:
        test = {"difference": None, "p_value": 1.0, "interval": [None, None], "significant": False}
    return {"arms": arms, "test": test, "decisive_units": n, "sample": int(len(ok))}


def experiment_stats(
    experiment: dict, impressions: pd.DataFrame, attributions: pd.DataFrame, config, with_series: bool = True
) -> dict:
    """Per-arm figures, the test now, and (``with_series``) the series over time with the p-value's running minimum.

    ``config`` is ``settings.experiments``: the events that count as positive and negative, tau and alpha.
    The decision needs no series: it is evaluated at every look and acts at the first significant one.
    """
    interleave = experiment["mode"] == "interleave"
    tau = config.tau_interleave if interleave else config.tau_split
    positive = tuple(config.metric_events(experiment["metric"]))
    args = (tuple(positive), tuple(config.negative_events), tau, config.alpha)
    compute = interleave_stats if interleave else split_stats
    now = compute(impressions, attributions, *args)
    series, running = [], 1.0
    if with_series and len(impressions):
        start, end = float(impressions["created_at"].min()), float(impressions["created_at"].max())
        for at in np.linspace(start, end, SERIES_POINTS)[1:] if end > start else [end]:
            point = compute(
                impressions[impressions["created_at"] <= at], attributions[attributions["created_at"] <= at], *args
            )
            running = min(running, point["test"]["p_value"])
            series.append(_series_point(at, point, running))
    running = min(running, now["test"]["p_value"])
    now["test"]["always_valid_p"] = running
    now["test"]["significant"] = bool(now["test"]["significant"] or running <= config.alpha)
    return {**now, "series": series, "mode": experiment["mode"], "metric": experiment["metric"], "alpha": config.alpha}


def _series_point(at: float, point: dict, running_p: float) -> dict:
    arms = {arm: {k: point["arms"][arm][k] for k in ("impressions", "rate", "interval")} for arm in point["arms"]}
    return {
        "at": at,
        "arms": arms,
        "difference": point["test"]["difference"],
        "interval": point["test"]["interval"],
        "always_valid_p": running_p,
    }


def guardrail_breach(stats: dict, config) -> str | None:
    """Why the challenger breaks a guardrail (errors, or p99 latency in split mode), or None."""
    a, b = stats["arms"][CHAMPION], stats["arms"][CHALLENGER]
    if b["errors"] >= config.guardrail_min_errors and b["error_rate"] > a["error_rate"] + config.max_error_increase:
        return (
            f"guardrail: the challenger's error rate {b['error_rate']:.3f} ({b['errors']} errors) is more than "
            f"{config.max_error_increase} above the champion's {a['error_rate']:.3f}"
        )
    enough = min(a["impressions"], b["impressions"]) >= config.min_impressions
    if stats["mode"] == "split" and enough and a["p99_ms"] is not None and b["p99_ms"] is not None:
        limit = a["p99_ms"] * config.max_p99_ratio + config.p99_slack_ms
        if b["p99_ms"] > limit:
            return (
                f"guardrail: the challenger's p99 latency {b['p99_ms']:.1f} ms is over {limit:.1f} ms "
                f"({config.max_p99_ratio}x the champion's {a['p99_ms']:.1f} ms + {config.p99_slack_ms} ms)"
            )
    return None


def to_json(stats: dict) -> str:
    return json.dumps(stats, default=float)
