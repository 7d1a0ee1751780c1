"""Activation checkpointing changes memory, not the result: the LoRA (and router) gradients of one step with and
without it are equal within fp32 tolerance, dropout included (the recompute replays the same random masks)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from drlora_core.activation_checkpointing import enable_activation_checkpointing
from drlora_core.families import find_experts
from drlora_core.loss import token_loss
from tests.support.engine import SMALL, adapted

BATCH, SEQ = 2, 12


def _step_gradients(family: str, checkpointing: bool) -> tuple[dict[str, torch.Tensor], int]:
    model, adapter = adapted(family, dataclasses.replace(SMALL, dropout=0.1))
    for site in find_experts(model):  # a trained router too: its gradient crosses the recomputed routing
        if site.router is not None:
            site.router.requires_grad_(True)
    model.train()
    if checkpointing:
        assert enable_activation_checkpointing(model)
    forwards = []
    first_layer = find_experts(model)[0].module
    first_layer.register_forward_pre_hook(lambda *_: forwards.append(1))  # a recompute may stop early, before a post-hook
    ids = torch.randint(1, 100, (BATCH, SEQ), generator=torch.Generator().manual_seed(3))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    torch.manual_seed(7)  # the same dropout masks in both runs
    with adapter.routing.training_forward(batch["attention_mask"]):
        loss = token_loss(model, batch, "sum")
        loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    return grads, len(forwards)


@pytest.mark.parametrize("family", ["qwen3_moe", "olmoe", "mixtral"])
def test_checkpointing_gives_the_same_gradients(family: str) -> None:
    plain, plain_forwards = _step_gradients(family, checkpointing=False)
    ckpt, ckpt_forwards = _step_gradients(family, checkpointing=True)
    assert (plain_forwards, ckpt_forwards) == (1, 2)  # checkpointing really recomputed the layer in backward
    assert plain and plain.keys() == ckpt.keys()
    assert all(g.abs().sum() > 0 for g in plain.values())  # every trained tensor got a gradient to compare
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)
