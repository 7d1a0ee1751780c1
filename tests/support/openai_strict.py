"""Strict checks of our answers against the official `openai` SDK's own pydantic types.

The SDK's models accept unknown fields silently (`extra="allow"`), so "validates" alone would let anything extra
through. `check` therefore does two things to a raw JSON answer: `model_validate(raw, strict=True)` with the SDK's
type (no coercion: an id must be a string, a timestamp an int), and a walk that lists every field the SDK's type does
not declare, which must be one of our documented extensions (docs/service.md, "Differences from OpenAI's API").

Two SDK literals are widened, and only these, by subclasses of the SDK's own types: a job's `status` may also be
`paused`, and `method.type` may be `dr_lora`, `lora` or `static`, with that method's hyperparameters under its own
key in the shape of OpenAI's `supervised` (validated with the SDK's `SupervisedMethod`).
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Optional, get_args, get_origin

import pydantic
from openai.types import FileDeleted, FileObject, Model
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent, SupervisedMethod
from openai.types.fine_tuning.fine_tuning_job import Method
from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint

# Our hyperparameters beyond OpenAI's batch_size, learning_rate_multiplier and n_epochs (docs/service.md).
HYPERPARAMETERS = {
    "max_steps", "grad_accum", "learning_rate", "weight_decay", "warmup_ratio", "max_seq_len", "train_router",
    "dropout", "alpha", "checkpoint_every", "eval_every", "dtype", "gradient_checkpointing", "r_init", "r_target",
    "r_max", "growth_interval", "grow_frac", "beta_f", "beta_g", "gamma", "growth_end_ratio", "per_slice_adam_steps",
    "router_aux_loss_coef", "saliency_signal", "static_profile",
}
METHODS = ("dr_lora", "lora", "static")
# Fields the SDK's types do not declare, by type: the documented extensions, and nothing else.
EXTENSIONS: dict[type[pydantic.BaseModel], set[str]] = {
    FineTuningJob: {"progress", "estimate", "pending_action"} | {f"hyperparameters.{h}" for h in HYPERPARAMETERS}
    | {f"method.{m}.hyperparameters.{h}" for m in METHODS for h in HYPERPARAMETERS},
    FileObject: {"format", "lines"},
    FineTuningJobEvent: set(),
    FineTuningJobCheckpoint: set(),
    Model: set(),
    FileDeleted: set(),
}


class _Method(Method):
    type: Literal["supervised", "dpo", "reinforcement", "dr_lora", "lora", "static"]  # type: ignore[assignment]
    dr_lora: Optional[SupervisedMethod] = None  # noqa: UP045 - the SDK's own spelling
    lora: Optional[SupervisedMethod] = None  # noqa: UP045
    static: Optional[SupervisedMethod] = None  # noqa: UP045


_STATUS = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled", "paused"]


class _Job(FineTuningJob):
    status: _STATUS  # type: ignore[assignment]
    method: Optional[_Method] = None  # type: ignore[assignment]  # noqa: UP045


WIDENED: dict[type[pydantic.BaseModel], type[pydantic.BaseModel]] = {FineTuningJob: _Job}


def check(sdk_type: type[pydantic.BaseModel], raw: Any) -> None:
    """`raw` validates strictly as `sdk_type` (with only the documented widenings), and its undeclared fields are
    exactly among the documented extensions."""
    assert isinstance(raw, dict), raw
    WIDENED.get(sdk_type, sdk_type).model_validate(raw, strict=True)
    extra = undeclared(WIDENED.get(sdk_type, sdk_type), raw)
    assert extra <= EXTENSIONS[sdk_type], f"{sdk_type.__name__}: undocumented fields {sorted(extra - EXTENSIONS[sdk_type])}"


def check_list(sdk_type: type[pydantic.BaseModel], raw: Any) -> list[dict[str, Any]]:
    """A list answer (`object` "list", `data`, and `has_more` on paged lists: not on models, as OpenAI's) whose
    every item passes `check`; returns the items."""
    assert raw["object"] == "list" and isinstance(raw.get("has_more", False), bool), raw
    for item in raw["data"]:
        check(sdk_type, item)
    return list(raw["data"])


def undeclared(model: type[pydantic.BaseModel], raw: dict[str, Any], prefix: str = "") -> set[str]:
    """Dotted paths of the fields in `raw` that `model` (and the models nested in it) do not declare."""
    found: set[str] = set()
    for key, value in raw.items():
        field = model.model_fields.get(key)
        if field is None:
            found.add(prefix + key)
            continue
        nested = _model_in(field.annotation)
        if nested is not None and isinstance(value, dict):
            found |= undeclared(nested, value, f"{prefix}{key}.")
        elif nested is not None and isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    found |= undeclared(nested, item, f"{prefix}{key}.")
    return found


def _model_in(annotation: Any) -> type[pydantic.BaseModel] | None:
    """The pydantic model an annotation holds (through Optional, Union and List), if any."""
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation
    if get_origin(annotation) in (typing.Union, types.UnionType, list, typing.List):  # noqa: UP006
        for arg in get_args(annotation):
            if (found := _model_in(arg)) is not None:
                return found
    return None
