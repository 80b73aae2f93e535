"""The run report: the evaluation table in Markdown, the summary a model version carries, the
MLflow tags for how the best candidate was fitted, and the code and package versions of a run."""

from __future__ import annotations

import subprocess
from importlib import metadata

from components.settings import PROJECT_ROOT


def report_markdown(report: dict) -> str:
    """The evaluation table: test metrics with 95% intervals, validation gate metric, cold start."""
    lines = [
        f"Snapshot `{report['snapshot_id']}`: {report['users']} users, {report['items']} items, full ranking.",
        "",
        "| model | HR@10 | NDCG@10 | MRR@10 | Recall@20 | coverage@10 | cold HR@10 | val "
        + report["gate_metric"]
        + " |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = list(report["candidates"].items())
    if "champion" in report:
        rows.append((f"champion v{report['champion']['version']} ({report['champion']['model']})", report["champion"]))
    for name, result in rows:
        test = result["test"]
        cells = [_with_interval(test, key) for key in ("hr_at_10", "ndcg_at_10", "mrr_at_10", "recall_at_20")]
        cold = f"{test['cold_hr_at_10']:.4f} ({int(test['cold_users'])} users)"
        gate = f"{result['val'][report['gate_metric']]:.4f}"
        lines.append(f"| {name} | {' | '.join(cells)} | {test['coverage_at_10']:.4f} | {cold} | {gate} |")
    for name, reason in report.get("dropped", {}).items():
        lines.append(f"\nDropped **{name}**: {reason}")
    return "\n".join(lines) + "\n"


def _with_interval(metrics: dict, key: str) -> str:
    return f"{metrics[key]:.4f} [{metrics[key + '_low']:.4f}, {metrics[key + '_high']:.4f}]"


def fit_tags(report: dict) -> dict[str, str]:
    """MLflow tags for how the best candidate was fitted, and which candidates were dropped why."""
    tags = {f"candidate.{name}.dropped": str(reason)[:500] for name, reason in report.get("dropped", {}).items()}
    fit = report["candidates"][report["best"]].get("fit", {})
    warm = fit.get("warm_start")
    if warm:
        tags["warm_start.used"] = str(warm.get("used"))
        tags["warm_start.detail"] = str(warm.get("reason") or f"from version {warm.get('champion_version')}")[:500]
    if fit.get("fit", {}).get("best_epoch") is not None:
        tags["fit.best_epoch"] = str(fit["fit"]["best_epoch"])
    return tags


def git_commit() -> str:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict:
    names = ["mlflow", "apache-airflow", "bentoml", "great-expectations", "torch", "transformers", "numpy", "pandas"]
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def run_summary(report: dict, candidates: list[str], snapshot_id: str, encoder_id: str, validation: dict) -> str:
    """One paragraph for the MLflow run note and the model version's description."""
    best, metric = report["best"], report["gate_metric"]
    best_val, best_test = report["candidates"][best]["val"], report["candidates"][best]["test"]
    champion = report.get("champion")
    compared = (
        f"The champion, version {champion['version']}, scored {champion['val'][metric]:.4f} on the same split. "
        if champion
        else "There was no champion to compare with. "
    )
    checks = "passed" if validation.get("success") else "result unknown"
    return (
        f"**{best}** is the best of {', '.join(candidates)} on snapshot `{snapshot_id}` "
        f"(validation {metric} {best_val[metric]:.4f}; test HR@10 {best_test['hr_at_10']:.4f} "
        f"[{best_test['hr_at_10_low']:.4f}, {best_test['hr_at_10_high']:.4f}]). "
        + compared
        + f"Encoder `{encoder_id}`; validation {checks} ({validation.get('checks', '?')} checks). "
        "Plots are under `plots/`, the full table under `evaluation/`."
    )
