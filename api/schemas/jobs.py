from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt

from api.schemas.hyperparameters import DrLoraHyperparameters, LoraHyperparameters, StaticHyperparameters
from service.statuses import JobStatus


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DrLoraSpec(_Strict):
    hyperparameters: DrLoraHyperparameters = Field(default_factory=DrLoraHyperparameters)


class LoraSpec(_Strict):
    hyperparameters: LoraHyperparameters = Field(default_factory=LoraHyperparameters)


class StaticSpec(_Strict):
    hyperparameters: StaticHyperparameters = Field(default_factory=StaticHyperparameters)


class DrLoraMethod(_Strict):
    type: Literal["dr_lora"]
    dr_lora: DrLoraSpec = Field(default_factory=DrLoraSpec)


class LoraMethod(_Strict):
    type: Literal["lora"]
    lora: LoraSpec = Field(default_factory=LoraSpec)


class StaticMethod(_Strict):
    type: Literal["static"]
    static: StaticSpec = Field(default_factory=StaticSpec)


class SupervisedMethod(_Strict):
    """OpenAI's `supervised`: trained as `lora` (one rank for every expert), and shown as `lora` on the job."""

    type: Literal["supervised"]
    supervised: LoraSpec = Field(default_factory=LoraSpec)


Method = Annotated[DrLoraMethod | LoraMethod | StaticMethod | SupervisedMethod, Field(discriminator="type")]

METADATA_KEY = r"^[A-Za-z0-9_.\-]{1,64}$"


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL: refused here, not as a database error (on SQLite alike).
    if "\x00" in value:
        raise ValueError("must not contain a NUL character (\\u0000)")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]


Name = Annotated[Text, Field(min_length=1, max_length=200)]


class WandbIntegration(_Strict):
    project: Name
    name: Name | None = None
    entity: Name | None = None
    tags: list[Annotated[Text, Field(min_length=1, max_length=64)]] | None = Field(None, max_length=50)


class Integration(_Strict):
    """OpenAI's integration object: stored and shown on the job; no integration runs here (yet)."""

    type: Literal["wandb"]
    wandb: WandbIntegration


class JobCreate(_Strict):
    model: Text = Field(min_length=1, max_length=200)
    training_file: Text = Field(min_length=1, max_length=40)
    validation_file: Text | None = Field(None, min_length=1, max_length=40)
    # strict: JSON true must not become seed 1
    seed: StrictInt | None = Field(None, ge=0, le=2**31 - 1)
    suffix: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")
    metadata: dict[Annotated[str, Field(pattern=METADATA_KEY)], Annotated[Text, Field(max_length=512)]] | None = Field(
        None, max_length=16
    )
    method: Method | None = None
    hyperparameters: LoraHyperparameters | None = Field(
        None, description="OpenAI's legacy form: trained as `lora`; give it or `method`, not both")
    integrations: list[Integration] | None = Field(None, max_length=10)
    dry_run: bool = Field(False, description="drlora extension: answer the pre-flight estimate (memory by part, "
                                             "FLOPs per token, which workers hold it) without creating the job")


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class JobProgress(BaseModel):
    step: int
    total_steps: int | None


class JobPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    finished_at: int | None
    model: str
    fine_tuned_model: str | None
    status: JobStatus
    training_file: str
    validation_file: str | None
    hyperparameters: dict[str, Any]
    method: dict[str, Any]
    seed: int
    trained_tokens: int | None
    error: JobError | None
    result_files: list[str]
    estimated_finish: int | None
    metadata: dict[str, str] | None
    organization_id: str
    integrations: list[Integration] | None
    progress: JobProgress
    # Extension: a cancel or pause asked of a running job that its worker has not acted on yet.
    pending_action: Literal["cancel", "pause"] | None = None
    estimate: dict[str, Any] | None = Field(None, description="drlora extension: the pre-flight estimate made at "
                                                              "create (peak_bytes, device_bytes, parts, "
                                                              "flops_per_token); null for a model it cannot read")


class JobEstimate(BaseModel):
    """A dry-run create: `drlora estimate --json`'s object plus the resolved hyperparameters and the workers."""

    model_config = ConfigDict(extra="allow")
    object: Literal["fine_tuning.job.estimate"] = "fine_tuning.job.estimate"
    hyperparameters: dict[str, Any]
    workers: list[dict[str, Any]]
    fits: bool | None
    advice: list[str]


class JobsPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobPublic]
    has_more: bool


class EventPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] | None


class EventsPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[EventPublic]
    has_more: bool


class CheckpointPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, float | int | None]
    step_number: int


class CheckpointsPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[CheckpointPublic]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None
