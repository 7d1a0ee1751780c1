"""How a training run reports to its host (the CLI's progress bar, the worker's database recorder).

The trainer calls these in order: `on_start` once, then per optimizer step `on_step`, `on_growth` after a growth
event, `on_eval` after a validation pass, `on_checkpoint` after a checkpoint is complete on disk, and `should_stop`
after every optimizer step. `on_end` closes the run. Every method may be left out of an implementation by deriving
nothing: the trainer looks them up with `getattr`, so a host implements only what it needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol


@dataclass(frozen=True)
class StepMetrics:
    step: int
    total_steps: int
    train_loss: float
    learning_rate: float
    tokens_per_second: float
    trained_tokens: int
    grad_norm: float


@dataclass(frozen=True)
class GrowthEvent:
    step: int
    layer: int
    expert: int
    old_rank: int
    new_rank: int
    saliency: float
    frequency: float
    importance: float


@dataclass(frozen=True)
class ExpertStats:
    """Latest signals per layer x expert (lists of lists), reported with each growth event and at the end."""

    step: int
    frequency: list[list[float]]
    importance: list[list[float]]
    saliency: list[list[float]]
    ranks: list[list[int]]


StopReason = Literal["cancel", "pause", "shutdown"]


class Callback(Protocol):
    def on_start(self, total_steps: int, ranks: list[list[int]], start_step: int) -> None: ...
    def on_step(self, metrics: StepMetrics) -> None: ...
    def on_growth(self, events: list[GrowthEvent], stats: ExpertStats) -> None: ...
    def on_eval(self, step: int, valid_loss: float) -> None: ...
    def on_checkpoint(self, step: int, path: Path) -> None: ...
    def should_stop(self, step: int) -> StopReason | None: ...
    def on_end(self, step: int, stats: ExpertStats, stopped: StopReason | None) -> None: ...
