"""Adapter exports: `ExportCreate` (the request), `ExportPublic` (the `fine_tuning.job.export` object), `ExportsPublic`.

The options are plain strings here and validated by `drlora_core.export_options.ExportOptions` (service/exports.py),
so that a bad value answers 400 with that class's message, naming the parameter."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas.jobs import JobError, Text
from service.statuses import JobStatus


class ExportCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layout: Text | None = Field(None, max_length=40, description="`fused` (default), `per_expert` or `merged`")
    dtype: Text | None = Field(None, max_length=40, description="`auto` (default), `fp32` or `bf16`")
    base_model_name_or_path: Text | None = Field(
        None, max_length=1000, description="written into adapter_config.json; default: the trained model's name")
    max_rank: int | None = Field(None, description="experts above it are compressed by truncated SVD")
    checkpoint: Text | int | None = Field(None, description="a checkpoint id or step number; default: the final "
                                                            "adapter")


class ExportPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job.export"] = "fine_tuning.job.export"
    fine_tuning_job_id: str
    checkpoint_step: int | None = Field(description="null: built from the job's final adapter")
    layout: str
    dtype: str
    base_model_name_or_path: str | None
    max_rank: int | None
    status: JobStatus = Field(description="queued, running, succeeded or failed")
    progress: float = Field(description="0 to 1")
    stage: str | None = Field(description="what the worker is doing now")
    error: JobError | None
    bytes: int | None = Field(description="size of the zip once it succeeded")
    sha256: str | None = Field(description="sha256 of the zip once it succeeded (also its ETag)")
    content_url: str = Field(description="where the zip is downloaded once it succeeded")
    created_at: int
    finished_at: int | None


class ExportsPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[ExportPublic]
    has_more: bool = False
