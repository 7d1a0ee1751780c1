"""Growth schedule, budget, allocation and the function-preserving growth operation (DRLORA.md)."""

from pathlib import Path

import pytest
import torch

from drlora_core.adapter import attach
from drlora_core.callbacks import Hooks
from drlora_core.config import ConfigError, LoraConfig
from drlora_core.data import BatchStream
from drlora_core.growth import allocate, event_quota, grow, plan_growth, proportional_ranks
from drlora_core.signals import saliency
from drlora_core.tiny import build_tiny
from drlora_core.trainer import train
from tests.support.engine import adapted, logits, random_examples, run_config

IDS = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(5))


def test_schedule_starts_after_warmup_and_stops_one_interval_before_the_end():
    plan = plan_growth(LoraConfig(r_init=8, r_target=16, r_max=32, growth_interval=200), 3750, 113)
    assert plan.steps[0] == 113 and plan.steps[1] == 313
    assert plan.steps[-1] <= 3750 - 200 and plan.steps[-1] + 200 > 3750 - 200
    assert plan.cap == 3  # ceil(0.1 * (32 - 8))


def test_infeasible_schedule_names_the_parameter_and_a_fix():
    with pytest.raises(ConfigError, match=r"growth_interval.*lower growth_interval") as err:
        plan_growth(LoraConfig(r_init=2, r_target=8, r_max=8, growth_interval=10), 30, 1)
    assert err.value.param == "growth_interval"


def test_quota_spreads_the_budget_evenly_and_lands_exactly():
    ranks, events = [2] * 8, 5
    spent = []
    for left in range(events, 0, -1):
        q = event_quota(ranks, 4, left)
        ranks = allocate([1.0] * 8, ranks, q, cap=8, r_max=8)
        spent.append(q)
    assert sum(ranks) == 8 * 4
    assert max(spent) - min(spent) <= 1  # even spread, not front-loaded


def test_allocate_follows_saliency_with_cap_and_r_max():
    new = allocate([0.1, 0.9, 0.5, 0.2], [2, 7, 2, 2], quota=4, cap=2, r_max=8)
    assert new == [2, 8, 4, 3]  # 1 (capped by r_max) -> 2 (cap) -> rest to the next


def test_saliency_penalises_rank():
    s = saliency([0.5, 0.5], [0.5, 0.5], [2, 8], gamma=1.2)
    assert s[0] > s[1]


@pytest.mark.parametrize("shares", [[1, 1, 1, 1], [10, 1, 1, 0], [0, 0, 0, 0], [5, 3, 1, 1]])
def test_proportional_ranks_sum_to_budget_within_bounds(shares):
    ranks = proportional_ranks([float(s) for s in shares], 4 * 4, 2, 8)
    assert sum(ranks) == 16 and all(2 <= r <= 8 for r in ranks)
    assert ranks == sorted(ranks, reverse=True) or shares != sorted(shares, reverse=True)


@pytest.mark.parametrize("family", ["qwen3_moe", "gpt_oss", "module_list"])
def test_growth_leaves_logits_unchanged_and_zeroes_moments(family):
    model, adapter = adapted(family)
    before = logits(model, IDS)
    params = list(adapter.lora.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    model.train()
    model(input_ids=IDS).logits.float().pow(2).mean().backward()
    optimizer.step()
    model.eval()
    before = logits(model, IDS)
    bank = adapter.bank(0)
    old = list(bank.rank_list)
    new = [min(8, r + 2) for r in old]
    grow(bank, new, optimizer)
    assert torch.allclose(logits(model, IDS), before, atol=1e-6, rtol=0)
    for name in bank.projection_names:
        for e, (o, n) in enumerate(zip(old, new, strict=True)):
            state_a = optimizer.state[bank.lora_A[name]]
            assert torch.count_nonzero(state_a["exp_avg"][e, o:n]) == 0
            assert torch.count_nonzero(bank.lora_B[name][e, :, o:n]) == 0
            assert n == o or torch.count_nonzero(bank.lora_A[name][e, o:n]) > 0  # fresh, not zero


def _train(out: Path, method: str, family: str = "qwen3_moe", steps: int = 16):
    model = build_tiny(family)
    config = run_config(method, steps)
    adapter = attach(model, config.lora)
    stream = BatchStream(random_examples(), 4, 0, 0)
    return train(model, adapter, stream, [], config, out, base_model=family), config


@pytest.mark.parametrize("family", ["qwen3_moe", "olmoe", "module_list"])
def test_dr_lora_ends_exactly_on_budget_and_heterogeneous(family, tmp_path):
    result, config = _train(tmp_path, "dr_lora", family)
    for layer in result.ranks:
        assert sum(layer) == len(layer) * config.lora.r_target
        assert max(layer) <= config.lora.r_max and min(layer) >= config.lora.r_init
    assert any(len(set(layer)) > 1 for layer in result.ranks)
    assert result.growth_events and all(e.new_rank > e.old_rank for e in result.growth_events)


def test_lora_is_uniform_at_r_target_and_never_grows(tmp_path):
    result, config = _train(tmp_path, "lora")
    assert result.ranks == [[config.lora.r_target] * 8] * 2 and not result.growth_events


def test_static_keeps_the_same_budget_fixed_from_routing(tmp_path):
    result, config = _train(tmp_path, "static")
    for layer in result.ranks:
        assert sum(layer) == 8 * config.lora.r_target
        assert all(config.lora.r_init <= r <= config.lora.r_max for r in layer)
    assert not result.growth_events


def test_router_is_frozen_in_warmup_and_trained_after_when_asked(tmp_path):
    model = build_tiny("mixtral")
    config = run_config("dr_lora", 12, train_router=True)
    adapter = attach(model, config.lora)
    router = adapter.sites[0].router.weight
    start = router.detach().clone()
    seen = []
    watch = Hooks(step=lambda m: seen.append((m.step, torch.equal(router, start))))
    train(model, adapter, BatchStream(random_examples(), 4, 0, 0), [], config, tmp_path, base_model="mixtral",
          callbacks=[watch])
    assert seen[0] == (1, True)  # warmup is 2 steps (ceil 0.1 * 12): the first step leaves the router alone
    assert not seen[-1][1]  # after warmup it really is optimised


def test_r_max_must_suit_the_grouped_kernels():
    with pytest.raises(ConfigError, match=r"r_max.*multiple of 8.*try 16"):
        LoraConfig(r_init=2, r_target=4, r_max=12)


def test_slice_scores_equal_the_definition():
    from drlora_core.signals import slice_scores

    model, adapter = adapted("qwen3_moe")
    model.train()
    model(input_ids=IDS).logits.float().pow(2).mean().backward()
    bank = adapter.bank(0)
    expected = torch.stack([(bank.lora_A[n] * bank.lora_A[n].grad).sum(-1).abs()
                            + (bank.lora_B[n] * bank.lora_B[n].grad).sum(-2).abs() for n in bank.projection_names])
    assert torch.count_nonzero(expected) > 0
    assert torch.allclose(slice_scores(bank), expected, atol=1e-7, rtol=1e-5)
