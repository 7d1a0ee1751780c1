"""A job's run configuration, built once at create: the request's hyperparameters (API names) become a validated
`RunConfig`, its "auto" values are resolved from the model and the training file, and the job row keeps both the
config's dict (what the worker rebuilds) and the resolved hyperparameters under their API names (what the job object
shows).

A value impossible on its own (r_init above r_target, r_max not a multiple of RANK_MULTIPLE) answers 422 like any
invalid field; a combination that only the model and the file rule out answers 400. Both name the parameter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from drlora_core.autoconfig import RunFacts, known_model_facts, resolve
from drlora_core.config import ConfigError, LoraConfig, Method, RunConfig, TrainConfig
from service.errors import InvalidRequest, Unprocessable

# API name -> RunConfig field name, where they differ (the API keeps OpenAI's names).
RENAMES = {"n_epochs": "epochs", "learning_rate": "lr"}
LORA_FIELDS = {f.name for f in dataclasses.fields(LoraConfig)}
TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def build_run_config(method: Method, hyperparameters: dict[str, Any], seed: int, model_dir: Path,
                     examples: int) -> RunConfig:
    """The resolved configuration of a job; raises Unprocessable / InvalidRequest naming the parameter."""
    lora: dict[str, Any] = {"method": method}
    train: dict[str, Any] = {"seed": seed}
    for name, value in hyperparameters.items():
        field = RENAMES.get(name, name)
        (lora if field in LORA_FIELDS else train)[field] = value
    unknown = set(train) - TRAIN_FIELDS
    assert not unknown, f"API hyperparameters without a RunConfig field: {unknown}"
    try:
        requested = RunConfig(LoraConfig(**lora), TrainConfig(**train))
    except ConfigError as e:
        raise Unprocessable(_message(method, e), param=_param(method, e.param), code="invalid_value") from None
    try:
        return resolve(requested, RunFacts.of(known_model_facts(model_dir), examples))
    except ConfigError as e:
        raise InvalidRequest(_message(method, e), param=_param(method, e.param), code="invalid_value") from None


def hyperparameters_view(config: RunConfig, names: Iterable[str]) -> dict[str, Any]:
    """The configuration's values under the API's names, for the job object."""
    values = {**config.to_dict()["lora"], **config.to_dict()["train"]}
    return {name: values[RENAMES.get(name, name)] for name in names}


def _api_name(field: str) -> str:
    return next((api for api, name in RENAMES.items() if name == field), field)


def _param(method: str, field: str) -> str:
    return f"method.{method}.hyperparameters.{_api_name(field)}"


def _message(method: str, e: ConfigError) -> str:
    text = str(e).removeprefix(f"{e.param}: ")
    return f"{_param(method, e.param)}: {text}"
