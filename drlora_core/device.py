"""Where a batch runs: moving it to the device and the autocast a run's compute dtype asks for (the trainer's and
the routing profile's forwards use the same two)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

Batch = dict[str, torch.Tensor]


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def autocast(device: torch.device, dtype: torch.dtype) -> AbstractContextManager[object]:
    """Mixed precision in `dtype` (bf16 works on CPU too); fp32 runs as it is."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)
