"""The bundled demo model and dataset (built by scripts/build_demo_model.py) load offline and fit their contract."""

from __future__ import annotations

import json
import math
from functools import cache
from typing import Any

import pytest
import torch

from drlora_core.assets import demo_model_dir, demo_train_file, demo_val_file
from drlora_core.formats import read_records

MAX_SAFETENSORS_BYTES = 20 * 10**6


@cache
def _model() -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(demo_model_dir()).eval()


@cache
def _tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_model_dir())


@cache
def _config() -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(demo_model_dir())


def test_model_loads_as_qwen3_moe_with_every_layer_moe() -> None:
    model = _model()
    cfg = model.config
    assert type(model).__name__ == "Qwen3MoeForCausalLM"
    assert cfg.decoder_sparse_step == 1 and list(cfg.mlp_only_layers) == []
    moe_blocks = [layer.mlp for layer in model.model.layers if hasattr(layer.mlp, "experts")]
    assert len(moe_blocks) == cfg.num_hidden_layers
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert 1_000_000 <= sum(p.numel() for p in model.parameters()) <= 10_000_000


def test_config_dimensions_are_multiples_of_8() -> None:
    cfg = _config()
    dims = {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "moe_intermediate_size": cfg.moe_intermediate_size,
        "head_dim": cfg.head_dim,
        "q width": cfg.num_attention_heads * cfg.head_dim,
        "kv width": cfg.num_key_value_heads * cfg.head_dim,
        "max_position_embeddings": cfg.max_position_embeddings,
        "num_experts": cfg.num_experts,
    }
    assert {name: d for name, d in dims.items() if d % 8} == {}


def test_experts_and_routing() -> None:
    cfg = _config()
    assert cfg.model_type == "qwen3_moe"
    assert 8 <= cfg.num_experts <= 16
    assert cfg.num_experts_per_tok == 2
    # Built from config, saved without a pointer to wherever it was built.
    assert "_name_or_path" not in json.loads((demo_model_dir() / "config.json").read_text())


def test_safetensors_is_small() -> None:
    weights = demo_model_dir() / "model.safetensors"
    assert weights.is_file()
    assert weights.stat().st_size < MAX_SAFETENSORS_BYTES


def test_tokenizer_has_pad_and_eos_and_matches_the_model() -> None:
    tok, cfg = _tokenizer(), _config()
    assert tok.pad_token is not None and tok.eos_token is not None
    assert tok.pad_token_id != tok.eos_token_id
    assert (tok.pad_token_id, tok.eos_token_id) == (cfg.pad_token_id, cfg.eos_token_id)
    assert len(tok) == cfg.vocab_size
    text = "What is 37 plus 48? 85\n12 + 7 = 19"
    assert tok.decode(tok(text)["input_ids"]) == text


def test_chat_template_renders_turns_and_closes_assistant_with_eos() -> None:
    tok = _tokenizer()
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 plus 3?"},
        {"role": "assistant", "content": "5"},
    ]
    full = tok.apply_chat_template(messages, tokenize=False)
    assert full == f"<|system|>\nBe brief.\n<|user|>\nWhat is 2 plus 3?\n<|assistant|>\n5{tok.eos_token}\n"
    prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>\n") and full.startswith(prompt)
    # The role markers are single special tokens, not spelled out byte by byte.
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("<|assistant|>") == ids[-2]


@pytest.mark.parametrize(("path_fn", "size"), [(demo_train_file, 2000), (demo_val_file, 200)])
def test_data_files_are_prompt_completion_jsonl(path_fn: Any, size: int) -> None:
    fmt, records = read_records(path_fn())
    assert fmt == "prompt_completion"
    assert abs(len(records) - size) <= size // 10
    for r in records:
        # Exact match is judged on the stripped completion, so it must be the answer and nothing after it.
        assert r["completion"].strip() and r["completion"] == r["completion"].rstrip()


def test_validation_questions_are_not_training_questions() -> None:
    _, train = read_records(demo_train_file())
    _, val = read_records(demo_val_file())
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in val}


def _loss(rows: list[tuple[list[int], list[int]]]) -> float:
    """Mean loss over the labelled tokens of right-padded (input_ids, labels) rows."""
    model, pad = _model(), _tokenizer().pad_token_id
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
    lengths = torch.tensor([len(ids) for ids, _ in rows])
    attention_mask = (torch.arange(width) < lengths[:, None]).long()
    with torch.no_grad():
        return float(model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss)


def test_loss_on_validation_examples_is_finite() -> None:
    tok = _tokenizer()
    _, records = read_records(demo_val_file())
    rows = []
    for r in records[:8]:
        prompt = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        completion = [*tok(r["completion"], add_special_tokens=False)["input_ids"], tok.eos_token_id]
        rows.append((prompt + completion, [-100] * len(prompt) + completion))
    # Not compared with chance: the task's phrasing is new to the base model, which is confidently wrong on it.
    assert math.isfinite(_loss(rows))


def test_model_is_pretrained_on_its_domains() -> None:
    tok = _tokenizer()
    text = "37 + 48 = 85\n91 - 16 = 75\n7 * 8 = 56\nsort [7, 3, 9, 1] gives [1, 3, 7, 9]\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    # Far below a uniform guess (ln 1024 = 6.9): the weights are trained, not freshly initialised.
    assert _loss([(ids, ids)]) < 2.0


def test_routing_profile_covers_every_layer_and_expert() -> None:
    profile = json.loads((demo_model_dir() / "routing_profile.json").read_text())
    cfg = _config()
    assert "target_task" in profile["share"] and len(profile["share"]) >= 6
    for rows in profile["share"].values():
        assert len(rows) == cfg.num_hidden_layers
        assert all(len(row) == cfg.num_experts and abs(sum(row) - 1) < 1e-3 for row in rows)
