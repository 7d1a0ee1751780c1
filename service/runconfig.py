"""A job's run configuration, built once at create: the request's hyperparameters (API names) become a validated
`RunConfig`, its "auto" values are resolved from the model and the training file, and the job row keeps both the
config's dict (what the worker rebuilds) and the resolved hyperparameters under their API names (what the job object
shows).

A value impossible on its own (r_init above r_target, r_max not a multiple of RANK_MULTIPLE) answers 422 like any
invalid field; a combination that only the model and the file rule out answers 400. Both name the parameter.

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

from drlora_core.autoconfig import RunFacts, learning_rate, parameter_count, resolve
from drlora_core.config import AUTO, ConfigError, LoraConfig, Method, RunConfig, TrainConfig
from service.errors import InvalidRequest, Unprocessable

# API name -> RunConfig field name, where they differ (the API keeps OpenAI's names).
RENAMES = {"n_epochs": "epochs", "learning_rate": "lr"}
LORA_FIELDS = {f.name for f in dataclasses.fields(LoraConfig)}
TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


MULTIPLIER = "learning_rate_multiplier"


def build_run_config(method: Method, hyperparameters: dict[str, Any], seed: int, model_dir: Path,
                     examples: int) -> RunConfig:
    """The resolved configuration of a job; raises Unprocessable / InvalidRequest naming the parameter."""
    parameters = parameter_count(model_dir)
    lora: dict[str, Any] = {"method": method}
    train: dict[str, Any] = {"seed": seed, "lr": _learning_rate(method, hyperparameters, parameters)}
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
        raise Unprocessable(_message(method, e), param=_param(method, e.param), code="invalid_value") from None
    try:
        return resolve(requested, RunFacts(parameters, examples))
    except ConfigError as e:
        raise InvalidRequest(_message(method, e), param=_param(method, e.param), code="invalid_value") from None


def _learning_rate(method: Method, hyperparameters: dict[str, Any], parameters: int | None) -> float | str:
    """The requested learning rate: `learning_rate` as given, or the multiplier times the auto one."""
    multiplier, lr = hyperparameters.get(MULTIPLIER, AUTO), hyperparameters.get("learning_rate", AUTO)
    if multiplier == AUTO:
        return lr  # type: ignore[no-any-return]
    if lr != AUTO:
        raise Unprocessable(f"{_param(method, MULTIPLIER)}: give learning_rate or learning_rate_multiplier, not "
                            f"both (the multiplier scales the auto learning rate, {learning_rate(parameters):g} for "
                            "this model)", param=_param(method, MULTIPLIER), code="invalid_value")
    return float(multiplier) * learning_rate(parameters)


def hyperparameters_view(config: RunConfig, names: Iterable[str], model_dir: Path) -> dict[str, Any]:
    """The configuration's values under the API's names, for the job object."""
    values = {**config.to_dict()["lora"], **config.to_dict()["train"]}
    # rounded: 1.5 x auto / auto need not give back exactly 1.5 in binary floating point
    values[MULTIPLIER] = float(f"{config.train.resolved_lr / learning_rate(parameter_count(model_dir)):.12g}")
    return {name: values[RENAMES.get(name, name)] for name in names}


def _api_name(field: str) -> str:
    return next((api for api, name in RENAMES.items() if name == field), field)


def _param(method: str, field: str) -> str:
    return f"method.{method}.hyperparameters.{_api_name(field)}"


def _message(method: str, e: ConfigError) -> str:
    text = str(e).removeprefix(f"{e.param}: ")
    return f"{_param(method, e.param)}: {text}"
