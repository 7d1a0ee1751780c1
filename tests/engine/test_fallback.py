"""Without `F.grouped_mm` (torch < 2.10, or a dtype its kernels refuse) the experts run as a padded bmm: same
numbers, no host read per expert, and training works."""

import pytest
import torch
from torch.nn import functional as F

from drlora_core import experts_forward
from drlora_core.adapter import attach
from drlora_core.data import BatchStream
from drlora_core.tiny import build_tiny
from drlora_core.trainer import train
from tests.support.engine import adapted, logits, random_examples, run_config

IDS = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(11))


def _without_grouped_mm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(F, "grouped_mm")
    assert not experts_forward.grouped_mm_supported(torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("family", ["qwen3_moe", "gpt_oss", "deepseek_v3"])
def test_padded_fallback_matches_grouped_forward_and_gradients(family, monkeypatch):
    model, adapter = adapted(family)
    model.train()
    grouped_out = model(input_ids=IDS).logits
    grouped_out.float().pow(2).mean().backward()
    grouped_grads = [p.grad.clone() for p in adapter.lora.parameters()]
    adapter.lora.zero_grad(set_to_none=True)
    _without_grouped_mm(monkeypatch)
    padded_out = model(input_ids=IDS).logits
    padded_out.float().pow(2).mean().backward()
    assert torch.allclose(padded_out, grouped_out, atol=1e-5, rtol=1e-5)
    for grouped, p in zip(grouped_grads, adapter.lora.parameters(), strict=True):
        assert torch.allclose(p.grad, grouped, atol=1e-6, rtol=1e-4)


def test_fallback_reads_the_host_once_per_experts_forward_not_per_expert(monkeypatch):
    model, _ = adapted("olmoe")
    _without_grouped_mm(monkeypatch)
    reads = {"n": 0}
    real_int = torch.Tensor.__int__

    def counting_int(t):
        reads["n"] += 1
        return real_int(t)

    monkeypatch.setattr(torch.Tensor, "__int__", counting_int)
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: pytest.fail("tolist() in the fallback"))
    monkeypatch.setattr(torch.Tensor, "item", lambda t: pytest.fail("item() in the fallback"))
    logits(model, IDS)
    assert reads["n"] == 2  # one capacity read per MoE layer, 8 experts each


def _train_tiny(out_dir, steps: int = 8):
    model = build_tiny("qwen3_moe")
    config = run_config("dr_lora", steps)
    adapter = attach(model, config.lora)
    torch.manual_seed(0)
    result = train(model, adapter, BatchStream(random_examples(), 4, 0, 0), [], config, out_dir)
    return result, [p.detach().clone() for p in adapter.lora.parameters()]


def test_trains_without_grouped_mm_to_the_grouped_result(monkeypatch, tmp_path):
    grouped, grouped_weights = _train_tiny(tmp_path / "grouped")
    _without_grouped_mm(monkeypatch)
    padded, padded_weights = _train_tiny(tmp_path / "padded")
    assert padded.step == grouped.step == 8
    assert padded.ranks == grouped.ranks and padded.growth_events
    for g, p in zip(grouped_weights, padded_weights, strict=True):
        assert torch.allclose(p, g, atol=1e-4, rtol=1e-3)
