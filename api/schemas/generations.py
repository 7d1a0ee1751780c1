"""Generations: `GenerationCreate` (the request), `GenerationPublic` (the `fine_tuning.generation` object).

Only types are checked here; the bounds (how many prompts, how long, max_new_tokens, temperature, top_p, seed) are
the service's `GenerationRequest`, which refuses with a 400 naming the field."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas.jobs import JobError, Text
from service.generations import DEFAULT_MAX_NEW_TOKENS, MAX_NEW_TOKENS, MAX_PROMPT_CHARS, MAX_PROMPTS
from service.statuses import JobStatus


class GenerationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompts: list[Text] = Field(description=f"1 to {MAX_PROMPTS} prompts of at most {MAX_PROMPT_CHARS} characters; "
                                            "formatted as the job's training data was (chat: one user turn)")
    checkpoint: Text | None = Field(None, description="a checkpoint id or step; default: the final adapter")
    max_new_tokens: int = Field(DEFAULT_MAX_NEW_TOKENS, description=f"1 to {MAX_NEW_TOKENS}")
    temperature: float = Field(0.0, description="0 is greedy; up to 2")
    top_p: float = Field(1.0, description="nucleus sampling when temperature > 0: (0, 1]")
    seed: int = Field(0, description="sampling seed")


class CompletionPublic(BaseModel):
    index: int
    prompt: str
    text: str


class GenerationPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.generation"] = "fine_tuning.generation"
    fine_tuning_job_id: str
    created_at: int
    finished_at: int | None
    status: JobStatus
    error: JobError | None
    checkpoint: str | None
    step: int = Field(description="the training step of the adapter used")
    chat: bool | None = Field(description="whether prompts were formatted as a chat user turn")
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    prompts: list[str]
    completions: list[CompletionPublic] | None = Field(None, description="once it succeeded, one per prompt")
