"""RunConfig: its defaults, the errors its construction raises, its dict round trip, and how "auto" resolves."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest

from drlora_core.autoconfig import (
    PAPER_GROWTH_EVENTS,
    RunFacts,
    epochs_and_batch,
    known_model_facts,
    learning_rate,
    resolve,
)
from drlora_core.config import AUTO, RANK_MULTIPLE, ConfigError, LoraConfig, RunConfig, TrainConfig


def test_size_dependent_defaults_are_auto_and_the_rest_are_the_papers() -> None:
    c = RunConfig()
    assert (c.lora.r_init, c.lora.r_target, c.lora.r_max, c.lora.growth_interval) == (AUTO,) * 4
    assert (c.train.epochs, c.train.batch_size, c.train.lr, c.train.gradient_checkpointing) == (AUTO,) * 4
    assert (c.lora.method, c.lora.grow_frac, c.lora.beta_f, c.lora.beta_g, c.lora.gamma, c.lora.dropout) == (
        "dr_lora", 0.1, 0.9, 0.9, 1.2, 0.1)
    assert (c.train.warmup_ratio, c.train.weight_decay, c.train.dtype) == (0.03, 0.0, "auto")
    assert c.unresolved() == ["r_init", "r_target", "r_max", "growth_interval", "epochs", "batch_size", "lr",
                              "gradient_checkpointing"]
    with pytest.raises(ConfigError, match="still 'auto'"):
        c.require_resolved()


@pytest.mark.parametrize(("make", "param"), [
    (lambda: LoraConfig(method="dora"), "method"),  # type: ignore[arg-type]
    (lambda: LoraConfig(r_init=16, r_target=8), "r_init"),
    (lambda: LoraConfig(r_target=16, r_max=8), "r_max"),
    (lambda: LoraConfig(r_max=12), "r_max"),
    (lambda: LoraConfig(r_init=0), "r_init"),
    (lambda: LoraConfig(growth_interval=0), "growth_interval"),
    (lambda: LoraConfig(grow_frac=0.0), "grow_frac"),
    (lambda: LoraConfig(beta_g=1.0), "beta_g"),
    (lambda: LoraConfig(dropout=1.0), "dropout"),
    (lambda: LoraConfig(alpha=0.0), "alpha"),
    (lambda: TrainConfig(lr=0.0), "lr"),
    (lambda: TrainConfig(lr="fast"), "lr"),  # type: ignore[arg-type]
    (lambda: TrainConfig(batch_size=0), "batch_size"),
    (lambda: TrainConfig(epochs=1.5), "epochs"),  # type: ignore[arg-type]
    (lambda: TrainConfig(max_steps=0), "max_steps"),
    (lambda: TrainConfig(warmup_ratio=1.0), "warmup_ratio"),
    (lambda: TrainConfig(dtype="fp16"), "dtype"),  # type: ignore[arg-type]
    (lambda: TrainConfig(gradient_checkpointing="yes"), "gradient_checkpointing"),  # type: ignore[arg-type]
])
def test_construction_refuses_impossible_values_naming_the_parameter(make, param: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make()
    assert caught.value.param == param and str(caught.value).startswith(f"{param}: ")


def test_lora_reserves_the_next_aligned_rank_once() -> None:
    lora = LoraConfig(method="lora", r_target=12)
    assert lora.ranks == (12, 12, 16) and lora.r_max % RANK_MULTIPLE == 0
    assert LoraConfig(method="lora", r_target=16).ranks == (16, 16, 16)
    assert LoraConfig(method="lora", r_target=4, r_max=32).r_max == 32  # an explicit reservation stays


def test_to_dict_and_from_dict_round_trip_resolved_and_auto() -> None:
    resolved = RunConfig(LoraConfig(method="static", r_init=4, r_target=8, r_max=16, growth_interval=5, alpha=3.0),
                         TrainConfig(max_steps=7, batch_size=2, lr=1e-4, dtype="fp32", gradient_checkpointing=True))
    for config in (RunConfig(), resolved):
        assert RunConfig.from_dict(config.to_dict()) == config
    assert resolved.to_dict()["train"]["dtype"] == "fp32"


def test_dtype_auto_is_fp32_on_the_cpu_and_bf16_is_honoured_there() -> None:
    import torch

    from drlora_core.run import resolve_dtype

    cpu = torch.device("cpu")
    assert TrainConfig().dtype == "auto" and resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16 and resolve_dtype("fp32", cpu) == torch.float32


def _events(config: RunConfig, total: int) -> int:
    """Growth events of the trainer's schedule (growth.plan_growth): start, start + T, ... <= total - T."""
    start = max(math.ceil(config.train.warmup_ratio * total), 1)
    return len(range(start, total - config.lora.interval + 1, config.lora.interval))


def test_auto_at_the_papers_scale_gives_its_ranks_lr_and_number_of_growth_events() -> None:
    config = resolve(RunConfig(train=TrainConfig(max_steps=3750)), RunFacts(parameters=6_900_000_000, examples=60_000))
    assert config.unresolved() == []
    assert config.lora.ranks == (8, 16, 32) and config.train.lr == 2e-5
    paper = dataclasses.replace(config, lora=dataclasses.replace(config.lora, growth_interval=200))
    assert _events(config, 3750) == _events(paper, 3750) == PAPER_GROWTH_EVENTS == 18


def test_auto_on_the_demo_model_and_file_trains_a_tiny_model_sensibly() -> None:
    from drlora_core.assets import demo_model_dir

    facts = RunFacts.of(known_model_facts(demo_model_dir()), examples=2000)
    assert facts.parameters is not None and facts.parameters < 10_000_000
    config = resolve(RunConfig(), facts)
    assert config.lora.ranks == (2, 4, 8) and config.train.lr == 1e-3
    assert (config.train.epochs, config.train.batch_size) == (3, 4)
    total = 3 * 2000 // 4
    assert _events(config, total) == PAPER_GROWTH_EVENTS
    from drlora_core.growth import plan_growth

    assert len(plan_growth(config.lora, total, math.ceil(0.03 * total)).steps) == PAPER_GROWTH_EVENTS


def test_auto_counts_the_demo_weights_as_model_facts_does() -> None:
    from safetensors import safe_open

    from drlora_core.assets import demo_model_dir

    with safe_open(str(demo_model_dir() / "model.safetensors"), "pt") as f:
        exact = sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())  # noqa: SIM118
    assert RunFacts.of(known_model_facts(demo_model_dir()), examples=1).parameters == exact


def test_a_model_model_facts_cannot_read_counts_as_a_real_model(tmp_path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    assert known_model_facts(tmp_path) is None
    assert resolve(RunConfig(), RunFacts.of(None, examples=100)).lora.ranks == (8, 16, 32)


def test_auto_fills_around_given_values() -> None:
    facts = RunFacts(parameters=None, examples=10)  # unknown size counts as a real model
    config = resolve(RunConfig(LoraConfig(r_target=12), TrainConfig(max_steps=40, lr=3e-4)), facts)
    assert config.lora.ranks == (6, 12, 24) and config.train.lr == 3e-4
    assert resolve(RunConfig(LoraConfig(r_max=8)), facts).lora.ranks == (4, 8, 8)
    assert resolve(RunConfig(LoraConfig(method="lora")), facts).lora.ranks == (16, 16, 16)
    assert resolve(RunConfig(LoraConfig(method="lora", r_target=12)), facts).lora.r_max == 16
    assert resolve(RunConfig(), facts).train.gradient_checkpointing is False
    assert resolve(RunConfig(train=TrainConfig(max_steps=1)), facts).lora.growth_interval == 1  # at least 1 apart


def test_learning_rate_falls_with_model_size_between_the_documented_ends() -> None:
    sizes = [1_000_000, 50_000_000, 100_000_000, 300_000_000, 999_000_000, 1_000_000_000, 30_000_000_000]
    rates = [learning_rate(n) for n in sizes]
    assert rates[0] == rates[1] == 1e-3 and rates[-2] == rates[-1] == 2e-5 and learning_rate(None) == 2e-5
    assert all(a >= b for a, b in itertools.pairwise(rates)) and 9e-5 < rates[3] < 1e-4


def test_epochs_and_batch_follow_openais_rule() -> None:
    assert epochs_and_batch(10) == (10, 1)  # small files train on at least 100 examples
    assert epochs_and_batch(2) == (25, 1)  # ... at most 25 epochs
    assert epochs_and_batch(2000) == (3, 4)
    assert epochs_and_batch(20_000) == (1, 40)  # large files on at most 25,000 examples, at least 1 epoch
    assert epochs_and_batch(1_000_000) == (1, 256)
