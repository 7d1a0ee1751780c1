"""Memory at real scale: a loss over label positions only, in chunks; a selectable compute dtype (bf16 on CPU too);
an fp32 master copy of a trained router; no dropout copy at p = 0."""

import dataclasses
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.nn import functional as F

from drlora_core.adapter import attach
from drlora_core.config import RunConfig
from drlora_core.data import BatchStream
from drlora_core.loss import loss_chunk_rows, token_loss
from drlora_core.tiny import FAMILIES, build_tiny
from drlora_core.trainer import train
from tests.support.engine import SMALL, adapted, random_examples, run_config


def _batch(vocab: int = 128, rows: int = 3, seq: int = 14, seed: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (rows, seq), generator=g)
    labels = ids.clone()
    labels[:, :5] = -100
    labels[1, 9:] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _full_logits_loss(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(),
                           ignore_index=-100, reduction="sum")


@pytest.mark.parametrize("family", FAMILIES)
def test_label_position_loss_equals_the_full_logits_loss_with_its_gradients(family):
    model, adapter = adapted(family)
    model.train()
    batch = _batch()
    reference = _full_logits_loss(model, batch)
    reference.backward()
    expected = [p.grad.clone() for p in adapter.lora.parameters()]
    adapter.lora.zero_grad(set_to_none=True)
    loss = token_loss(model, batch)
    loss.backward()
    assert torch.allclose(loss, reference, rtol=1e-5)
    for want, p in zip(expected, adapter.lora.parameters(), strict=True):
        assert torch.allclose(p.grad, want, atol=1e-6, rtol=1e-4)


def test_loss_chunks_cover_every_label_position_once():
    model, _ = adapted("qwen3_moe")
    batch = _batch(rows=4, seq=40)
    chunked = token_loss(model, batch, "mean")
    assert loss_chunk_rows(128) >= 4 * 40  # one chunk at this vocabulary: force several below
    import drlora_core.loss as loss_module

    original = loss_module.LOSS_CHUNK_BYTES
    loss_module.LOSS_CHUNK_BYTES = 4 * 128 * 7  # 7 rows a chunk
    try:
        assert torch.allclose(token_loss(model, batch, "mean"), chunked, rtol=1e-6)
    finally:
        loss_module.LOSS_CHUNK_BYTES = original


PEAK_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from drlora_core.adapter import attach
    from drlora_core.config import LoraConfig
    from drlora_core.loss import token_loss
    from drlora_core.tiny import ListMoeForCausalLM

    vocab, rows, seq, labelled = (int(a) for a in sys.argv[1:5])
    torch.manual_seed(0)
    model = ListMoeForCausalLM(vocab=vocab, hidden=32, inter=16, layers=1)
    attach(model, LoraConfig(r_init=2, r_target=4, r_max=8, growth_interval=2, dropout=0.0))
    ids = torch.randint(3, vocab, (rows, seq))
    labels = torch.full_like(ids, -100)
    labels[:, seq - labelled:] = ids[:, seq - labelled:]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    token_loss(model, {k: v[:, -8:] for k, v in batch.items()}).backward()  # warm the allocator and kernels

    def status_kib(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak (VmHWM) to the current RSS
    before = status_kib("VmRSS")
    token_loss(model, batch).backward()
    print(json.dumps({"growth": (status_kib("VmHWM") - before) * 1024}))
""")


def _loss_peak_growth(vocab: int, rows: int, seq: int, labelled: int) -> int:
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(vocab), str(rows), str(seq), str(labelled)],
                         capture_output=True, text=True, timeout=600, check=True)
    return int(json.loads(out.stdout.strip().splitlines()[-1])["growth"])


def test_loss_memory_follows_label_positions_not_vocabulary_times_positions():
    vocab, rows, seq = 65536, 8, 256
    full_logits = rows * seq * vocab * 4  # 512 MiB: one fp32 [tokens, vocab] tensor, before its gradient
    few_labels = _loss_peak_growth(vocab, rows, seq, labelled=4)
    all_labels = _loss_peak_growth(vocab, rows, seq, labelled=seq)
    assert few_labels < full_logits / 8, (few_labels, full_logits)
    assert all_labels < full_logits / 2, (all_labels, full_logits)  # one chunk of logits and its gradient


def test_bf16_trains_on_cpu_with_fp32_adapter_weights(tmp_path):
    model = build_tiny("olmoe").to(torch.bfloat16)
    config = run_config("dr_lora", 10)
    adapter = attach(model, config.lora)
    losses = []

    class Losses:
        def on_step(self, m):
            losses.append(m.train_loss)

    train(model, adapter, BatchStream(random_examples(), 4, 0, 0), [], config, tmp_path, [Losses()],
          dtype=torch.bfloat16)
    assert len(losses) == 10 and all(torch.isfinite(torch.tensor(losses)))
    assert all(p.dtype == torch.float32 for p in adapter.lora.parameters())


def test_trained_router_update_survives_bf16_at_the_paper_lr(tmp_path):
    model = build_tiny("mixtral").to(torch.bfloat16)
    config = run_config("lora", 4, train_router=True)
    config = RunConfig(config.lora, dataclasses.replace(config.train, lr=2e-5, warmup_ratio=0.0))
    adapter = attach(model, config.lora)
    router = adapter.sites[0].router
    start = router.weight.detach().float().clone()
    train(model, adapter, BatchStream(random_examples(), 4, 0, 0), [], config, tmp_path, dtype=torch.bfloat16)
    assert router.weight.dtype == torch.float32  # the master copy AdamW updates
    moved = (router.weight.detach() - start).abs()
    assert (moved > 0).float().mean() > 0.95  # bf16 weights kept ~30% of them
    assert moved.mean() > 2e-5  # four steps of ~lr each, not rounded away


def test_dropout_at_zero_passes_the_routed_input_through_uncopied():
    _, adapter = adapted("qwen3_moe", SMALL)
    x = torch.randn(10, 32)
    assert adapter.banks[0].dropout(x, training=True) is x
