"""The model's own load-balancing loss while the router trains (`TrainConfig.train_router`).

transformers' MoE models compute it themselves (`load_balancing_loss_func` of their modeling file, returned as
`aux_loss`) when `output_router_logits` is on, and add it to `loss` only when given labels, which the trainer does not
pass. The trainer's loss (drlora_core/loss.py) runs only the decoder, which returns the router logits but not the
loss, so inside `balance_loss` the model's config asks for router logits and a hook on the decoder computes each
forward's loss with the modeling file's own `load_balancing_loss_func`; the trainer adds `coef * aux_loss`. A model
whose modeling file has no such function gets no balance term.
"""

from __future__ import annotations

import sys
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

    loss_func = getattr(sys.modules.get(type(model).__module__), "load_balancing_loss_func", None)
    experts = getattr(config, "num_experts", None) or getattr(config, "num_local_experts", None)
    top_k = getattr(config, "num_experts_per_tok", None)

    def keep(module: nn.Module, args: tuple[object, ...], kwargs: dict[str, Any], output: object) -> None:
        logits = getattr(output, "router_logits", None)
        if loss_func is None or not logits or experts is None or top_k is None:
            return
        aux = loss_func(logits, experts, top_k, kwargs.get("attention_mask"))
        if isinstance(aux, torch.Tensor):
            collected.append(aux)

    decoder: nn.Module = model.get_decoder() if hasattr(model, "get_decoder") else model  # type: ignore[operator]
    handle = decoder.register_forward_hook(keep, with_kwargs=True)
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
