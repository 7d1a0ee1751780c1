"""Interleaved timing: after warm-up, one step of each variant per round, the order rotated every round, so load
from other processes on a shared machine falls on all variants alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from bench.hardware import synchronize


@dataclass
class StepTimes:
    seconds: list[float] = field(default_factory=list)
    event_steps: list[bool] = field(default_factory=list)  # which steps ran a growth event
    peak_bytes: list[int] = field(default_factory=list)  # CUDA: peak allocation above the step's start

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def quantile(self, q: float) -> float:
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    def median_where(self, event: bool) -> float | None:
        chosen = [s for s, e in zip(self.seconds, self.event_steps, strict=True) if e == event]
        return statistics.median(chosen) if chosen else None


def timed(step: Callable[[], bool], device: torch.device, times: StepTimes) -> None:
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        start_bytes = torch.cuda.memory_allocated(device)
    started = time.perf_counter()
    event = step()
    synchronize(device)
    times.seconds.append(time.perf_counter() - started)
    times.event_steps.append(event)
    if device.type == "cuda":
        times.peak_bytes.append(torch.cuda.max_memory_allocated(device) - start_bytes)


def round_robin(steps: Sequence[Callable[[], bool]], device: torch.device, warmup: int, rounds: int) -> list[StepTimes]:
    for _ in range(warmup):
        for step in steps:
            step()
    synchronize(device)
    results = [StepTimes() for _ in steps]
    n = len(steps)
    for r in range(rounds):
        for i in range(n):
            j = (i + r) % n
            timed(steps[j], device, results[j])
    return results
