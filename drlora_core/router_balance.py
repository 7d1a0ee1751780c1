"""The model's own load-balancing loss while the router trains (`TrainConfig.train_router`).

transformers' MoE models compute it themselves (`load_balancing_loss_func` of their modeling file, returned as
`aux_loss`) when `output_router_logits` is on, and add it to `loss` only when given labels, which the trainer does not
pass. So inside `balance_loss` the model's config asks for router logits and a forward hook collects each forward's
`aux_loss`; the trainer adds `coef * aux_loss`. A model that returns no `aux_loss` gets no balance term.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


@contextmanager
def balance_loss(model: nn.Module, enabled: bool) -> Iterator[list[torch.Tensor]]:
    """Yield a list that receives the `aux_loss` of every forward of `model` inside the block (none if disabled)."""
    collected: list[torch.Tensor] = []
    if not enabled:
        yield collected
        return
    config: Any = model.config  # a transformers PretrainedConfig
    before = getattr(config, "output_router_logits", None)

    def keep(module: nn.Module, args: object, output: object) -> None:
        aux = getattr(output, "aux_loss", None)
        if isinstance(aux, torch.Tensor):
            collected.append(aux)

    handle = model.register_forward_hook(keep)
    config.output_router_logits = True
    try:
        yield collected
    finally:
        handle.remove()
        config.output_router_logits = before


def model_coefficient(model: nn.Module, configured: float | None) -> float:
    """The balance loss weight: the configured one, else the model's `router_aux_loss_coef` (0 when it has none)."""
    if configured is not None:
        return configured
    return float(getattr(model.config, "router_aux_loss_coef", 0.0) or 0.0)
