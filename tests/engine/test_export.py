"""The exported adapter loads with PEFT alone and reproduces the engine's logits; so does the tests' reference merge."""

import json

import pytest
import torch

from drlora_core.adapter import attach
from drlora_core.export import RANKS_FILE, export_peft
from drlora_core.tiny import build_tiny
from tests.support.engine import adapted, logits, merge_into_base

IDS = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(11))


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3", "gpt_oss",
                                    "granitemoe", "module_list"])
def test_peft_round_trip_matches_engine_logits(family, tmp_path):
    from peft import PeftModel

    model, adapter = adapted(family)
    ours = logits(model, IDS)
    out = tmp_path / "adapter"
    export_peft(adapter, out, base_model=family)
    peft_model = PeftModel.from_pretrained(build_tiny(family), out)
    theirs = logits(peft_model, IDS)
    assert torch.allclose(theirs, ours, atol=1e-4, rtol=0), (theirs - ours).abs().max()
    document = json.loads((out / RANKS_FILE).read_text())
    assert document["ranks"] == adapter.ranks()
    assert {"r_init", "r_target", "r_max", "events"} <= document.keys()


def test_padding_is_zero_and_scaling_is_folded(tmp_path):
    from safetensors.torch import load_file

    _, adapter = adapted("qwen3_moe")
    out = tmp_path / "adapter"
    export_peft(adapter, out, base_model="x")
    config = json.loads((out / "adapter_config.json").read_text())
    r_c = max(max(r) for r in adapter.ranks())
    assert config["r"] == config["lora_alpha"] == r_c
    tensors = load_file(str(out / "adapter_model.safetensors"))
    a = tensors["base_model.model.model.layers.0.mlp.experts.lora_A.weight"].reshape(8, r_c, -1)
    for e, rank in enumerate(adapter.ranks()[0]):
        assert torch.count_nonzero(a[e, rank:]) == 0


def test_module_list_export_uses_plain_target_modules(tmp_path):
    _, adapter = adapted("module_list")
    out = tmp_path / "adapter"
    export_peft(adapter, out, base_model="x")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["target_parameters"] is None and "experts" in config["target_modules"]


@pytest.mark.parametrize("family", ["qwen3_moe", "gpt_oss", "module_list"])
def test_merged_weights_reproduce_the_adapter(family):
    model, adapter = adapted(family)
    ours = logits(model, IDS)
    merge_into_base(adapter)
    adapter.detach()
    assert torch.allclose(logits(model, IDS), ours, atol=1e-4, rtol=0)


def test_trained_router_travels_as_modules_to_save(tmp_path):
    from peft import PeftModel

    model, adapter = adapted("mixtral")
    with torch.no_grad():
        for site in adapter.sites:
            site.router.weight.add_(torch.randn_like(site.router.weight))
    ours = logits(model, IDS)
    out = tmp_path / "adapter"
    export_peft(adapter, out, base_model="mixtral", routers=True)
    assert json.loads((out / "adapter_config.json").read_text())["modules_to_save"] == ["gate"]
    theirs = logits(PeftModel.from_pretrained(build_tiny("mixtral"), out), IDS)
    assert torch.allclose(theirs, ours, atol=1e-4, rtol=0)


def test_model_eval_turns_the_lora_dropout_off(tmp_path):
    """The banks live beside the model; `model.eval()` alone must still switch their dropout off, or every
    evaluation and export comparison after training would be noisy."""
    from peft import PeftModel

    from drlora_core.config import LoraConfig
    from tests.support.engine import randomise_b

    for family in ("qwen3_moe", "module_list"):
        model = build_tiny(family)
        adapter = attach(model, LoraConfig(r_init=4, r_target=8, r_max=16, dropout=0.5))
        randomise_b(adapter)
        model.train()
        assert not torch.equal(logits(model, IDS), logits(model, IDS))  # dropout on while training
        model.eval()
        ours = logits(model, IDS)
        assert torch.equal(ours, logits(model, IDS))
        out = tmp_path / family / "adapter"
        export_peft(adapter, out, base_model=family)
        theirs = logits(PeftModel.from_pretrained(build_tiny(family), out), IDS)
        assert torch.allclose(theirs, ours, atol=1e-4, rtol=0), (theirs - ours).abs().max()
