"""
# lm_recsys_experiments

Decides online experiments where the service may not write the registry (the compose deployment
runs the service with `experiments.auto_decide` off): every `LMRECSYS_EXPERIMENTS__DECIDE_INTERVAL_S`
seconds (300 by default) it evaluates the running experiment's always-valid test and guardrails and
acts on the decision, as `lmrecsys experiments decide` does: the challenger becomes champion
through the registry (reason `online experiment ID: …`), or the experiment stops and the champion
stays. An experiment without a decision yet carries on.

* No running experiment: the task is skipped (one query of the feedback store).
* Safe beside any other decider (a service with `auto_decide` on, a human, the pipeline's gate):
  acting holds the registry's promotion lock and re-reads the experiment, so it is decided once.
* The decision is in the `decide` log and XCom, on both versions' `experiment.*` tags and in
  `lmrecsys models history`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag, task
from airflow.sdk.exceptions import AirflowSkipException

from components.settings import load_settings

INTERVAL_S = load_settings().experiments.decide_interval_s


@dag(
    dag_id="lm_recsys_experiments",
    schedule=timedelta(seconds=INTERVAL_S),
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["lm-recsys", "experiments"],
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30)},
    doc_md=__doc__,
)
def lm_recsys_experiments():
    @task(execution_timeout=timedelta(minutes=10))
    def decide() -> list[dict]:
        from components.pipeline import decide_experiments

        decisions = decide_experiments(load_settings())
        if not decisions:
            raise AirflowSkipException("no online experiment is running")
        for decision in decisions:
            print(f"{decision['experiment_id']}: {decision['decision']}: {decision['reason']}")
        return decisions

    decide()


lm_recsys_experiments()
