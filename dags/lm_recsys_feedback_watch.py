"""
# lm_recsys_feedback_watch

Closes the loop with no human step: every `LMRECSYS_AIRFLOW__WATCH_INTERVAL_S` seconds (60 by default)
it checks the feedback store. When at least `LMRECSYS_FEEDBACK__TRIGGER_MIN_EVENTS` new events lie
past the newest accepted snapshot (or the oldest is older than `…__TRIGGER_MAX_AGE_S`), it
records the trigger and publishes the `lmrecsys_feedback` asset, which starts
`lm_recsys_pipeline`. Otherwise the task is skipped and no asset event is emitted.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, dag, task
from airflow.sdk.exceptions import AirflowSkipException

from components.settings import load_settings

FEEDBACK_ASSET = Asset(name="lmrecsys_feedback", uri="lmrecsys://feedback/new-events")
INTERVAL_S = load_settings().airflow.watch_interval_s


@dag(
    dag_id="lm_recsys_feedback_watch",
    schedule=timedelta(seconds=INTERVAL_S),
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["lm-recsys", "feedback"],
    default_args={"retries": 1, "retry_delay": timedelta(seconds=5)},
    doc_md=__doc__,
)
def lm_recsys_feedback_watch():
    @task(outlets=[FEEDBACK_ASSET], execution_timeout=timedelta(minutes=2))
    def check_feedback() -> dict:
        from components.feedback.trigger import claim_trigger

        backlog = claim_trigger(load_settings())
        if not backlog.due:
            raise AirflowSkipException(backlog.reason)
        print(f"triggering lm_recsys_pipeline: {backlog.reason}")
        return backlog.as_dict()

    check_feedback()


lm_recsys_feedback_watch()
