"""Activation (gradient) checkpointing across transformers versions."""

from __future__ import annotations

from torch import nn


def enable_activation_checkpointing(model: nn.Module) -> bool:
    """Non-reentrant checkpointing (frozen inputs need no grad); False when the model cannot do it."""
    options = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)  # type: ignore[operator]
        return True
    if hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)  # type: ignore[operator]
        return True
    return False
