"""Where a batch runs: moving it to the device and the autocast a run's dtype asks for (the trainer's and the
routing profile's forwards use the same two)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

Batch = dict[str, torch.Tensor]


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def autocast(device: torch.device, bf16: bool) -> AbstractContextManager[object]:
    """bf16 autocast on CUDA when the run computes in bf16; a CPU run computes in fp32 whatever it asked."""
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()
