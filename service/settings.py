"""One settings object for every process, read from `DRLORA_*` environment variables, with embedded defaults.

Without any variable set, everything lives under `DRLORA_DATA_DIR` (default `~/.drlora`): a SQLite database in WAL
mode, kombu's filesystem broker, uploaded files, training runs and published artifacts. Production points
`DRLORA_DATABASE_URL` at PostgreSQL and `DRLORA_BROKER_URL` at Redis, and mounts `DRLORA_DATA_DIR` on shared storage
so that a job can resume on another worker from its last checkpoint.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DRLORA_", extra="ignore")

    data_dir: Path = Field(default_factory=lambda: Path.home() / ".drlora")
    database_url: str = ""  # empty: sqlite:///<data_dir>/drlora.db
    broker_url: str = ""  # empty: filesystem broker under <data_dir>/broker
    # Redis only: seconds before an unacknowledged message is handed out again (kombu's default, 1 h, when unset).
    broker_visibility_timeout_s: float | None = None
    artifact_dir: Path | None = None  # default <data_dir>/artifacts
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    # One JSON object a line, or plain text; unset: JSON for `drlora api` / `drlora worker`, text for `drlora serve`.
    log_format: Literal["json", "text"] | None = None

    max_upload_bytes: int = 100 * 2**20
    max_dataset_lines: int = 1_000_000
    max_line_bytes: int = 2**20
    # Every request body other than an upload (JSON); 413 above.
    max_body_bytes: Annotated[int, Field(gt=0)] = 2**20
    # Event streams (`?stream=true`) one API key may hold open in one API process (429 above); 0 disables.
    max_streams_per_key: Annotated[int, Field(ge=0)] = 10
    stream_poll_s: Annotated[float, Field(gt=0)] = 1.0  # how often an open stream looks for new events
    stream_keepalive_s: Annotated[float, Field(gt=0)] = 15.0  # a comment line on an idle stream this often
    db_pool_timeout_s: Annotated[float, Field(gt=0)] = 10.0  # an API request waits this long for a connection (503)

    # Per API key: bursts up to `rate_limit_requests`, then that many per window (429 above); 0 disables.
    rate_limit_requests: Annotated[int, Field(ge=0)] = 600
    rate_limit_window_s: Annotated[float, Field(gt=0)] = 60.0
    # Jobs a tenant may have queued or running at once (paused ones do not count); 0 disables.
    max_active_jobs_per_tenant: Annotated[int, Field(ge=0)] = 4

    heartbeat_interval_s: float = 10.0
    lease_s: float = 60.0
    sweep_interval_s: float = 15.0
    redispatch_after_s: float = 120.0
    max_attempts: int = 3
    job_time_limit_s: float = 7 * 24 * 3600.0
    default_checkpoint_every: int = 50
    device: str = "auto"
    # `create` checks a job's memory estimate against the workers that reported within this many seconds.
    worker_seen_within_s: Annotated[float, Field(gt=0)] = 300.0
    task_queue: str = "drlora"

    # `/metrics` (Prometheus): off when disabled (404); with a token, scrapes must send `Authorization: Bearer TOKEN`.
    metrics_enabled: bool = True
    metrics_token: str = ""

    # Webhooks: receivers on loopback, private, link-local or other non-global addresses are refused unless allowed.
    webhook_allow_private: bool = False
    webhook_max_attempts: Annotated[int, Field(ge=1)] = 10
    webhook_backoff_s: Annotated[float, Field(gt=0)] = 5.0  # the wait before the first retry; doubles each time
    webhook_backoff_max_s: Annotated[float, Field(gt=0)] = 3600.0
    webhook_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    webhook_poll_interval_s: Annotated[float, Field(gt=0)] = 1.0

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'drlora.db'}"

    @property
    def is_sqlite(self) -> bool:
        return self.sqlalchemy_url.startswith("sqlite")

    @property
    def broker(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    @property
    def artifact_root(self) -> Path:
        return self.artifact_dir or self.data_dir / "artifacts"

    @property
    def files_root(self) -> Path:
        return self.data_dir / "files"

    @property
    def runs_root(self) -> Path:
        return self.data_dir / "runs"

    def make_private_dirs(self) -> None:
        """The data folders, readable by this user only (0700), and an embedded SQLite file created 0600 (SQLite
        gives its -wal and -shm files the database file's mode)."""
        for folder in (self.data_dir, self.files_root, self.artifact_root):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        if self.is_sqlite and not self.database_url:
            os.close(os.open(self.data_dir / "drlora.db", os.O_CREAT | os.O_WRONLY, 0o600))


@lru_cache
def get_settings() -> Settings:
    return Settings()
