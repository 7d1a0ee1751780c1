"""`create` refuses a plan that cannot run (issue 10, finding 4): no growth event fits the run, r_max above the
model's dimensions, max_seq_len past max_position_embeddings; each a 400 naming the parameter and what would work.
And `drlora models add` refuses a model without a supported MoE layer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drlora_cli.bootstrap import check_model
from drlora_core.assets import demo_model_dir
from service.errors import InvalidRequest
from service.runconfig import build_run_config

DEMO = demo_model_dir()  # hidden 128, expert width 64, 512 positions
QUICK = {"max_steps": 20, "batch_size": 4, "learning_rate": 1e-3, "r_init": 2, "r_target": 4, "r_max": 8}


def refusal(hyperparameters: dict[str, object], model_dir: Path = DEMO, examples: int = 100,
            method: str = "dr_lora") -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        build_run_config(method, hyperparameters, 0, model_dir, examples)  # type: ignore[arg-type]
    return info.value


def test_a_sound_plan_passes() -> None:
    config = build_run_config("dr_lora", {**QUICK, "growth_interval": 4}, 0, DEMO, 100)
    assert config.lora.growth_interval == 4


def test_a_growth_interval_longer_than_the_run_is_refused_naming_what_fits() -> None:
    err = refusal({**QUICK, "growth_interval": 50})
    assert err.param == "method.dr_lora.hyperparameters.growth_interval"
    assert "at most 19" in err.message  # 20 steps, growth from step 1: T <= 19 leaves one event


def test_a_rank_above_the_models_dimensions_is_refused() -> None:
    err = refusal({**QUICK, "r_target": 80, "r_max": 128})
    assert err.param == "method.dr_lora.hyperparameters.r_max"
    assert "at most 64" in err.message and "64" in err.message
    err = refusal({"max_steps": 20, "r_target": 72}, method="lora")
    assert err.param == "method.lora.hyperparameters.r_target"


def test_a_sequence_longer_than_the_model_takes_is_refused() -> None:
    err = refusal({**QUICK, "max_seq_len": 4096})
    assert err.param == "method.dr_lora.hyperparameters.max_seq_len"
    assert "at most 512" in err.message


def test_a_model_without_facts_is_not_checked_against_them(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    build_run_config("dr_lora", {**QUICK, "max_seq_len": 4096, "r_max": 512, "r_target": 8}, 0, tmp_path, 100)


def test_models_add_refuses_a_model_without_a_supported_moe_layer(tmp_path: Path) -> None:
    check_model(DEMO)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64,
                                                      "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(SystemExit) as info:
        check_model(tmp_path)
    message = str(info.value)
    assert "llama" in message and "LlamaForCausalLM" in message and "qwen3_moe" in message
