"""A job's run configuration, built once at create: the request's hyperparameters (API names) become a validated
`RunConfig`, its "auto" values are resolved from the model and the training file, and the job row keeps both the
config's dict (what the worker rebuilds) and the resolved hyperparameters under their API names (what the job object
shows).

A value impossible on its own (r_init above r_target, r_max not a multiple of RANK_MULTIPLE) answers 422 like any
invalid field; a combination that only the model and the file rule out answers 400. Both name the parameter. The
resolved plan is checked against the run and the model (`check_plan`): a growth interval that leaves no growth event
in the run, ranks above the experts' dimensions, and a sequence length past the model's positions are refused with
what would work. A model whose config.json says too little is not checked against it.

`learning_rate_multiplier` (OpenAI's name) has no RunConfig field: it scales the auto learning rate (the one
`autoconfig.learning_rate` picks for the model's size), so the learning rate trained with is `multiplier x auto`.
The job object shows both: with `learning_rate` given instead, the multiplier shown is `learning_rate / auto`; with
neither, it is 1. Giving both is refused, as they would contradict each other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from drlora_core.autoconfig import RunFacts, known_model_facts, learning_rate, resolve, total_steps
from drlora_core.config import AUTO, RANK_MULTIPLE, ConfigError, LoraConfig, Method, RunConfig, TrainConfig
from drlora_core.model_facts import ModelFacts
from drlora_core.schedule import growth_start, growth_steps, warmup_steps
from service.errors import InvalidRequest, Unprocessable

# API name -> RunConfig field name, where they differ (the API keeps OpenAI's names).
RENAMES = {"n_epochs": "epochs", "learning_rate": "lr"}
LORA_FIELDS = {f.name for f in dataclasses.fields(LoraConfig)}
TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


MULTIPLIER = "learning_rate_multiplier"


def build_run_config(method: Method, hyperparameters: dict[str, Any], seed: int, model_dir: Path,
                     examples: int, *, param_prefix: str | None = None) -> RunConfig:
    """The resolved configuration of a job; raises Unprocessable / InvalidRequest naming the parameter, under
    `param_prefix` (default: the job body's `method.<method>.hyperparameters.`)."""
    prefix = f"method.{method}.hyperparameters." if param_prefix is None else param_prefix
    facts = known_model_facts(model_dir)
    parameters = facts.total_params if facts is not None else None
    lora: dict[str, Any] = {"method": method}
    train: dict[str, Any] = {"seed": seed, "lr": _learning_rate(prefix, hyperparameters, parameters)}
    for name, value in hyperparameters.items():
        if name in (MULTIPLIER, "learning_rate"):
            continue
        field = RENAMES.get(name, name)
        (lora if field in LORA_FIELDS else train)[field] = value
    unknown = set(train) - TRAIN_FIELDS
    assert not unknown, f"API hyperparameters without a RunConfig field: {unknown}"
    try:
        requested = RunConfig(LoraConfig(**lora), TrainConfig(**train))
    except ConfigError as e:
        raise Unprocessable(_message(prefix, e), param=_param(prefix, e.param), code="invalid_value") from None
    try:
        config = resolve(requested, RunFacts.of(facts, examples))
        check_plan(config, facts, examples)
    except ConfigError as e:
        raise InvalidRequest(_message(prefix, e), param=_param(prefix, e.param), code="invalid_value") from None
    return config


def check_plan(config: RunConfig, facts: ModelFacts | None, examples: int) -> None:
    """Raises ConfigError naming the parameter when the resolved plan cannot run on this model and file."""
    lora, train = config.lora, config.train
    steps = total_steps(train, examples)
    r_init, r_target, r_max = lora.ranks
    if lora.method == "dr_lora" and r_target > r_init:
        warmup = warmup_steps(steps, train.warmup_ratio)
        if not growth_steps(steps, warmup, lora.interval):
            fits = steps - growth_start(warmup)
            advice = (f"use at most {fits}" if fits >= 1 else "train more steps (max_steps or n_epochs)")
            raise ConfigError("growth_interval", f"{lora.interval} leaves no growth event in this run of {steps} "
                                                 f"steps (growth starts at step {growth_start(warmup)} and each event "
                                                 f"needs growth_interval steps after it); {advice}")
    if facts is None:
        return
    dims = min(facts.hidden, facts.expert_intermediate)
    if r_max > dims:
        usable = dims // RANK_MULTIPLE * RANK_MULTIPLE
        name = "r_target" if lora.method == "lora" else "r_max"
        raise ConfigError(name, f"the rank {r_max} exceeds the experts' dimensions (hidden {facts.hidden}, expert "
                                f"width {facts.expert_intermediate}): a LoRA rank above {dims} adds nothing; use at "
                                f"most {usable or dims}")
    if train.max_seq_len > facts.max_position_embeddings:
        raise ConfigError("max_seq_len", f"{train.max_seq_len} is past the model's max_position_embeddings; use at "
                                         f"most {facts.max_position_embeddings}")


def _parameters(model_dir: Path) -> int | None:
    facts = known_model_facts(model_dir)
    return facts.total_params if facts is not None else None


def _learning_rate(prefix: str, hyperparameters: dict[str, Any], parameters: int | None) -> float | str:
    """The requested learning rate: `learning_rate` as given, or the multiplier times the auto one."""
    multiplier, lr = hyperparameters.get(MULTIPLIER, AUTO), hyperparameters.get("learning_rate", AUTO)
    if multiplier == AUTO:
        return lr  # type: ignore[no-any-return]
    if lr != AUTO:
        raise Unprocessable(f"{_param(prefix, MULTIPLIER)}: give learning_rate or learning_rate_multiplier, not "
                            f"both (the multiplier scales the auto learning rate, {learning_rate(parameters):g} for "
                            "this model)", param=_param(prefix, MULTIPLIER), code="invalid_value")
    return float(multiplier) * learning_rate(parameters)


def hyperparameters_view(config: RunConfig, names: Iterable[str], model_dir: Path) -> dict[str, Any]:
    """The configuration's values under the API's names, for the job object."""
    values = {**config.to_dict()["lora"], **config.to_dict()["train"]}
    # rounded: 1.5 x auto / auto need not give back exactly 1.5 in binary floating point
    values[MULTIPLIER] = float(f"{config.train.resolved_lr / learning_rate(_parameters(model_dir)):.12g}")
    return {name: values[RENAMES.get(name, name)] for name in names}


def _api_name(field: str) -> str:
    return next((api for api, name in RENAMES.items() if name == field), field)


def _param(prefix: str, field: str) -> str:
    return f"{prefix}{_api_name(field)}"


def _message(prefix: str, e: ConfigError) -> str:
    text = str(e).removeprefix(f"{e.param}: ")
    return f"{_param(prefix, e.param)}: {text}"
