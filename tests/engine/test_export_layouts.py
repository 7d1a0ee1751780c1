"""Every export layout and dtype of a stored adapter loads in PEFT alone and reproduces the engine's logits.

bf16 stores rounded factors: the PEFT logits then equal the engine's run with the same bf16-rounded factors (atol
1e-4), and differ from the fp32 engine by at most BF16_ATOL. Measured on these tiny models (random B, std 0.3): max
0.0022 (qwen3_moe), 0.0028 (mixtral), 0.0025 (olmoe). The module_list model is not compared to fp32: there the
rounding flips a top-2 routing choice and logits move by up to 1.4, which says nothing about the export.
"""

import json

import pytest
import torch

from drlora_core.adapter_files import read_adapter
from drlora_core.expert_names import PerExpertUnsupported
from drlora_core.export import export_peft
from drlora_core.export_layouts import write_adapter
from drlora_core.export_options import ExportOptions
from drlora_core.exporting import export_stored
from drlora_core.tiny import build_tiny
from tests.support.engine import adapted, logits

# PEFT's own per-expert conversion adds a rank_pattern for the fused gate_up_proj and then warns that the pattern
# matched no module name (it targets a parameter); the loaded ranks and logits are right (tests below).
pytestmark = pytest.mark.filterwarnings("ignore:The following .*_pattern keys did not match:RuntimeWarning")

IDS = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(11))
BF16_ATOL = 1e-2
CASES = [(f, layout) for f in ("qwen3_moe", "mixtral", "olmoe") for layout in ("fused", "per_expert")] + \
    [("module_list", "fused"), ("module_list", "per_expert")]


def _peft_logits(family, directory):
    from peft import PeftModel

    return logits(PeftModel.from_pretrained(build_tiny(family), directory), IDS)


def _round_to_bf16(adapter):
    """The engine's own factors, rounded as a bf16 export rounds them (B with the scaling folded in)."""
    with torch.no_grad():
        for bank in adapter.banks:
            for name in bank.projection_names:
                bank.lora_A[name].copy_(bank.lora_A[name].bfloat16().float())
                bank.lora_B[name].copy_((bank.lora_B[name] * bank.scaling).bfloat16().float() / bank.scaling)


@pytest.mark.parametrize(("family", "layout"), CASES)
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_layout_and_dtype_load_in_peft_with_the_engines_logits(family, layout, dtype, tmp_path):
    model, adapter = adapted(family)  # heterogeneous ranks 1..8
    ours = logits(model, IDS)
    export_peft(adapter, tmp_path / "src", base_model=family)
    out = export_stored(tmp_path / "src", tmp_path / "out", ExportOptions(layout=layout, dtype=dtype))  # type: ignore[arg-type]
    stored = json.loads((out / "drlora_ranks.json").read_text())
    assert stored["ranks"] == adapter.ranks()
    assert stored["model_type"] == getattr(model.config, "model_type", None)
    theirs = _peft_logits(family, out)
    if dtype == "fp32":
        assert torch.allclose(theirs, ours, atol=1e-4, rtol=0), (theirs - ours).abs().max()
        return
    if family != "module_list":
        assert torch.allclose(theirs, ours, atol=BF16_ATOL, rtol=0), (theirs - ours).abs().max()
    _round_to_bf16(adapter)
    rounded = logits(model, IDS)
    assert torch.allclose(theirs, rounded, atol=1e-4, rtol=0), (theirs - rounded).abs().max()
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(str(out / "adapter_model.safetensors")).values()} == {torch.bfloat16}


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral", "olmoe", "deepseek_v3"])
def test_per_expert_logits_equal_the_fused_layouts(family, tmp_path):
    _, adapter = adapted(family)
    export_peft(adapter, tmp_path / "fused", base_model=family)
    export_stored(tmp_path / "fused", tmp_path / "per", ExportOptions(layout="per_expert"))
    fused, per = _peft_logits(family, tmp_path / "fused"), _peft_logits(family, tmp_path / "per")
    assert torch.allclose(per, fused, atol=1e-5, rtol=0), (per - fused).abs().max()


def test_per_expert_keys_use_the_checkpoint_names(tmp_path):
    from safetensors.torch import load_file

    _, adapter = adapted("mixtral")
    export_peft(adapter, tmp_path / "src", base_model="mixtral")
    export_stored(tmp_path / "src", tmp_path / "per", ExportOptions(layout="per_expert"))
    keys = load_file(str(tmp_path / "per" / "adapter_model.safetensors")).keys()
    assert "base_model.model.model.layers.1.block_sparse_moe.experts.7.w3.lora_B.weight" in keys
    assert not any(".mlp." in k for k in keys)
    config = json.loads((tmp_path / "per" / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["w1", "w2", "w3"] and config["target_parameters"] is None


@pytest.mark.parametrize("family", ["gpt_oss", "qwen2_moe"])
def test_per_expert_is_refused_where_peft_cannot_load_it(family, tmp_path):
    _, adapter = adapted(family)
    export_peft(adapter, tmp_path / "src", base_model=family)
    with pytest.raises(PerExpertUnsupported, match="works for mixtral, qwen3_moe, olmoe"):
        export_stored(tmp_path / "src", tmp_path / "per", ExportOptions(layout="per_expert"))
    assert not (tmp_path / "per").exists()


def test_an_adapter_without_model_type_says_how_to_fix_it(tmp_path):
    _, adapter = adapted("qwen3_moe")
    export_peft(adapter, tmp_path / "src", base_model="q")
    ranks = tmp_path / "src" / "drlora_ranks.json"
    document = json.loads(ranks.read_text())
    del document["model_type"]
    ranks.write_text(json.dumps(document))
    with pytest.raises(ValueError, match=r"no model_type.*add"):
        export_stored(tmp_path / "src", tmp_path / "per", ExportOptions(layout="per_expert"))
    export_stored(tmp_path / "src", tmp_path / "fused", ExportOptions(dtype="bf16"))  # the fused layout needs none


def test_base_model_name_progress_and_routers(tmp_path):
    model, adapter = adapted("mixtral")
    with torch.no_grad():
        for site in adapter.sites:
            site.router.weight.add_(torch.randn_like(site.router.weight))
    ours = logits(model, IDS)
    export_peft(adapter, tmp_path / "src", base_model="local/path", routers=True)
    seen = []
    out = write_adapter(read_adapter(tmp_path / "src"), tmp_path / "per",
                        ExportOptions(layout="per_expert", base_model_name_or_path="mistralai/Mixtral-8x7B-v0.1"),
                        progress=lambda what, fraction: seen.append((what, fraction)))
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "mistralai/Mixtral-8x7B-v0.1"
    assert config["modules_to_save"] == ["gate"]
    assert seen == [("layer 0", 0.5), ("layer 1", 1.0)]
    theirs = _peft_logits("mixtral", out)
    assert torch.allclose(theirs, ours, atol=1e-4, rtol=0), (theirs - ours).abs().max()
