"""How a training run reports to its host (the CLI's progress bar, the worker's database recorder).

The trainer calls these in order: `on_start` once, then per optimizer step `on_step`, `on_growth` after a growth
event, `on_eval` after a validation pass, `on_checkpoint` after a checkpoint (with its PEFT `adapter/`) is complete
on disk, and `should_stop` after every optimizer step. `on_end` closes the run.

A host implements the whole `TrainingCallback` protocol (mypy checks it where the host is passed to the trainer).
A host that needs only a few hooks (a test, a benchmark) builds a `Hooks` from functions instead of subclassing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


class TrainingCallback(Protocol):
    def on_start(self, total_steps: int, ranks: list[list[int]], start_step: int) -> None: ...
    def on_step(self, metrics: StepMetrics) -> None: ...
    def on_growth(self, events: list[GrowthEvent], stats: ExpertStats) -> None: ...
    def on_eval(self, step: int, valid_loss: float) -> None: ...
    def on_checkpoint(self, step: int, path: Path) -> None: ...
    def should_stop(self, step: int) -> StopReason | None: ...
    def on_end(self, step: int, stats: ExpertStats, stopped: StopReason | None) -> None: ...


def _ignore(*args: object) -> None:
    return None


@dataclass(frozen=True)
class Hooks:
    """A `TrainingCallback` made of functions, each a no-op unless given: `Hooks(step=metrics.append)`."""

    start: Callable[[int, list[list[int]], int], None] = _ignore
    step: Callable[[StepMetrics], None] = _ignore
    growth: Callable[[list[GrowthEvent], ExpertStats], None] = _ignore
    eval: Callable[[int, float], None] = _ignore
    checkpoint: Callable[[int, Path], None] = _ignore
    stop: Callable[[int], StopReason | None] = _ignore
    end: Callable[[int, ExpertStats, StopReason | None], None] = _ignore

    def on_start(self, total_steps: int, ranks: list[list[int]], start_step: int) -> None:
        self.start(total_steps, ranks, start_step)

    def on_step(self, metrics: StepMetrics) -> None:
        self.step(metrics)

    def on_growth(self, events: list[GrowthEvent], stats: ExpertStats) -> None:
        self.growth(events, stats)

    def on_eval(self, step: int, valid_loss: float) -> None:
        self.eval(step, valid_loss)

    def on_checkpoint(self, step: int, path: Path) -> None:
        self.checkpoint(step, path)

    def should_stop(self, step: int) -> StopReason | None:
        return self.stop(step)

    def on_end(self, step: int, stats: ExpertStats, stopped: StopReason | None) -> None:
        self.end(step, stats, stopped)


@dataclass(frozen=True)
class CallbackList:
    """Several hosts as one, called in order; `should_stop` answers the first reason any of them gives."""

    callbacks: Sequence[TrainingCallback]

    def on_start(self, total_steps: int, ranks: list[list[int]], start_step: int) -> None:
        for cb in self.callbacks:
            cb.on_start(total_steps, ranks, start_step)

    def on_step(self, metrics: StepMetrics) -> None:
        for cb in self.callbacks:
            cb.on_step(metrics)

    def on_growth(self, events: list[GrowthEvent], stats: ExpertStats) -> None:
        for cb in self.callbacks:
            cb.on_growth(events, stats)

    def on_eval(self, step: int, valid_loss: float) -> None:
        for cb in self.callbacks:
            cb.on_eval(step, valid_loss)

    def on_checkpoint(self, step: int, path: Path) -> None:
        for cb in self.callbacks:
            cb.on_checkpoint(step, path)

    def should_stop(self, step: int) -> StopReason | None:
        return next((reason for cb in self.callbacks if (reason := cb.should_stop(step)) is not None), None)

    def on_end(self, step: int, stats: ExpertStats, stopped: StopReason | None) -> None:
        for cb in self.callbacks:
            cb.on_end(step, stats, stopped)
