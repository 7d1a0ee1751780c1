"""Routing profiles: `ProfileCreate` (the request), `ProfilePublic` (the `fine_tuning.profile` object)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas.hyperparameters import TRAIN, Auto, AutoOr, Rank
from api.schemas.jobs import JobError, Text
from service.profiles import DEFAULT_MAX_EXAMPLES
from service.statuses import JobStatus


class ProfileCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: Text = Field(min_length=1, max_length=200)
    training_file: Text = Field(min_length=1, max_length=40)
    max_examples: int = Field(DEFAULT_MAX_EXAMPLES, ge=1, le=65_536,
                              description="examples profiled (the first a job would train on), rounded up to a batch")
    max_seq_len: int = Field(TRAIN.max_seq_len, ge=8, le=131_072)
    batch_size: Annotated[int | Auto, AutoOr(int, 1, 4096)] = Field(TRAIN.batch_size)
    seed: int = Field(0, ge=0, le=2**31 - 1, description="a job's seed: with its batch size, which examples come first")
    r_init: Rank = Field("auto")
    r_target: Rank = Field("auto")
    r_max: Rank = Field("auto", description="for the `static` allocation shown; a multiple of RANK_MULTIPLE")


class LengthBinPublic(BaseModel):
    start: int
    end: int
    count: int


class LengthsPublic(BaseModel):
    records: int
    total_tokens: int
    min: int
    p50: int
    p90: int
    max: int
    histogram: list[LengthBinPublic]


class TruncationPublic(BaseModel):
    max_seq_len: int
    truncated_examples: int
    dropped_examples: int
    cut_tokens: int
    cut_fraction: float


class ProfilePublic(BaseModel):
    id: str
    object: Literal["fine_tuning.profile"] = "fine_tuning.profile"
    created_at: int
    finished_at: int | None
    status: JobStatus
    error: JobError | None
    model: str
    training_file: str
    max_examples: int
    hyperparameters: dict[str, int | float | str | None] = Field(
        description="resolved: max_seq_len, batch_size, seed, r_init, r_target, r_max")
    examples: int | None = Field(None, description="examples profiled")
    tokens: int | None = Field(None, description="their non-padding tokens, each routed once per layer")
    frequency: list[list[float]] | None = Field(
        None, description="layers x experts: each expert's share of its layer's routed tokens (rows sum to 1)")
    static_ranks: list[list[int]] | None = Field(
        None, description="layers x experts: the ranks `static` would fix from this frequency")
    lengths: LengthsPublic | None = Field(None, description="every record's tokens before max_seq_len cuts")
    truncation: TruncationPublic | None = None
