"""
# lm_recsys_pipeline

The recommender's life cycle: **ingest → validate → embed (mapped shards) → train (one mapped
task per candidate) → evaluate → register → promote**.

* Runs daily, and whenever `lm_recsys_feedback_watch` publishes the `lmrecsys_feedback` asset
  (enough new feedback, or feedback old enough).
* Pass `{"snapshot_id": "snap-…"}` as run conf to retrain on an existing accepted snapshot.
* A failed validation fails `validate` and nothing downstream runs; the champion stays.
* A rejected challenger ends the run green; the decision is in the `promote` log and on the
  model version's `gate.*` tags in MLflow.

Every task is one call into `components.pipeline`; only ids and paths cross XCom.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, dag, get_current_context, task

from components.settings import load_settings

FEEDBACK_ASSET = Asset(name="lmrecsys_feedback", uri="lmrecsys://feedback/new-events")
SCHEDULE = load_settings().airflow.pipeline_cron
RETRIES = {"retries": 2, "retry_delay": timedelta(seconds=10), "retry_exponential_backoff": True}


def _run_key() -> str:
    """This DAG run's folder name under runs/ (the run id, made path-safe)."""
    return get_current_context()["run_id"].replace(":", "_").replace("+", "_")


def _settings():
    return load_settings()


@dag(
    dag_id="lm_recsys_pipeline",
    # run_immediately=0 s: the first scheduled run waits for the next cron time. The default
    # (False) still starts a run at once when the DAG appears within 10% of the cron period after
    # a cron time (2.4 h after midnight for @daily).
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(SCHEDULE, timezone="UTC", run_immediately=timedelta(0)), assets=FEEDBACK_ASSET
    ),
    catchup=False,  # no start_date: no backfill of missed cron times
    max_active_runs=1,
    tags=["lm-recsys", "training"],
    default_args=RETRIES,
    doc_md=__doc__,
    params={"snapshot_id": None},
)
def lm_recsys_pipeline():
    @task
    def ingest() -> str:
        from components.pipeline import stage_ingest

        chosen = get_current_context()["params"].get("snapshot_id")
        return chosen or stage_ingest(_settings())

    @task(execution_timeout=timedelta(minutes=10))
    def validate(snapshot_id: str) -> str:
        from airflow.sdk.exceptions import AirflowFailException

        from components.errors import ValidationFailed
        from components.pipeline import stage_validate

        try:
            return stage_validate(_settings(), snapshot_id)
        except ValidationFailed as exc:  # bad data does not get better on retry: fail at once, reason in the log
            raise AirflowFailException(str(exc)) from exc

    @task
    def plan_embedding_shards(snapshot_id: str) -> list[int]:
        from components.pipeline import stage_plan_shards

        settings = _settings()
        return stage_plan_shards(settings, snapshot_id, settings.airflow.embed_shards)

    @task(execution_timeout=timedelta(minutes=30))
    def embed_shard(shard: int, snapshot_id: str, shards: list[int]) -> dict:
        from components.pipeline import stage_embed_shard

        return stage_embed_shard(_settings(), snapshot_id, shard, len(shards))

    @task(execution_timeout=timedelta(minutes=30))
    def embed(snapshot_id: str, shard_reports: list[dict]) -> str:
        from components.pipeline import stage_embed

        return stage_embed(_settings(), snapshot_id)

    @task
    def plan_training(snapshot_id: str, embeddings_dir: str) -> list[str]:
        from components.pipeline import stage_plan_training

        return stage_plan_training(_settings(), snapshot_id, embeddings_dir, _run_key())

    @task(execution_timeout=timedelta(minutes=30))
    def train_candidate(name: str, snapshot_id: str, embeddings_dir: str) -> dict:
        from components.pipeline import stage_train_candidate

        return stage_train_candidate(_settings(), snapshot_id, embeddings_dir, _run_key(), name)

    @task(execution_timeout=timedelta(minutes=30))
    def evaluate(handles: list[dict]) -> str:
        from components.pipeline import stage_evaluate

        settings = _settings()
        return stage_evaluate(settings, str(settings.runs_dir / _run_key()), list(handles))

    @task
    def register(report_path: str) -> dict:
        from components.pipeline import stage_register

        return stage_register(_settings(), report_path)

    @task
    def promote(registration: dict) -> dict:
        from components.pipeline import stage_promote

        decision = stage_promote(_settings(), registration)
        print(f"version {decision['version']} {decision['decision']}: {decision['reason']}")
        return decision

    snapshot_id = validate(ingest())
    shards = plan_embedding_shards(snapshot_id)
    reports = embed_shard.partial(snapshot_id=snapshot_id, shards=shards).expand(shard=shards)
    embeddings_dir = embed(snapshot_id, reports)
    candidates = plan_training(snapshot_id, embeddings_dir)
    fits = train_candidate.partial(snapshot_id=snapshot_id, embeddings_dir=embeddings_dir).expand(name=candidates)
    promote(register(evaluate(fits)))


lm_recsys_pipeline()
