"""PNG plots of an evaluation report, logged with every pipeline run.

Three figures answer "how good is this model, and compared with what": test metrics of every
candidate (and the current champion) with 95% bootstrap intervals, HR@K curves for K = 1..50,
and the cold-start slice beside the overall figure. matplotlib runs on the Agg backend, so no
display is ever needed.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

from components.data.atomic import atomic_file

matplotlib.use("Agg")  # headless: Airflow workers and CI have no display

import matplotlib.pyplot as plt
import numpy as np

COMPARED_METRICS = ("hr_at_10", "ndcg_at_10", "mrr_at_10", "recall_at_20")
"""Test metrics shown side by side, each with its interval (keys of the report's flat results)."""

PLOT_FILES = {
    "metrics": "metric_comparison.png",
    "hr_curve": "hr_at_k.png",
    "cold_start": "cold_start.png",
}


def _label(metric: str) -> str:
    """``ndcg_at_10`` -> ``NDCG@10``; ``recall_at_20`` -> ``RECALL@20``."""
    return metric.replace("_at_", "@").upper()


def report_rows(report: dict) -> list[tuple[str, dict]]:
    """(label, result) for every candidate, plus the champion when the report scored one."""
    rows = list(report["candidates"].items())
    if "champion" in report:
        champion = report["champion"]
        rows.append((f"champion v{champion['version']} ({champion.get('model', '?')})", champion))
    return rows


def _save(figure, path: Path) -> Path:
    """Write the figure under a temporary name and rename it into place."""
    try:
        with atomic_file(path, suffix=".png") as tmp:
            figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(figure)
    return path


def plot_metric_comparison(report: dict, path: Path) -> Path:
    """Grouped bars: each test metric per model, with its 95% bootstrap interval as an error bar."""
    rows = report_rows(report)
    figure, axes = plt.subplots(figsize=(max(6.0, 1.6 * len(COMPARED_METRICS) * max(1, len(rows)) / 2), 4.2))
    width = 0.8 / max(1, len(rows))
    positions = np.arange(len(COMPARED_METRICS))
    for index, (label, result) in enumerate(rows):
        test = result["test"]
        values = np.array([test[m] for m in COMPARED_METRICS], dtype=float)
        low = np.array([test.get(m + "_low", test[m]) for m in COMPARED_METRICS], dtype=float)
        high = np.array([test.get(m + "_high", test[m]) for m in COMPARED_METRICS], dtype=float)
        errors = np.vstack([np.clip(values - low, 0, None), np.clip(high - values, 0, None)])
        axes.bar(positions + (index - (len(rows) - 1) / 2) * width, values, width, yerr=errors, capsize=3, label=label)
    axes.set_xticks(positions, [_label(m) for m in COMPARED_METRICS])
    axes.set_ylabel("test value (95% bootstrap interval)")
    axes.set_title(f"Snapshot {report['snapshot_id']}: {report['users']} users, {report['items']} items, full ranking")
    axes.legend(fontsize="small")
    axes.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def plot_hr_curves(report: dict, path: Path) -> Path:
    """HR@K for K = 1..len(curve) on the test item, one line per model."""
    figure, axes = plt.subplots(figsize=(6.5, 4.2))
    for label, result in report_rows(report):
        curve = result.get("test_curve") or []
        if curve:
            axes.plot(np.arange(1, len(curve) + 1), curve, label=label)
    axes.set_xlabel("K")
    axes.set_ylabel("HR@K (test item)")
    axes.set_title("Hit rate by cut-off")
    axes.axvline(10, color="grey", linestyle=":", linewidth=1)
    axes.legend(fontsize="small")
    axes.grid(alpha=0.3)
    return _save(figure, path)


def plot_cold_start(report: dict, path: Path) -> Path:
    """HR@10 and NDCG@10 overall beside the cold-start slice (test items with few training events)."""
    rows = report_rows(report)
    figure, axes = plt.subplots(figsize=(max(6.0, 1.4 * len(rows)), 4.2))
    positions = np.arange(len(rows))
    bars = (
        ("hr_at_10", "HR@10 all"),
        ("cold_hr_at_10", "HR@10 cold"),
        ("ndcg_at_10", "NDCG@10 all"),
        ("cold_ndcg_at_10", "NDCG@10 cold"),
    )
    width = 0.8 / len(bars)
    for index, (key, label) in enumerate(bars):
        values = [float(result["test"].get(key, 0.0)) for _, result in rows]
        axes.bar(positions + (index - (len(bars) - 1) / 2) * width, values, width, label=label)
    cold_users = [int(result["test"].get("cold_users", 0)) for _, result in rows]
    axes.set_xticks(
        positions, [f"{name}\n({n} cold users)" for (name, _), n in zip(rows, cold_users)], fontsize="small"
    )
    axes.set_ylabel("test value")
    axes.set_title("Cold-start slice: test items with at most 5 training interactions")
    axes.legend(fontsize="small")
    axes.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def write_report_plots(report: dict, folder: Path) -> dict[str, Path]:
    """Write every plot of ``report`` into ``folder``; returns {kind: path}."""
    folder = Path(folder)
    return {
        "metrics": plot_metric_comparison(report, folder / PLOT_FILES["metrics"]),
        "hr_curve": plot_hr_curves(report, folder / PLOT_FILES["hr_curve"]),
        "cold_start": plot_cold_start(report, folder / PLOT_FILES["cold_start"]),
    }
