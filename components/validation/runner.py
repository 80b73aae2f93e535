"""The validate stage: run the Great Expectations suites on a snapshot; accept or quarantine it.

An accepted snapshot gains ``validation.json``. A rejected one moves to ``quarantine/`` with the
GX result JSON, a readable offline HTML report, and a :class:`ValidationFailed` error naming each
failed expectation with counts and sample offending values.
"""

from __future__ import annotations

import html
import json
import logging
import os
import time
from dataclasses import dataclass

import pandas as pd

from components.data.atomic import atomic_write_text
from components.data.columns import EVENT_COL, EVENT_ID_COL, ITEM_COL, SOURCE_COL, USER_COL, VALUE_COL
from components.data.erasure import Forgetter, erasure_key
from components.data.snapshots import Snapshot, quarantine
from components.errors import ValidationFailed
from components.settings import Settings

log = logging.getLogger(__name__)
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")


@dataclass
class CheckOutcome:
    """One expectation's verdict, in plain terms."""

    batch: str
    expectation: str
    column: str | None
    success: bool
    unexpected_count: int | None
    element_count: int | None
    sample: list
    observed: object = None

    def describe(self) -> str:
        where = f" on column {self.column!r}" if self.column else ""
        counts = ""
        if self.unexpected_count is not None:
            counts = f": {self.unexpected_count} of {self.element_count} rows fail"
        elif self.observed is not None:
            counts = f": observed {self.observed}"
        sample = f", e.g. {self.sample[:5]}" if self.sample else ""
        return f"[{self.batch}] {self.expectation}{where}{counts}{sample}"


def _run_suite(context, name: str, frame: pd.DataFrame, suite) -> tuple[list[CheckOutcome], dict]:
    source = context.data_sources.add_pandas(f"{name}-source")
    batch = (
        source.add_dataframe_asset(name)
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    result = batch.validate(suite, result_format={"result_format": "SUMMARY", "partial_unexpected_count": 10})
    outcomes = []
    for item in result.results:
        config = item.expectation_config
        details = item.result or {}
        outcomes.append(
            CheckOutcome(
                batch=name,
                expectation=config.type,
                column=config.kwargs.get("column") or (",".join(config.kwargs.get("column_list", [])) or None),
                success=bool(item.success),
                unexpected_count=details.get("unexpected_count"),
                element_count=details.get("element_count"),
                sample=[_plain(v) for v in (details.get("partial_unexpected_list") or [])][:10],
                observed=_plain(details.get("observed_value")),
            )
        )
    return outcomes, result.to_json_dict()


def _plain(value):
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if hasattr(value, "item"):
        return value.item()
    return value if value is None or isinstance(value, (int, float, str, bool)) else str(value)


def _distribution(interactions: pd.DataFrame) -> pd.Series:
    """Share of each event kind, with ratings binned to the half star."""
    labels = interactions[EVENT_COL].astype(str)
    ratings = interactions[EVENT_COL] == "rating"
    labels = labels.where(~ratings, "rating:" + (interactions[VALUE_COL].astype(float) * 2).round().div(2).astype(str))
    return labels.value_counts(normalize=True)


def js_divergence(p: pd.Series, q: pd.Series) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) between two discrete distributions."""
    from scipy.spatial.distance import jensenshannon

    keys = p.index.union(q.index)
    p, q = p.reindex(keys, fill_value=0.0).to_numpy(), q.reindex(keys, fill_value=0.0).to_numpy()
    if not len(keys):
        return 0.0
    return float(jensenshannon(p, q, base=2) ** 2)  # scipy returns the distance, the divergence's square root


def _source_rows(interactions: pd.DataFrame) -> pd.DataFrame:
    return interactions[interactions[SOURCE_COL] != "feedback"] if SOURCE_COL in interactions else interactions


def drift_metrics(
    snapshot_manifest: dict,
    items: pd.DataFrame,
    interactions: pd.DataFrame,
    reference: Snapshot,
    forgotten: Forgetter | None = None,
) -> pd.DataFrame:
    """Drift of the snapshot's source rows against the reference's, as a one-row frame for GX.

    Only the source is measured: drift checks guard the data the platform is given, and feedback
    (which anyone who reaches the public endpoints can send) must never block a run by itself. The
    feedback's own figures are in :func:`feedback_report`.
    """
    ref_manifest = reference.manifest
    ref_inter = _source_rows(reference.interactions())
    if forgotten is not None:  # users erased since the reference are not drift: compare without them
        ref_inter = ref_inter[~forgotten.mask(ref_inter[USER_COL])]
    ref_items = set(reference.items()[ITEM_COL])
    source = _source_rows(interactions)
    new_rows = source[~source[EVENT_ID_COL].isin(set(ref_inter[EVENT_ID_COL]))]
    volume_now = snapshot_manifest.get("source_rows", len(source))
    volume_ref = ref_manifest.get("source_rows", ref_manifest["row_counts"]["interactions"]) or 1
    users = source[USER_COL].unique()
    return pd.DataFrame(
        {
            "volume_ratio": [volume_now / volume_ref],
            "unknown_item_share": [float((~new_rows[ITEM_COL].isin(ref_items)).mean()) if len(new_rows) else 0.0],
            "new_user_ratio": [float((~pd.Series(users).isin(set(ref_inter[USER_COL]))).mean()) if len(users) else 0.0],
            "event_divergence": [js_divergence(_distribution(source), _distribution(ref_inter))],
        }
    )


def feedback_report(
    settings: Settings, manifest: dict, interactions: pd.DataFrame, reference: Snapshot | None
) -> tuple[dict, list[str]]:
    """The snapshot's new feedback in figures, and the alerts they raise; never a reason to reject."""
    cfg = settings.validation
    merged = int(manifest.get("feedback_events_merged", 0))
    held = (manifest.get("feedback_quarantine") or {}).get("rules", {})
    quarantined = int(sum(held.values()))
    feedback = interactions[interactions[SOURCE_COL] == "feedback"] if SOURCE_COL in interactions else interactions[:0]
    known: set = set()
    if reference is not None:
        previous = reference.interactions()
        known = set(previous[USER_COL])
        feedback = feedback[~feedback[EVENT_ID_COL].isin(set(previous[EVENT_ID_COL]))]
    users = pd.Series(feedback[USER_COL].unique())
    new_user_share = float((~users.isin(known)).mean()) if len(users) and reference is not None else 0.0
    figures = {
        "events_merged": merged,
        "events_quarantined": quarantined,
        "quarantined_by_reason": held,
        "users": int(len(users)),
        "new_user_share": new_user_share,
    }
    alerts = []
    if new_user_share > cfg.feedback_alert_new_user_share:
        alerts.append(
            f"feedback: {new_user_share:.0%} of the {len(users)} users with new feedback are new "
            f"(alert above {cfg.feedback_alert_new_user_share:.0%})"
        )
    seen = merged + quarantined
    if seen and quarantined / seen > cfg.feedback_alert_quarantined_share:
        alerts.append(
            f"feedback: {quarantined} of {seen} new events were quarantined at ingest "
            f"(alert above {cfg.feedback_alert_quarantined_share:.0%}): {held}"
        )
    return figures, alerts


def check_frames(
    settings: Settings, items: pd.DataFrame, interactions: pd.DataFrame, *, drift: pd.DataFrame | None = None
) -> tuple[list[CheckOutcome], dict]:
    """Run every suite on the frames (and the drift suite when a reference exists); return outcomes and raw results."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    from data_checks.suites import KNOWN_ITEM_FLAG, drift_suite, interactions_suite, items_suite, ratings_suite

    for name in ("great_expectations", "great_expectations.data_context.types.base"):
        logging.getLogger(name).setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    cfg = settings.validation
    outcomes, raw = [], {}
    # Referential integrity as a flag column: GX's in-set check re-serialises a 10k-id set per call.
    flagged = interactions.assign(**{KNOWN_ITEM_FLAG: interactions[ITEM_COL].isin(set(items[ITEM_COL].dropna()))})
    for name, frame, suite in (
        ("items", items, items_suite(cfg)),
        ("interactions", flagged, interactions_suite(cfg)),
        ("ratings", interactions[interactions[EVENT_COL] == "rating"], ratings_suite(cfg)),
        ("drift", drift, drift_suite(cfg)),
    ):
        if frame is None or (name == "ratings" and frame.empty):
            continue
        found, result = _run_suite(context, name, frame, suite)
        for outcome in found:
            if outcome.column == KNOWN_ITEM_FLAG:
                outcome.column = f"{ITEM_COL} (must exist in items)"
                unknown = frame.loc[~frame[KNOWN_ITEM_FLAG], ITEM_COL]
                outcome.sample = [_plain(v) for v in unknown.drop_duplicates().head(10)]
        outcomes += found
        raw[name] = result
    return outcomes, raw


def validate_snapshot(settings: Settings, snapshot: Snapshot) -> Snapshot:
    """Accept the snapshot (writing validation.json) or quarantine it and raise ValidationFailed."""
    if snapshot.accepted:
        return snapshot
    started = time.perf_counter()
    items, interactions = snapshot.items(), snapshot.interactions()
    reference = _reference(settings, snapshot)
    drift = None
    if reference is not None:
        try:
            erased = set((snapshot.manifest.get("erasure") or {}).get("user_keys", []))
            forgotten = Forgetter(erasure_key(settings), erased) if erased else None
            drift = drift_metrics(snapshot.manifest, items, interactions, reference, forgotten)
        except Exception as exc:  # drift is advisory only if it cannot be computed at all
            log.warning("drift against %s could not be computed: %s", reference.snapshot_id, exc)
    outcomes, raw = check_frames(settings, items, interactions, drift=drift)
    failed = [o for o in outcomes if not o.success]
    feedback, alerts = feedback_report(settings, snapshot.manifest, interactions, reference)
    for alert in alerts:
        log.warning("snapshot %s: %s", snapshot.snapshot_id, alert)
    summary = {
        "snapshot_id": snapshot.snapshot_id,
        "success": not failed,
        "validated_at": time.time(),
        "seconds": round(time.perf_counter() - started, 3),
        "checks": len(outcomes),
        "drift_reference": reference.snapshot_id if reference is not None else None,
        "drift": drift.iloc[0].to_dict() if drift is not None else None,
        "failed": [o.describe() for o in failed],
        "feedback": feedback,
        "alerts": alerts,
        "outcomes": [o.__dict__ for o in outcomes],
    }
    atomic_write_text(snapshot.path / "gx_result.json", json.dumps(raw, indent=1, default=str))
    atomic_write_text(snapshot.path / "report.html", render_report(snapshot.snapshot_id, outcomes))
    if failed:
        summary["success"] = False
        atomic_write_text(snapshot.path / "validation.json", json.dumps(summary, indent=2, default=str))
        moved = quarantine(snapshot, settings.quarantine_dir)
        message = (
            f"snapshot {snapshot.snapshot_id} failed validation ({len(failed)} of {len(outcomes)} checks) "
            f"and was quarantined at {moved}:\n  " + "\n  ".join(summary["failed"])
        )
        log.error(message)
        raise ValidationFailed(message, report_path=str(moved / "report.html"))
    atomic_write_text(snapshot.path / "validation.json", json.dumps(summary, indent=2, default=str))
    log.info("snapshot %s passed %d checks in %.2fs", snapshot.snapshot_id, len(outcomes), summary["seconds"])
    return snapshot


def _reference(settings: Settings, snapshot: Snapshot) -> Snapshot | None:
    """The snapshot to measure drift against: the parent, else the newest accepted one."""
    from components.data.snapshots import newest_accepted, open_snapshot

    parent = snapshot.manifest.get("parent")
    if parent:
        try:
            candidate = open_snapshot(settings.snapshots_dir, parent)
            if candidate.accepted:
                return candidate
        except Exception:
            pass
    newest = newest_accepted(settings.snapshots_dir)
    return newest if newest is not None and newest.snapshot_id != snapshot.snapshot_id else None


def render_report(snapshot_id: str, outcomes: list[CheckOutcome]) -> str:
    """A self-contained HTML summary (inline styles, no CDN), readable offline."""
    rows = "\n".join(_report_row(o) for o in outcomes)
    failed = sum(not o.success for o in outcomes)
    verdict = "accepted" if not failed else f"rejected: {failed} failed check(s)"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Validation of {snapshot_id}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;font-size:14px}}tr.bad{{background:#fde2e2}}
tr.ok td:first-child{{color:#1a7f37}}tr.bad td:first-child{{color:#b42318;font-weight:bold}}</style></head>
<body><h1>Snapshot {html.escape(snapshot_id)}</h1><p><b>{html.escape(verdict)}</b></p>
<table><tr><th>result</th><th>batch</th><th>expectation</th><th>column</th><th>unexpected rows</th>
<th>sample / observed</th></tr>
{rows}</table></body></html>"""


def _report_row(o) -> str:
    """One expectation's row of the HTML report."""
    shown = json.dumps(o.sample[:5], default=str) if o.sample else str(o.observed if o.observed is not None else "")
    cells = [
        "pass" if o.success else "FAIL",
        html.escape(o.batch),
        html.escape(o.expectation),
        html.escape(str(o.column or "")),
        "" if o.unexpected_count is None else str(o.unexpected_count),
        html.escape(shown),
    ]
    return f"<tr class='{'ok' if o.success else 'bad'}'>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
