"""The run configuration: the one source of defaults and rank rules for every door (the API, `drlora train`, the
worker and the engine). Standard library only, so the API process can import it without torch.

Size-dependent settings default to "auto", as in OpenAI's API; `drlora_core.autoconfig.resolve` replaces them from
the model's size and the dataset's length before a run starts. Each record validates itself on construction: an
impossible value raises `ConfigError` naming the parameter and what would work.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Method = Literal["dr_lora", "lora", "static"]
METHODS: tuple[Method, ...] = ("dr_lora", "lora", "static")
Auto = Literal["auto"]
AUTO: Auto = "auto"
Dtype = Literal["auto", "bf16", "fp32"]
DTYPES: tuple[Dtype, ...] = ("auto", "bf16", "fp32")
# What a growth event ranks experts by: the paper's f*g, one factor alone, or (our variant, not the paper's) slice
# importance per routed token, g / f, a demand signal that does not grow with an expert's traffic.
SaliencySignal = Literal["f_g", "f", "g", "g_per_token"]
SALIENCY_SIGNALS: tuple[SaliencySignal, ...] = ("f_g", "f", "g", "g_per_token")
# How `static` measures its profile: routing counts on a pass over the data (the paper's baseline), or f*g
# measured over the warmup steps and applied once when warmup ends.
StaticProfile = Literal["frequency", "saliency"]
STATIC_PROFILES: tuple[StaticProfile, ...] = ("frequency", "saliency")
# The grouped expert kernels need aligned rank strides: r_max is always a multiple of this.
RANK_MULTIPLE = 8


class ConfigError(ValueError):
    """A configuration value is impossible; the message names the parameter and what to change."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


def aligned_rank(rank: int) -> int:
    """The smallest multiple of RANK_MULTIPLE that holds `rank`."""
    return -(-rank // RANK_MULTIPLE) * RANK_MULTIPLE


@dataclass(frozen=True)
class LoraConfig:
    """The rank-growth method (DRLORA.md, 'Symbols and defaults'). Ranks and the growth interval are "auto" until
    resolved; for `lora`, r_init and r_max follow r_target (r_max the next multiple of RANK_MULTIPLE)."""

    method: Method = "dr_lora"
    r_init: int | Auto = AUTO
    r_target: int | Auto = AUTO
    r_max: int | Auto = AUTO
    growth_interval: int | Auto = AUTO
    grow_frac: float = 0.1
    beta_f: float = 0.9
    beta_g: float = 0.9
    gamma: float = 1.2
    alpha: float | None = None  # None means 2 * r_max
    dropout: float = 0.1
    weight_frequency_by_routing: bool = False
    growth_end_ratio: float = 1.0  # the last growth event at or before this share of the steps (1.0: total - T)
    saliency_signal: SaliencySignal = "f_g"
    static_profile: StaticProfile = "frequency"
    per_slice_adam_steps: bool = False  # AdamW bias correction keyed on each rank slice's own age

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError("method", f"must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method == "lora" and isinstance(self.r_target, int):
            # One rank for every expert: nothing grows, and the kernels reserve the aligned rank.
            if self.r_init == AUTO:
                object.__setattr__(self, "r_init", self.r_target)
            if self.r_max == AUTO:
                object.__setattr__(self, "r_max", aligned_rank(self.r_target))
        for name in ("r_init", "r_target", "r_max", "growth_interval"):
            _check_int_or_auto(name, getattr(self, name), minimum=1)
        self._check_ranks()
        if not 0.0 < self.grow_frac <= 1.0:
            raise ConfigError("grow_frac", f"must be in (0, 1], got {self.grow_frac}")
        for name in ("beta_f", "beta_g"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(name, f"must be in [0, 1), got {value}")
        if self.alpha is not None and not self.alpha > 0:
            raise ConfigError("alpha", f"must be positive (or unset for 2 * r_max), got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout", f"must be in [0, 1), got {self.dropout}")
        if isinstance(self.growth_end_ratio, bool) or not 0.0 < self.growth_end_ratio <= 1.0:
            raise ConfigError("growth_end_ratio", f"must be in (0, 1], got {self.growth_end_ratio!r}")
        if self.saliency_signal not in SALIENCY_SIGNALS:
            raise ConfigError("saliency_signal", f"must be one of {', '.join(SALIENCY_SIGNALS)}, "
                                                 f"got {self.saliency_signal!r}")
        if self.static_profile not in STATIC_PROFILES:
            raise ConfigError("static_profile", f"must be one of {', '.join(STATIC_PROFILES)}, "
                                                f"got {self.static_profile!r}")

    def _check_ranks(self) -> None:
        if isinstance(self.r_max, int) and self.r_max % RANK_MULTIPLE:
            raise ConfigError("r_max", f"must be a multiple of {RANK_MULTIPLE} (the grouped expert kernels need "
                                       f"aligned ranks), got {self.r_max}; try {aligned_rank(self.r_max)}")
        r_init, r_target, r_max = self.r_init, self.r_target, self.r_max
        if isinstance(r_init, int) and isinstance(r_target, int) and r_init > r_target:
            raise ConfigError("r_init", f"ranks must satisfy r_init <= r_target <= r_max, got r_init {r_init} > "
                                        f"r_target {r_target}; lower r_init or raise r_target")
        if isinstance(r_target, int) and isinstance(r_max, int) and r_target > r_max:
            raise ConfigError("r_max", f"ranks must satisfy r_init <= r_target <= r_max, got r_target {r_target} > "
                                       f"r_max {r_max}; raise r_max to {aligned_rank(r_target)} or more")

    @property
    def ranks(self) -> tuple[int, int, int]:
        """(r_init, r_target, r_max) of a resolved configuration."""
        return _resolved("r_init", self.r_init), _resolved("r_target", self.r_target), _resolved("r_max", self.r_max)

    @property
    def interval(self) -> int:
        """The resolved growth interval."""
        return _resolved("growth_interval", self.growth_interval)

    @property
    def scaling(self) -> float:
        r_max = self.ranks[2]
        alpha = self.alpha if self.alpha is not None else 2.0 * r_max
        return alpha / r_max


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and data settings of one run. `epochs`, `batch_size`, `lr` and `gradient_checkpointing` are
    "auto" until resolved; `dtype` "auto" is decided on the device: bf16 on CUDA, fp32 elsewhere."""

    max_steps: int | None = None  # optimizer steps; None means epochs * steps per epoch
    epochs: int | Auto = AUTO
    batch_size: int | Auto = AUTO
    grad_accum: int = 1
    lr: float | Auto = AUTO
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    max_seq_len: int = 512
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: Dtype = "auto"
    gradient_checkpointing: bool | Auto = AUTO
    train_router: bool = False  # after warmup; the router is always frozen during warmup
    # With train_router: weight of the model's own load-balancing loss; None means the model's router_aux_loss_coef.
    router_aux_loss_coef: float | None = None
    checkpoint_every: int = 0  # optimizer steps; 0 = only at the end
    eval_every: int = 0  # optimizer steps; 0 = only at the end
    experts_impl: Literal["grouped", "loop"] = "grouped"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            _check_int_or_auto(name, getattr(self, name), minimum=1)
        for name in ("grad_accum", "max_seq_len"):
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("seed", "checkpoint_every", "eval_every"):
            _check_int(name, getattr(self, name), minimum=0)
        if self.max_steps is not None:
            _check_int("max_steps", self.max_steps, minimum=1)
        if self.lr != AUTO and (isinstance(self.lr, bool) or not isinstance(self.lr, int | float) or self.lr <= 0):
            raise ConfigError("lr", f"must be a positive number or 'auto', got {self.lr!r}")
        if not 0.0 <= self.weight_decay <= 1.0:
            raise ConfigError("weight_decay", f"must be in [0, 1], got {self.weight_decay}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError("warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        if not self.max_grad_norm > 0:
            raise ConfigError("max_grad_norm", f"must be positive, got {self.max_grad_norm}")
        if self.dtype not in DTYPES:
            raise ConfigError("dtype", f"must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.gradient_checkpointing not in (True, False, AUTO):
            raise ConfigError("gradient_checkpointing",
                              f"must be true, false or 'auto', got {self.gradient_checkpointing!r}")
        if self.router_aux_loss_coef is not None and (isinstance(self.router_aux_loss_coef, bool)
                                                      or not 0.0 <= self.router_aux_loss_coef <= 1.0):
            raise ConfigError("router_aux_loss_coef", f"must be in [0, 1] (or unset for the model's own), "
                                                      f"got {self.router_aux_loss_coef!r}")
        if self.experts_impl not in ("grouped", "loop"):
            raise ConfigError("experts_impl", f"must be 'grouped' or 'loop', got {self.experts_impl!r}")

    @property
    def resolved_epochs(self) -> int:
        return _resolved("epochs", self.epochs)

    @property
    def resolved_batch_size(self) -> int:
        return _resolved("batch_size", self.batch_size)

    @property
    def resolved_lr(self) -> float:
        if isinstance(self.lr, str):
            raise ConfigError("lr", "is still 'auto'; resolve the configuration with drlora_core.autoconfig.resolve")
        return float(self.lr)


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs besides the model and the data."""

    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def unresolved(self) -> list[str]:
        """The settings still "auto" that `autoconfig.resolve` must decide before the engine can run."""
        decided_on_device = ("device", "dtype")
        unused = ("epochs",) if self.train.max_steps is not None else ()
        return [f.name for part in (self.lora, self.train) for f in dataclasses.fields(part)
                if getattr(part, f.name) == AUTO and f.name not in decided_on_device + unused]

    def require_resolved(self) -> None:
        if names := self.unresolved():
            raise ConfigError(names[0], f"{', '.join(names)} are still 'auto'; resolve them with "
                                        "drlora_core.autoconfig.resolve (the API and `drlora train` do) or set them")

    def on_device(self, device: str) -> RunConfig:
        return dataclasses.replace(self, train=dataclasses.replace(self.train, device=device))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        return cls(lora=LoraConfig(**data["lora"]), train=TrainConfig(**data["train"]))


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(name, f"must be an integer of at least {minimum}, got {value!r}")


def _check_int_or_auto(name: str, value: object, minimum: int) -> None:
    if value != AUTO:
        _check_int(name, value, minimum)


def _resolved(name: str, value: int | Auto) -> int:
    if value == AUTO:
        raise ConfigError(name, "is still 'auto'; resolve the configuration with drlora_core.autoconfig.resolve")
    assert isinstance(value, int)
    return value
