"""Every supported family: discovery, zero-adapter identity, grouped == loop == plain reference, clear refusal."""

import pytest
import torch
from torch import nn

from drlora_core.adapter import attach
from drlora_core.families import UnsupportedModelError, find_experts
from drlora_core.tiny import FAMILIES, build_tiny
from tests.support.engine import SMALL, adapted, logits, reference_logits

IDS = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("family", FAMILIES)
def test_finds_routed_experts_only(family):
    model = build_tiny(family)
    sites = find_experts(model)
    expected_layers = 2  # deepseek_v3 has 3 layers, the first dense
    assert len(sites) == expected_layers
    for site in sites:
        assert site.num_experts == 8
        assert "shared" not in site.path
        assert {p.name for p in site.projections} & {"down_proj"}
        assert site.router is not None


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_adapter_is_identity(family):
    model = build_tiny(family)
    base = logits(model, IDS)
    adapter = attach(model, SMALL)
    assert torch.allclose(logits(model, IDS), base, atol=1e-5, rtol=0)
    adapter.detach()
    assert torch.equal(logits(model, IDS), base)


@pytest.mark.parametrize("family", FAMILIES)
def test_grouped_loop_and_reference_agree(family):
    model, adapter = adapted(family)
    reference = reference_logits(model, adapter, IDS)
    grouped = logits(model, IDS)
    loop = logits(adapted(family, impl="loop")[0], IDS)  # the same weights: build_tiny and attach are seeded
    assert torch.allclose(grouped, reference, atol=1e-4, rtol=1e-4)
    assert torch.allclose(loop, reference, atol=1e-4, rtol=1e-4)
    adapter.detach()
    assert not torch.allclose(logits(model, IDS), grouped, atol=1e-3)  # the adapter really changed the output


@pytest.mark.parametrize("family", FAMILIES)
def test_masked_slices_get_exactly_zero_gradient(family):
    model, adapter = adapted(family)
    model.train()
    out = model(input_ids=IDS).logits
    (out.float() ** 2).mean().backward()
    for bank in adapter.banks:
        for name in bank.projection_names:
            a_grad, b_grad = bank.lora_A[name].grad, bank.lora_B[name].grad
            for e, rank in enumerate(bank.rank_list):
                assert torch.count_nonzero(a_grad[e, rank:]) == 0
                assert torch.count_nonzero(b_grad[e, :, rank:]) == 0
            assert torch.count_nonzero(b_grad) > 0  # the active slices do learn


def test_unsupported_model_names_the_classes_it_found():
    model = nn.Sequential(nn.Embedding(16, 8), nn.Linear(8, 8))
    with pytest.raises(UnsupportedModelError, match=r"module classes found: .*Embedding.*Linear"):
        find_experts(model)


def test_attaching_twice_is_refused():
    model = build_tiny("mixtral")
    attach(model, SMALL)
    with pytest.raises(ValueError, match="already has DR-LoRA banks"):
        attach(model, SMALL)
