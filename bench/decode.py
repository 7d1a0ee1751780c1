"""Greedy completions of plain prompts in batches, for exact-match accuracy (the decoder is `drlora_core.decode`).

Each prompt is tokenised as the training data tokenises a `prompt_completion` prompt (the tokenizer's leading special
tokens, then the prompt), so the completion is what the model would generate after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from drlora_core.decode import Sampling, decode_ids
from drlora_core.generate import prompt_ids


def greedy_completions(model: nn.Module, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int,
                       batch_size: int = 64, use_cache: bool = True) -> list[str]:
    ids = [prompt_ids(tokenizer, p, chat=False) for p in prompts]
    return decode_ids(model, tokenizer, ids, Sampling(max_new_tokens=max_new_tokens), batch_size, use_cache)


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of completions equal to the reference after stripping whitespace (the demo task's metric)."""
    hits = sum(p.strip() == r.strip() for p, r in zip(predictions, references, strict=True))
    return hits / max(len(references), 1)
