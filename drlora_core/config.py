"""Plain configuration records for a DR-LoRA run; JSON-serialisable so checkpoints carry their own config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Method = Literal["dr_lora", "lora", "static"]
METHODS: tuple[str, ...] = ("dr_lora", "lora", "static")
RANK_MULTIPLE = 8


class ConfigError(ValueError):
    """A configuration value is impossible; the message names the parameter and what to change."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


@dataclass(frozen=True)
class LoraConfig:
    """The rank-growth method (DRLORA.md, 'Symbols and defaults')."""

    method: Method = "dr_lora"
    r_init: int = 8
    r_target: int = 16
    r_max: int = 32
    growth_interval: int = 200
    grow_frac: float = 0.1
    beta_f: float = 0.9
    beta_g: float = 0.9
    gamma: float = 1.2
    alpha: float | None = None  # None means 2 * r_max
    dropout: float = 0.1
    weight_frequency_by_routing: bool = False

    @property
    def scaling(self) -> float:
        alpha = self.alpha if self.alpha is not None else 2.0 * self.r_max
        return alpha / self.r_max

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ConfigError("method", f"must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.r_init < 1:
            raise ConfigError("r_init", f"must be at least 1, got {self.r_init}")
        if not self.r_init <= self.r_target <= self.r_max:
            raise ConfigError(
                "r_target",
                f"ranks must satisfy r_init <= r_target <= r_max, got {self.r_init} <= {self.r_target} <= "
                f"{self.r_max}; raise r_max or lower r_init",
            )
        if self.r_max % RANK_MULTIPLE:
            raise ConfigError("r_max", f"must be a multiple of {RANK_MULTIPLE} (grouped GEMM kernels need aligned "
                                       f"rank strides), got {self.r_max}; try {-(-self.r_max // 8) * 8}")
        if self.growth_interval < 1:
            raise ConfigError("growth_interval", f"must be at least 1, got {self.growth_interval}")
        if not 0.0 < self.grow_frac <= 1.0:
            raise ConfigError("grow_frac", f"must be in (0, 1], got {self.grow_frac}")
        for name in ("beta_f", "beta_g"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(name, f"must be in [0, 1), got {value}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and data settings of one run."""

    max_steps: int | None = None  # optimizer steps; None means epochs * steps per epoch
    epochs: int = 1
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 2e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    max_seq_len: int = 512
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    bf16: bool = True  # autocast on CUDA only
    gradient_checkpointing: bool = False
    train_router: bool = False  # after warmup; the router is always frozen during warmup
    checkpoint_every: int = 0  # optimizer steps; 0 = only at the end
    eval_every: int = 0  # optimizer steps; 0 = only at the end
    experts_impl: Literal["grouped", "loop"] = "grouped"

    def validate(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "grad_accum": self.grad_accum,
                    "max_seq_len": self.max_seq_len}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(name, f"must be at least 1, got {value}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError("max_steps", f"must be at least 1, got {self.max_steps}")
        if self.lr <= 0:
            raise ConfigError("lr", f"must be positive, got {self.lr}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError("warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs besides the model and the data."""

    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        self.lora.validate()
        self.train.validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        return cls(lora=LoraConfig(**data["lora"]), train=TrainConfig(**data["train"]))
