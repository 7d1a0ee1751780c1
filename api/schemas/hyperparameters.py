"""Hyperparameters of the three methods; each method nests its own under its key, as OpenAI's `supervised` does.

Unknown fields are refused (a typo must not silently train with a default). The training fields are shared; the
rank fields differ: `dr_lora` grows ranks from `r_init` towards an average of `r_target` (never above `r_max`),
`lora` trains every expert at `r_target` (any value: the worker reserves the next multiple of 8), `static` fixes ranks in [r_init, r_max] from routing frequency before
training, averaging `r_target`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

# The engine's grouped kernels need r_max to be a multiple of this (drlora_core.config.RANK_MULTIPLE, which the API
# may not import; a service test pins the two equal).
RANK_MULTIPLE = 8


class TrainingHyperparameters(BaseModel):
    # A JSON number such as 1e999 parses to inf: refused, as a database cannot store it (and it cannot train).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    n_epochs: int = Field(1, ge=1, le=1000)
    max_steps: int | None = Field(None, ge=1, le=10_000_000, description="optimizer steps; overrides n_epochs")
    batch_size: int = Field(8, ge=1, le=4096)
    grad_accum: int = Field(1, ge=1, le=1024)
    learning_rate: float = Field(2e-5, gt=0, le=1)
    weight_decay: float = Field(0.0, ge=0, le=1)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    max_seq_len: int = Field(512, ge=8, le=131_072)
    train_router: bool = False
    dropout: float = Field(0.1, ge=0, lt=1)
    alpha: float | None = Field(None, gt=0, description="LoRA alpha; default 2 * r_max")
    checkpoint_every: int | None = Field(None, ge=0, description="steps between checkpoints; 0 = only at the end")
    eval_every: int = Field(0, ge=0)


class DrLoraHyperparameters(TrainingHyperparameters):
    r_init: int = Field(8, ge=1, le=1024)
    r_target: int = Field(16, ge=1, le=1024)
    r_max: int = Field(32, ge=1, le=1024, validate_default=True)
    growth_interval: int = Field(200, ge=1)
    grow_frac: float = Field(0.1, gt=0, le=1)
    beta_f: float = Field(0.9, ge=0, lt=1)
    beta_g: float = Field(0.9, ge=0, lt=1)
    gamma: float = Field(1.2, ge=0, le=10)

    @field_validator("r_max")
    @classmethod
    def _ranks_ordered(cls, r_max: int, info: ValidationInfo) -> int:
        return _check_ranks(info.data.get("r_init"), info.data.get("r_target"), r_max)


class StaticHyperparameters(TrainingHyperparameters):
    r_init: int = Field(8, ge=1, le=1024)
    r_target: int = Field(16, ge=1, le=1024)
    r_max: int = Field(32, ge=1, le=1024, validate_default=True)
    beta_f: float = Field(0.9, ge=0, lt=1)

    @field_validator("r_max")
    @classmethod
    def _ranks_ordered(cls, r_max: int, info: ValidationInfo) -> int:
        return _check_ranks(info.data.get("r_init"), info.data.get("r_target"), r_max)


class LoraHyperparameters(TrainingHyperparameters):
    r_target: int = Field(16, ge=1, le=1024)


def _check_ranks(r_init: int | None, r_target: int | None, r_max: int) -> int:
    if r_init is None or r_target is None:  # already refused on their own
        return r_max
    if r_max % RANK_MULTIPLE:
        raise ValueError(f"r_max must be a multiple of {RANK_MULTIPLE} (the grouped expert kernels need aligned "
                         f"ranks), got {r_max}; try {-(-r_max // RANK_MULTIPLE) * RANK_MULTIPLE}")
    if not r_init <= r_target <= r_max:
        raise ValueError(
            f"ranks must satisfy r_init <= r_target <= r_max, got {r_init} <= {r_target} <= {r_max}; "
            "raise r_max or lower r_init"
        )
    return r_max
