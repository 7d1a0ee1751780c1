"""The database schema. Every time is epoch seconds (a float), the same on PostgreSQL and SQLite.

Tenants own keys, files and jobs; everything a job produces hangs off the job and is reached through it, so one
tenant check on the job guards all of it. The job row is the source of truth for what runs: `attempt`,
`lease_expires_at` and `heartbeat_at` are the worker's claim (see `service.lease`), `requested_action` carries
cancel and pause to it, and `dispatched_at` tells the sweep when the broker was last asked to run the job.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[float] = mapped_column(Float)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float)


class RegisteredModel(Base):
    """A base model the operator registered: a local Hugging Face directory workers can read."""

    __tablename__ = "base_models"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    owned_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[float] = mapped_column(Float)


class File(Base):
    __tablename__ = "files"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    filename: Mapped[str] = mapped_column(String(500))
    purpose: Mapped[str] = mapped_column(String(40))
    bytes: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(40))
    lines: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)  # relative to the files root
    created_at: Mapped[float] = mapped_column(Float)
    __table_args__ = (Index("ix_files_tenant_created", "tenant_id", "created_at"),)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(200))
    training_file: Mapped[str] = mapped_column(String(40))
    validation_file: Mapped[str | None] = mapped_column(String(40))
    method: Mapped[str] = mapped_column(String(20))
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)  # resolved, under the API's names
    run_config: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # RunConfig.to_dict(); what the worker runs
    seed: Mapped[int] = mapped_column(Integer)
    suffix: Mapped[str | None] = mapped_column(String(64))
    meta: Mapped[dict[str, str] | None] = mapped_column("metadata", JSON)
    status: Mapped[str] = mapped_column(String(20))
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(400))
    trained_tokens: Mapped[int | None] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    estimated_finish: Mapped[float | None] = mapped_column(Float)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    lost_attempts: Mapped[int] = mapped_column(Integer, default=0)  # runs whose worker vanished (not pauses)
    worker_id: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[float | None] = mapped_column(Float)
    lease_expires_at: Mapped[float | None] = mapped_column(Float)
    requested_action: Mapped[str | None] = mapped_column(String(20))
    dispatched_at: Mapped[float | None] = mapped_column(Float)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    integrations: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)  # as requested; none runs yet
    result_files: Mapped[list[str] | None] = mapped_column(JSON)  # ids of files (purpose fine-tune-results)
    estimate: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the pre-flight estimate at create (service.preflight)
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at"),
        Index("ix_jobs_status", "status"),
    )


class JobEvent(Base):
    __tablename__ = "job_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    level: Mapped[str] = mapped_column(String(10))
    type: Mapped[str] = mapped_column(String(10))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    __table_args__ = (Index("ix_job_events_job_id", "job_id", "id"),)


class Metric(Base):
    __tablename__ = "job_metrics"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    train_loss: Mapped[float | None] = mapped_column(Float)
    valid_loss: Mapped[float | None] = mapped_column(Float)
    learning_rate: Mapped[float | None] = mapped_column(Float)
    tokens_per_second: Mapped[float | None] = mapped_column(Float)
    grad_norm: Mapped[float | None] = mapped_column(Float)
    trained_tokens: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)


class GrowthEvent(Base):
    __tablename__ = "growth_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    layer: Mapped[int] = mapped_column(Integer)
    expert: Mapped[int] = mapped_column(Integer)
    old_rank: Mapped[int] = mapped_column(Integer)
    new_rank: Mapped[int] = mapped_column(Integer)
    saliency: Mapped[float] = mapped_column(Float)
    frequency: Mapped[float] = mapped_column(Float)
    importance: Mapped[float] = mapped_column(Float)
    __table_args__ = (Index("ix_growth_events_job_step", "job_id", "step"),)


class RankSnapshot(Base):
    """The whole layer x expert rank map after a step that changed it (and at the start)."""

    __tablename__ = "rank_snapshots"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    ranks: Mapped[list[list[int]]] = mapped_column(JSON)


class ExpertStat(Base):
    """Routing frequency, importance and saliency per layer x expert, as reported at `step`."""

    __tablename__ = "expert_stats"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    frequency: Mapped[list[list[float]]] = mapped_column(JSON)
    importance: Mapped[list[list[float]]] = mapped_column(JSON)
    saliency: Mapped[list[list[float]]] = mapped_column(JSON)
    ranks: Mapped[list[list[int]]] = mapped_column(JSON)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)  # relative to the runs root
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)
    __table_args__ = (UniqueConstraint("job_id", "step", name="uq_checkpoints_job_step"),)


class Artifact(Base):
    """A published zip under the artifact root; `sha256` is recorded at write time and checked on every read."""

    __tablename__ = "artifacts"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))  # adapter | checkpoint
    step: Mapped[int] = mapped_column(Integer)
    checkpoint_id: Mapped[str | None] = mapped_column(String(40))
    path: Mapped[str] = mapped_column(Text)  # relative to the artifact root
    sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    __table_args__ = (UniqueConstraint("job_id", "kind", "step", name="uq_artifacts_job_kind_step"),)


class WebhookEndpoint(Base):
    """A tenant's receiver: `events` lists the event types it wants; `secret` (whsec_...) signs every delivery, so
    it is kept as issued (an HMAC key cannot be stored as a hash)."""

    __tablename__ = "webhook_endpoints"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(JSON)
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[float] = mapped_column(Float)
    __table_args__ = (Index("ix_webhook_endpoints_tenant_created", "tenant_id", "created_at"),)


class WebhookDelivery(Base):
    """One event for one endpoint, enqueued in the transaction that caused it. `id` is the `webhook-id` header, the
    same on every attempt; `next_attempt_at` is when a delivery loop may next take it (also its claim while sending)."""

    __tablename__ = "webhook_deliveries"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(60))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20))  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    __table_args__ = (
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_endpoint", "endpoint_id"),
    )


class WebhookAttempt(Base):
    """What one try of a delivery got: the receiver's status code, or the error that stopped it."""

    __tablename__ = "webhook_attempts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[float] = mapped_column(Float)
    duration_s: Mapped[float] = mapped_column(Float)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    __table_args__ = (Index("ix_webhook_attempts_delivery", "delivery_id", "attempt"),)


class Profile(Base):
    """A routing profile of a base model on a training file (no training): queued -> running -> succeeded | failed.
    `result` holds `drlora_core.profile_run.RoutingProfile.to_dict()` once it succeeded."""

    __tablename__ = "profiles"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(200))
    training_file: Mapped[str] = mapped_column(String(40))
    max_examples: Mapped[int] = mapped_column(Integer)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)  # resolved, under the API's names
    run_config: Mapped[dict[str, Any]] = mapped_column(JSON)  # RunConfig.to_dict(): what the worker profiles with
    status: Mapped[str] = mapped_column(String(20))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    worker_id: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    dispatched_at: Mapped[float | None] = mapped_column(Float)
    __table_args__ = (Index("ix_profiles_status", "status"),)


class Generation(Base):
    """A few completions of prompts by a job's adapter (final, or a checkpoint's): queued -> running -> succeeded |
    failed, like a profile (service/generations.py). `artifact_id` is the zip resolved when it was asked for;
    `chat` whether the job's training data was chat (None: its file was gone). `completions` once it succeeded."""

    __tablename__ = "generations"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    checkpoint: Mapped[str | None] = mapped_column(String(64))  # as asked for (id or step); None: the final adapter
    artifact_id: Mapped[str] = mapped_column(String(40))
    step: Mapped[int] = mapped_column(Integer)  # the adapter's training step
    prompts: Mapped[list[str]] = mapped_column(JSON)
    max_new_tokens: Mapped[int] = mapped_column(Integer)
    temperature: Mapped[float] = mapped_column(Float)
    top_p: Mapped[float] = mapped_column(Float)
    seed: Mapped[int] = mapped_column(Integer)
    chat: Mapped[bool | None] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(String(20))
    completions: Mapped[list[str] | None] = mapped_column(JSON)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    worker_id: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    dispatched_at: Mapped[float | None] = mapped_column(Float)
    __table_args__ = (Index("ix_generations_status", "status"), Index("ix_generations_job", "job_id"))


class Worker(Base):
    """A worker process's device and memory, upserted at start and every heartbeat interval (worker/alive.py);
    `create` checks a job's estimate against the workers seen recently (service/preflight.py)."""

    __tablename__ = "workers"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)  # host:pid, as jobs' worker_id
    device: Mapped[str] = mapped_column(String(200))  # the GPU's or CPU's name
    kind: Mapped[str] = mapped_column(String(10))  # cpu | cuda
    total_bytes: Mapped[int] = mapped_column(BigInteger)
    free_bytes: Mapped[int] = mapped_column(BigInteger)
    started_at: Mapped[float] = mapped_column(Float)
    last_seen_at: Mapped[float] = mapped_column(Float, index=True)


class Export(Base):
    """An export of a job's adapter (final or a checkpoint's) with non-default `ExportOptions`, built by a worker:
    queued -> running -> succeeded | failed (service/exports.py). `source` is `final` or `step-N`, never null, so the
    unique (job, source, options) holds on PostgreSQL too (NULLs are distinct there). `path`, `sha256` and `bytes`
    describe the published zip under the artifact root once it succeeded; `heartbeat_at` moves with every progress
    report, so the sweep can tell a lost worker from a long merge."""

    __tablename__ = "exports"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    source: Mapped[str] = mapped_column(String(40))
    checkpoint_step: Mapped[int | None] = mapped_column(Integer)
    options: Mapped[dict[str, Any]] = mapped_column(JSON)  # ExportOptions.to_dict()
    options_key: Mapped[str] = mapped_column(String(400))  # ExportOptions.key()
    status: Mapped[str] = mapped_column(String(20))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    stage: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    path: Mapped[str | None] = mapped_column(Text)  # relative to the artifact root
    sha256: Mapped[str | None] = mapped_column(String(64))
    bytes: Mapped[int | None] = mapped_column(BigInteger)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    dispatched_at: Mapped[float | None] = mapped_column(Float)
    __table_args__ = (
        UniqueConstraint("job_id", "source", "options_key", name="uq_exports_job_source_options"),
        Index("ix_exports_status", "status"),
    )
