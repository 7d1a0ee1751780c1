"""The routing profile: how many tokens each layer's router sends to each expert over a pass of the base model,
without training. `static` fixes its ranks from it before the first step, and the service's profiles resource
(`drlora_core.profile_run`) reports it before a job is created; both run this one pass.

The pass counts exactly what a training forward counts (`RoutingState.training_forward`: non-padding tokens, top-k
assignments), in eval mode and without gradients; the adapter's B matrices start at zero, so the routing it sees is
the base model's. Its batches are the trainer's own: the first batches of epoch 0 of the same `BatchStream`, so a
profile of a job's data and settings counts the same tokens the job's first steps route.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn

from drlora_core.adapter import Adapter
from drlora_core.config import LoraConfig
from drlora_core.data import BatchStream
from drlora_core.device import Batch, autocast, to_device
from drlora_core.growth import proportional_ranks

# `static` profiles at most this many batches of its training data.
STATIC_PROFILE_BATCHES = 64


def profile_batches(stream: BatchStream, max_batches: int) -> Iterator[Batch]:
    """The first `max_batches` batches of epoch 0 (the trainer's order), at most one epoch's worth."""
    if max_batches < 1:
        raise ValueError(f"max_batches must be at least 1, got {max_batches}")
    for index in range(min(stream.steps_per_epoch, max_batches)):
        yield stream.batch_at(0, index * stream.batch_size)


@torch.no_grad()
def routing_counts(model: nn.Module, adapter: Adapter, batches: Iterable[Batch], device: torch.device,
                   dtype: torch.dtype) -> torch.Tensor:
    """(layers, experts) routed-token counts over `batches` (host tensor); the model is left in eval mode."""
    model.eval()
    adapter.routing.take_counts()  # nothing counted before this pass may leak into it
    for batch in batches:
        batch = to_device(batch, device)
        with adapter.routing.training_forward(batch["attention_mask"]), autocast(device, dtype):
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    return adapter.routing.take_counts().cpu()


def routing_shares(counts: torch.Tensor, experts_per_layer: list[int]) -> list[list[float]]:
    """Each layer's counts as shares of its routed tokens (a row sums to 1; uniform if the layer saw nothing)."""
    shares = []
    for layer, n in enumerate(experts_per_layer):
        row = counts[layer, :n].double()
        total = float(row.sum())
        shares.append((row / total).tolist() if total > 0 else [1.0 / n] * n)
    return shares


def static_ranks(counts: torch.Tensor, experts_per_layer: list[int], lora: LoraConfig) -> list[list[int]]:
    """`static`'s rank map: per layer, ranks proportional to routing within [r_init, r_max], r_target on average."""
    r_init, r_target, r_max = lora.ranks
    return [proportional_ranks(counts[layer, :n].tolist(), n * r_target, r_init, r_max)
            for layer, n in enumerate(experts_per_layer)]
