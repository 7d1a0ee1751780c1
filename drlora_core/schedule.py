"""When growth events happen (DRLORA.md, 'Growth schedule and budget'): plain arithmetic, standard library only, so
that `create` can check a plan before it queues a job (`service.runconfig`), and the trainer follows the same steps
(`growth.plan_growth`)."""

from __future__ import annotations

import math


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """The trainer's warmup: the first `ceil(warmup_ratio * total)` steps."""
    return math.ceil(warmup_ratio * total_steps)


def growth_start(warmup: int) -> int:
    """Growth begins once warmup ends, and never at step 0."""
    return max(warmup, 1)


def growth_steps(total_steps: int, warmup: int, interval: int) -> tuple[int, ...]:
    """Events at start, start + T, ... <= total - T (each event leaves at least T steps to train what it grew)."""
    return tuple(range(growth_start(warmup), total_steps - interval + 1, interval))
