"""The DR-LoRA resources of a job: rank map and its history, per-expert signals, the metric series."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class GrowthEventPublic(BaseModel):
    step: int
    layer: int
    expert: int
    old_rank: int
    new_rank: int
    saliency: float
    frequency: float
    importance: float


class RanksPublic(BaseModel):
    object: Literal["fine_tuning.job.ranks"] = "fine_tuning.job.ranks"
    method: str
    r_init: int
    r_target: int
    r_max: int
    step: int | None
    ranks: list[list[int]]
    events: list[GrowthEventPublic]


class ExpertsPublic(BaseModel):
    object: Literal["fine_tuning.job.experts"] = "fine_tuning.job.experts"
    step: int | None
    frequency: list[list[float]]
    importance: list[list[float]]
    saliency: list[list[float]]
    ranks: list[list[int]]


class MetricPublic(BaseModel):
    step: int
    train_loss: float | None
    valid_loss: float | None
    learning_rate: float | None
    tokens_per_second: float | None
    grad_norm: float | None
    trained_tokens: int | None


class MetricsPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[MetricPublic]
    has_more: bool
