"""Resolve the "auto" settings of a `RunConfig` from plain numbers: the model's size and the dataset's length.

Standard library only: the API calls it at `create` (the job object shows what it decided) and `drlora train` calls
it before training, so both doors resolve alike. The rules:

- learning rate by model size: 1e-3 up to 50 M parameters, 2e-5 (the paper's) from 1 B, and in between the
  geometric interpolation in the parameter count (about 1e-4 at 300 M).
- ranks: the paper's r_init / r_target / r_max = 8 / 16 / 32 for real models, 2 / 4 / 8 for tiny ones (up to 50 M
  parameters); with some ranks given, the others follow: r_init = r_target / 2, r_max = 2 * r_target rounded up to
  the kernels' multiple (and r_target never above a given r_max). `lora` trains at r_target and reserves the next
  multiple (LoraConfig does that).
- epochs and batch size as OpenAI chooses them: batch ~0.2% of the examples (1 to 256); 3 epochs, raised so that
  small files train on at least 100 examples (at most 25 epochs) and lowered so that large ones train on at most
  25,000 (at least 1 epoch).
- growth interval: the paper's number of growth events (3,750 steps, T = 200, 3% warmup: 18 events) over this run's
  steps after warmup (up to the growth window's end when `growth_end_ratio` < 1), at least 1 step apart.
- gradient checkpointing: off (the service's pre-flight, service/preflight.py, turns an "auto" on when only that
  makes the job fit a worker).
An unknown model size counts as a real model. The parameter count is `model_facts`' (the estimator's).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from drlora_core.config import AUTO, LoraConfig, RunConfig, TrainConfig, aligned_rank
from drlora_core.model_facts import ModelFacts, ModelFactsError, read_model_facts

TINY_MODEL_PARAMETERS = 50_000_000
LARGE_MODEL_PARAMETERS = 1_000_000_000
TINY_MODEL_LR = 1e-3
LARGE_MODEL_LR = 2e-5
PAPER_R_TARGET = 16
TINY_R_TARGET = 4
PAPER_STEPS, PAPER_GROWTH_INTERVAL, PAPER_WARMUP_RATIO = 3750, 200, 0.03
PAPER_GROWTH_EVENTS = (PAPER_STEPS - math.ceil(PAPER_WARMUP_RATIO * PAPER_STEPS)) // PAPER_GROWTH_INTERVAL  # 18
# OpenAI's published choice of epochs and batch size from the dataset size.
TARGET_EPOCHS, MIN_EPOCHS, MAX_EPOCHS = 3, 1, 25
MIN_TARGET_EXAMPLES, MAX_TARGET_EXAMPLES = 100, 25_000
BATCH_SHARE, MAX_AUTO_BATCH = 0.002, 256


@dataclass(frozen=True)
class RunFacts:
    """What "auto" depends on: the base model's parameter count (None when unknown) and the training examples."""

    parameters: int | None
    examples: int

    @classmethod
    def of(cls, facts: ModelFacts | None, examples: int) -> RunFacts:
        return cls(facts.total_params if facts is not None else None, examples)


def known_model_facts(model_dir: Path) -> ModelFacts | None:
    """The model's facts from its config.json (`drlora_core.model_facts`); None for a family it does not know, whose
    size then counts as a real model's."""
    try:
        return read_model_facts(model_dir)
    except ModelFactsError:
        return None


def resolve(config: RunConfig, facts: RunFacts) -> RunConfig:
    """`config` with every "auto" setting replaced (device and dtype stay: they are decided on the device)."""
    lora = _resolve_ranks(config.lora, facts.parameters)
    train = _resolve_train(config.train, facts)
    if lora.growth_interval == AUTO:
        lora = dataclasses.replace(lora, growth_interval=growth_interval(total_steps(train, facts.examples),
                                                                         train.warmup_ratio, lora.growth_end_ratio))
    return RunConfig(lora, train)


def learning_rate(parameters: int | None) -> float:
    if parameters is None or parameters >= LARGE_MODEL_PARAMETERS:
        return LARGE_MODEL_LR
    if parameters <= TINY_MODEL_PARAMETERS:
        return TINY_MODEL_LR
    share = math.log(parameters / TINY_MODEL_PARAMETERS) / math.log(LARGE_MODEL_PARAMETERS / TINY_MODEL_PARAMETERS)
    return TINY_MODEL_LR * (LARGE_MODEL_LR / TINY_MODEL_LR) ** share


def epochs_and_batch(examples: int) -> tuple[int, int]:
    batch = min(MAX_AUTO_BATCH, max(1, round(BATCH_SHARE * examples)))
    epochs = TARGET_EPOCHS
    if examples * epochs < MIN_TARGET_EXAMPLES:
        epochs = min(MAX_EPOCHS, math.ceil(MIN_TARGET_EXAMPLES / max(1, examples)))
    elif examples * epochs > MAX_TARGET_EXAMPLES:
        epochs = max(MIN_EPOCHS, MAX_TARGET_EXAMPLES // examples)
    return epochs, batch


def growth_interval(total_steps: int, warmup_ratio: float, growth_end_ratio: float = 1.0) -> int:
    """The interval that gives the paper's number of growth events after warmup (the trainer's schedule: events
    at start, start + T, ... <= total - T), within the growth window when one is set."""
    start = max(math.ceil(warmup_ratio * total_steps), 1)
    end = min(total_steps, math.floor(growth_end_ratio * total_steps))
    return max(1, (end - start) // PAPER_GROWTH_EVENTS)


def _resolve_ranks(lora: LoraConfig, parameters: int | None) -> LoraConfig:
    tiny = parameters is not None and parameters <= TINY_MODEL_PARAMETERS
    r_target = lora.r_target
    if r_target == AUTO:
        r_target = TINY_R_TARGET if tiny else PAPER_R_TARGET
        if isinstance(lora.r_max, int):
            r_target = min(r_target, lora.r_max)
        if isinstance(lora.r_init, int):
            r_target = max(r_target, lora.r_init)
    assert isinstance(r_target, int)
    lora = dataclasses.replace(lora, r_target=r_target)  # `lora` derives its r_init and r_max from r_target
    return dataclasses.replace(
        lora,
        r_init=max(1, r_target // 2) if lora.r_init == AUTO else lora.r_init,
        r_max=aligned_rank(2 * r_target) if lora.r_max == AUTO else lora.r_max,
    )


def _resolve_train(train: TrainConfig, facts: RunFacts) -> TrainConfig:
    epochs, batch = epochs_and_batch(facts.examples)
    return dataclasses.replace(
        train,
        epochs=epochs if train.epochs == AUTO else train.epochs,
        batch_size=batch if train.batch_size == AUTO else train.batch_size,
        lr=learning_rate(facts.parameters) if train.lr == AUTO else train.lr,
        gradient_checkpointing=False if train.gradient_checkpointing == AUTO else train.gradient_checkpointing,
    )


def total_steps(train: TrainConfig, examples: int) -> int:
    """The trainer's step count (`trainer.total_steps_for`) for `examples` examples, one per line."""
    if train.max_steps is not None:
        return train.max_steps
    steps_per_epoch = math.ceil(examples / train.resolved_batch_size)
    return max(1, math.ceil(train.resolved_epochs * steps_per_epoch / train.grad_accum))
