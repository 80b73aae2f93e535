"""The ``lmrecsys experiments`` commands: start, show, stop and list online experiments.

``components.cli`` adds the group. docs/experiments.md explains the split, interleaving, the test and
the decision.
"""

from __future__ import annotations

import typer

from components.cli import EXIT_ERROR, JsonOption, _emit, _fail, _quiet_env, _settings, _table, app

experiments_app = typer.Typer(
    help="Online experiments: champion against a challenger on live traffic, decided by an always-valid test.",
    no_args_is_help=True,
)
app.add_typer(experiments_app, name="experiments")


def _arm_rows(stats: dict) -> list[dict]:
    rows = []
    for arm, figures in stats["arms"].items():
        low, high = figures["interval"]
        interval = "" if low is None else f"[{low:.4f}, {high:.4f}]"
        p99 = "" if figures["p99_ms"] is None else f"{figures['p99_ms']:.1f}"
        rows.append(
            {
                "arm": arm,
                "impressions": figures["impressions"],
                "positive": figures["positive_events"],
                "rate": f"{figures['rate']:.4f}",
                "interval": interval,
                "errors": figures["errors"],
                "p99_ms": p99,
            }
        )
    return rows


@experiments_app.command("start")
def experiments_start(
    challenger: str = typer.Option(..., "--challenger", help="The registry version to test against the champion."),
    share: float = typer.Option(None, "--share", help="Share of users in the challenger's arm, in (0, 1)."),
    mode: str = typer.Option(None, "--mode", help="split (default) or interleave."),
    metric: str = typer.Option("like_rate", "--metric", help="like_rate, click_rate or purchase_rate."),
    max_days: float = typer.Option(None, "--max-days", help="Stop without a winner after this many days."),
    smoke_test: bool = typer.Option(True, "--smoke-test/--no-smoke-test", help="Load-and-predict the challenger."),
    as_json: bool = JsonOption,
):
    """Start an experiment of a challenger version against the champion (one per model at a time)."""
    _quiet_env()
    from components.errors import LmRecsysError
    from components.experiments import start_experiment

    try:
        record = start_experiment(
            _settings(), challenger, share=share, mode=mode, metric=metric, max_days=max_days, smoke=smoke_test
        )
    except LmRecsysError as exc:
        _fail(str(exc), EXIT_ERROR)
    text = (
        f"started {record['experiment_id']}: version {record['challenger_version']} against champion "
        f"{record['champion_version']}, {record['mode']}, share {record['share']}, metric {record['metric']}"
    )
    _emit(record, as_json, text)


@experiments_app.command("show")
def experiments_show(
    experiment_id: str = typer.Argument(None, help="Default: the newest."), as_json: bool = JsonOption
):
    """An experiment's arms, traffic, metrics with always-valid intervals, and its decision."""
    _quiet_env()
    from components.errors import LmRecsysError
    from components.experiments import evaluate, get_experiment

    try:
        settings = _settings()
        result = evaluate(settings, get_experiment(settings, experiment_id), apply=False)
    except LmRecsysError as exc:
        _fail(str(exc), EXIT_ERROR)
    exp, test = result["experiment"], result["stats"]["test"]
    header = (
        f"{exp['experiment_id']} ({exp['state']}): version {exp['challenger_version']} against "
        f"{exp['champion_version']}, {exp['mode']}, share {exp['share']}, metric {exp['metric']}\n"
    )
    verdict = exp["reason"] or f"now: {result['decision']['action']} ({result['decision']['reason']})"
    footer = f"\nalways-valid p {test.get('always_valid_p', 1.0):.4f}; {verdict}"
    columns = ["arm", "impressions", "positive", "rate", "interval", "errors", "p99_ms"]
    _emit(result, as_json, header + _table(_arm_rows(result["stats"]), columns) + footer)


@experiments_app.command("stop")
def experiments_stop(
    experiment_id: str,
    reason: str = typer.Option(..., "--reason", help="Why; recorded on both versions and in models history."),
    as_json: bool = JsonOption,
):
    """Stop a running experiment; the champion stays."""
    _quiet_env()
    from components.errors import LmRecsysError
    from components.experiments import stop_experiment

    try:
        result = stop_experiment(_settings(), experiment_id, reason)
    except LmRecsysError as exc:
        _fail(str(exc), EXIT_ERROR)
    _emit(result, as_json, f"{experiment_id} stopped: {result['reason']}")


@experiments_app.command("list")
def experiments_list(as_json: bool = JsonOption):
    """Every experiment on the model, newest first."""
    _quiet_env()
    from components.errors import LmRecsysError
    from components.experiments import list_experiments

    try:
        rows = list_experiments(_settings())
    except LmRecsysError as exc:
        _fail(str(exc), EXIT_ERROR)
    columns = ["experiment_id", "state", "champion_version", "challenger_version", "mode", "share", "reason"]
    _emit(rows, as_json, _table(rows, columns))


@experiments_app.command("decide")
def experiments_decide(as_json: bool = JsonOption):
    """Evaluate the running experiment now and act on its decision (promote or stop), as the service does.

    For deployments whose service may not write the registry (its decision is then refused and logged).
    """
    _quiet_env()
    from components.errors import LmRecsysError
    from components.pipeline import decide_experiments

    try:
        decisions = decide_experiments(_settings())
    except LmRecsysError as exc:
        _fail(str(exc), EXIT_ERROR)
    if not decisions:
        _fail("no experiment is running", EXIT_ERROR)
    _emit(decisions, as_json, "\n".join(f"{d['experiment_id']}: {d['decision']}: {d['reason']}" for d in decisions))
