"""Routing frequency: the router's real top-k, padding excluded, training forwards only, once per forward."""

import pytest
import torch

from drlora_core.activation_checkpointing import enable_activation_checkpointing
from drlora_core.adapter import attach
from drlora_core.tiny import FAMILIES, build_tiny
from tests.support.engine import SMALL

IDS = torch.randint(3, 128, (3, 10), generator=torch.Generator().manual_seed(3))
MASK = torch.ones(3, 10, dtype=torch.long)
MASK[1, 6:] = 0
MASK[2, 3:] = 0
TOP_K = 2


@pytest.mark.parametrize("family", FAMILIES)
def test_counts_equal_non_padding_tokens_times_k(family):
    model = build_tiny(family)
    adapter = attach(model, SMALL)
    with adapter.routing.training_forward(MASK):
        model(input_ids=IDS, attention_mask=MASK)
    counts = adapter.routing.take_counts()
    expected = int(MASK.sum()) * TOP_K
    assert counts.sum(dim=1).tolist() == [expected] * len(adapter.sites)
    assert adapter.routing.take_counts().sum() == 0  # taking resets


@pytest.mark.parametrize("family", FAMILIES)
def test_eval_and_generation_forwards_are_not_counted(family):
    model = build_tiny(family)
    adapter = attach(model, SMALL)
    with torch.no_grad():
        model(input_ids=IDS, attention_mask=MASK)
    assert adapter.routing.take_counts().sum() == 0


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral", "gpt_oss"])
def test_gradient_checkpointing_counts_each_forward_once(family):
    model = build_tiny(family)
    assert enable_activation_checkpointing(model)
    model.train()
    adapter = attach(model, SMALL)
    calls = []
    original = adapter.routing.record

    def spy(layer, index, weights):
        calls.append(layer)
        original(layer, index, weights)

    adapter.routing.record = spy
    with adapter.routing.training_forward(MASK):
        out = model(input_ids=IDS, attention_mask=MASK).logits
        out.float().pow(2).mean().backward()  # recomputes every layer inside the counting block
    assert len(calls) == 2 * len(adapter.sites)  # the experts really ran twice ...
    counts = adapter.routing.take_counts()
    assert counts.sum(dim=1).tolist() == [int(MASK.sum()) * TOP_K] * len(adapter.sites)  # ... but count once


def test_weighted_counts_sum_to_routing_weight():
    model = build_tiny("mixtral")  # normalised top-k weights: each token's weights sum to 1
    adapter = attach(model, SMALL.__class__(**{**SMALL.__dict__, "weight_frequency_by_routing": True}))
    with adapter.routing.training_forward(MASK):
        model(input_ids=IDS, attention_mask=MASK)
    sums = adapter.routing.take_counts().sum(dim=1)
    assert torch.allclose(sums, torch.full_like(sums, float(MASK.sum())), atol=1e-4)
