"""Hyperparameters of the three methods; each method nests its own under its key, as OpenAI's `supervised` does.

Every default comes from `drlora_core.config.RunConfig()`, so this document, `drlora train --help` and the engine
agree by construction. Size-dependent values default to "auto" (resolved at create from the model and the file; the
job object shows what was chosen). The bounds here only cap what a request may ask for; whether values fit together
(r_init <= r_target <= r_max, r_max a multiple of RANK_MULTIPLE) is decided by RunConfig itself when the service
builds it (`service.runconfig`). Unknown fields are refused (a typo must not silently train with a default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic_core import CoreSchema, core_schema

from drlora_core.config import AUTO, Dtype, RunConfig, SaliencySignal, StaticProfile

DEFAULT = RunConfig()
LORA, TRAIN = DEFAULT.lora, DEFAULT.train
Auto = Literal["auto"]


@dataclass(frozen=True)
class AutoOr:
    """Annotated metadata: a number in [low, high] ((low, high] when `low_open`) or "auto". One validator for the
    whole union, so an error names the field itself rather than a member of the union."""

    kind: type[int] | type[float]
    low: float
    high: float
    low_open: bool = False

    def check(self, value: object) -> int | float | str:
        if value == AUTO:
            return AUTO
        noun = "an integer" if self.kind is int else "a number"
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or (
                self.kind is int and not float(value).is_integer()):
            raise ValueError(f"must be {noun} or 'auto', got {value!r}")
        number = self.kind(value)
        if number > self.high or number < self.low or (self.low_open and number == self.low):
            raise ValueError(f"must be {'above' if self.low_open else 'at least'} {self.low:g} and at most "
                             f"{self.high:g} (or 'auto'), got {value!r}")
        return number

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(self.check)

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        number = {"type": "integer" if self.kind is int else "number",
                  "exclusiveMinimum" if self.low_open else "minimum": self.low, "maximum": self.high}
        return {"anyOf": [number, {"const": AUTO, "type": "string"}]}


Rank = Annotated[int | Auto, AutoOr(int, 1, 1024)]


class TrainingHyperparameters(BaseModel):
    # A JSON number such as 1e999 parses to inf: refused, as a database cannot store it (and it cannot train).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    n_epochs: Annotated[int | Auto, AutoOr(int, 1, 1000)] = Field(TRAIN.epochs)
    max_steps: int | None = Field(TRAIN.max_steps, ge=1, le=10_000_000,
                                  description="optimizer steps; overrides n_epochs")
    batch_size: Annotated[int | Auto, AutoOr(int, 1, 4096)] = Field(TRAIN.batch_size)
    grad_accum: int = Field(TRAIN.grad_accum, ge=1, le=1024)
    learning_rate: Annotated[float | Auto, AutoOr(float, 0, 1, low_open=True)] = Field(TRAIN.lr)
    learning_rate_multiplier: Annotated[float | Auto, AutoOr(float, 0, 100, low_open=True)] = Field(
        AUTO, description="OpenAI's name: scales the auto learning rate (learning_rate = multiplier x the auto "
                          "learning rate); auto: 1, or learning_rate / the auto learning rate when learning_rate is set")
    weight_decay: float = Field(TRAIN.weight_decay, ge=0, le=1)
    warmup_ratio: float = Field(TRAIN.warmup_ratio, ge=0, lt=1)
    max_seq_len: int = Field(TRAIN.max_seq_len, ge=8, le=131_072)
    train_router: bool = Field(TRAIN.train_router, description="train the router after warmup, with the model's own "
                                                                "load-balancing loss")
    router_aux_loss_coef: float | None = Field(TRAIN.router_aux_loss_coef, ge=0, le=1,
                                               description="with train_router: the balance loss weight; default "
                                                           "the model's router_aux_loss_coef")
    dropout: float = Field(LORA.dropout, ge=0, lt=1)
    alpha: float | None = Field(LORA.alpha, gt=0, description="LoRA alpha; default 2 * r_max")
    checkpoint_every: int | None = Field(None, ge=0, description="steps between checkpoints; 0 = only at the end; "
                                                                 "default: the deployment's setting")
    eval_every: int = Field(TRAIN.eval_every, ge=0)
    dtype: Dtype = Field(TRAIN.dtype, description="auto: bf16 on CUDA, fp32 on the CPU")
    gradient_checkpointing: bool | Auto = Field(TRAIN.gradient_checkpointing,
                                                description="activation checkpointing; auto: on only when that makes the job "
                                                            "fit a worker seen recently")


class DrLoraHyperparameters(TrainingHyperparameters):
    r_init: Rank = Field(LORA.r_init)
    r_target: Rank = Field(LORA.r_target)
    r_max: Rank = Field(LORA.r_max, description="reserved rank; a multiple of the kernels' RANK_MULTIPLE")
    growth_interval: Annotated[int | Auto, AutoOr(int, 1, 10_000_000)] = Field(LORA.growth_interval)
    grow_frac: float = Field(LORA.grow_frac, gt=0, le=1)
    beta_f: float = Field(LORA.beta_f, ge=0, lt=1)
    beta_g: float = Field(LORA.beta_g, ge=0, lt=1)
    gamma: float = Field(LORA.gamma, ge=0, le=10)
    growth_end_ratio: float = Field(LORA.growth_end_ratio, gt=0, le=1,
                                    description="the last growth event at or before this share of the steps")
    saliency_signal: SaliencySignal = Field(LORA.saliency_signal,
                                            description="f_g: the paper's; f or g alone; g_per_token: our variant, "
                                                        "importance per routed token")
    per_slice_adam_steps: bool = Field(LORA.per_slice_adam_steps,
                                       description="AdamW bias correction keyed on each rank slice's own age")


class StaticHyperparameters(TrainingHyperparameters):
    r_init: Rank = Field(LORA.r_init)
    r_target: Rank = Field(LORA.r_target)
    r_max: Rank = Field(LORA.r_max, description="reserved rank; a multiple of the kernels' RANK_MULTIPLE")
    beta_f: float = Field(LORA.beta_f, ge=0, lt=1)
    static_profile: StaticProfile = Field(LORA.static_profile,
                                          description="frequency: routing counts before training; saliency: f*g "
                                                      "over the warmup steps")


class LoraHyperparameters(TrainingHyperparameters):
    """One rank for every expert; the worker reserves the next multiple of RANK_MULTIPLE."""

    r_target: Rank = Field(LORA.r_target)
