"""The pre-flight estimate: config.json facts (standard library only) and the memory / FLOPs model."""

import json
from pathlib import Path

import pytest

from drlora_cli.main import main
from drlora_core import loss
from drlora_core.estimate import LOSS_CHUNK_BYTES, RunShape, estimate
from drlora_core.model_facts import ModelFactsError, facts_from_config, read_model_facts
from drlora_core.tiny import FAMILIES, build_tiny

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "model_configs"
# published totals (billions of parameters)
PUBLISHED = {"olmoe-1b-7b": 6.92, "qwen3-30b-a3b": 30.5, "mixtral-8x7b": 46.7, "gpt-oss-20b": 20.9,
             "deepseek-v2-lite": 15.7}


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in ("module_list", "granitemoe")])
def test_parameter_count_matches_the_built_model(family, tmp_path):
    model = build_tiny(family)
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_dict()))
    facts = read_model_facts(tmp_path)
    assert facts.total_params == sum(p.numel() for p in model.parameters())


def test_demo_model_facts():
    facts = read_model_facts(Path("drlora_core/assets/drlora-demo-moe"))
    assert (facts.model_type, facts.moe_layers, facts.experts, facts.top_k) == ("qwen3_moe", 4, 16, 2)
    assert facts.total_params == 2041216


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_checkpoints_have_their_published_size(name):
    facts = read_model_facts(FIXTURES / name)
    assert facts.total_params / 1e9 == pytest.approx(PUBLISHED[name], rel=0.01)


def test_missing_field_is_named():
    config = json.loads((FIXTURES / "mixtral-8x7b" / "config.json").read_text())
    del config["num_local_experts"]
    with pytest.raises(ModelFactsError, match="num_experts or num_local_experts or n_routed_experts"):
        facts_from_config(config)
    with pytest.raises(ModelFactsError, match="model_type 'llama' is not supported"):
        facts_from_config({**config, "model_type": "llama"})


def test_the_estimate_uses_the_engines_loss_chunk():
    assert LOSS_CHUNK_BYTES == loss.LOSS_CHUNK_BYTES


def test_checkpointing_and_bf16_shrink_the_right_parts():
    facts = read_model_facts(FIXTURES / "qwen3-30b-a3b")
    full = estimate(facts, RunShape(batch_size=4, seq_len=2048, r_max=32, dtype="bf16"))
    ckpt = estimate(facts, RunShape(batch_size=4, seq_len=2048, r_max=32, dtype="bf16", gradient_checkpointing=True))
    fp32 = estimate(facts, RunShape(batch_size=4, seq_len=2048, r_max=32, dtype="fp32"))
    assert ckpt.parts["activations"] < full.parts["activations"] / 10
    assert fp32.parts["base_weights"] == 2 * full.parts["base_weights"]
    assert ckpt.parts["lora_banks"] == full.parts["lora_banks"] == facts.lora_params_per_rank() * 32 * 4
    assert ckpt.flops_per_token["step"] > full.flops_per_token["step"]  # the recompute


def test_cli_prints_json_with_peak_and_parts(capsys):
    assert main(["estimate", "--model", str(FIXTURES / "olmoe-1b-7b"), "--device", "cuda", "--json",
                 "--batch-size", "4", "--max-seq-len", "1024", "--r-max", "32", "--gradient-checkpointing"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["peak_bytes"] == sum(out["parts"].values())
    assert {"base_weights", "lora_banks", "gradients", "adamw_state", "activations", "logits_and_loss"} <= set(
        out["parts"])
    assert out["dtype"] == "bf16" and out["flops_per_token"]["step"] > 0


def test_cli_refuses_an_unknown_family(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert main(["estimate", "--model", str(tmp_path)]) == 2
    assert "not supported" in capsys.readouterr().err
